"""Each sense of an estimate scored alone (erc_ros/evaluation/senses.py), on real estimates:
the labels read from each sense, a sense that did not read and a lost turn as wrong answers,
and the same turns scored by bench-spoken's stage and by eval-bag's scorer."""
from __future__ import annotations

import pytest

from erc_ros.bench.spoken import Stage
from erc_ros.core.types import Estimate
from erc_ros.evaluation.eval_bag import label_metrics
from erc_ros.evaluation.matching import classification
from erc_ros.evaluation.senses import NONE, SENSE_FIGURES, SENSES, sense_labels, sense_scores

NAMES = ["neutral", "joy", "anger"]


def estimate(start=0.0, end=1.0, label="joy", text=(), voice=(), face=()) -> Estimate:
    """A real estimate of ``label`` with each sense's own distribution (empty: no reading)."""
    one = [float(c == label) for c in NAMES]
    return Estimate("u", "c", "s0", start, end, label, NAMES, one, text="hi",
                    text_probabilities=list(text), voice_probabilities=list(voice),
                    voice_status="ok" if voice else "no_audio",
                    face_probabilities=list(face), face_status="seen" if face else "no_face")


def test_each_sense_reads_its_own_label_and_none_where_it_did_not_read():
    e = estimate(label="Joy", text=[0.7, 0.2, 0.1], voice=[0.1, 0.2, 0.7], face=[0.2, 0.6, 0.2])
    assert sense_labels(e) == {"text": "neutral", "voice": "anger", "face": "joy",
                               "fused": "joy"}
    assert sense_labels(estimate(text=[0.1, 0.1, 0.8])) == {
        "text": "anger", "voice": NONE, "face": NONE, "fused": "joy"}
    assert sense_labels(estimate(label="")) == dict.fromkeys(SENSES, NONE)
    assert sense_labels(None) == dict.fromkeys(SENSES, NONE)  # a lost turn


def test_senses_are_scored_on_the_same_turns_with_the_unread_ones_wrong():
    y = ["neutral", "joy", "anger", "joy"]
    preds = {"text": ["neutral", "joy", NONE, "joy"], "fused": ["neutral", "joy", "anger", NONE]}
    pct = sense_scores(y, preds, NAMES, classification, SENSE_FIGURES)
    assert pct["text"] == {"weighted_f1": pytest.approx(75.0), "uar": pytest.approx(66.67),
                           "accuracy": 75.0, "read": 3}
    assert pct["fused"]["weighted_f1"] == classification(y, preds["fused"], NAMES)["weighted_f1"]
    frac = sense_scores(y, preds, NAMES, label_metrics, SENSE_FIGURES)  # eval-bag's
    for s in preds:
        for k in ("weighted_f1", "uar", "accuracy"):
            assert frac[s][k] == pytest.approx(pct[s][k] / 100, abs=1e-4)
    assert "per_class_f1" in sense_scores(y, preds, NAMES, classification)["text"]


def test_a_bench_spoken_stage_scores_each_sense_beside_the_published_label():
    turns = [{"utterance_id": f"t{i}", "start": 2.0 * i, "end": 2.0 * i + 1, "speaker": "A",
              "label": lab, "text": "hi"} for i, lab in enumerate(["joy", "anger", "neutral"])]
    ests = [estimate(0.0, 1.0, "joy", text=[0.1, 0.8, 0.1], voice=[0.1, 0.1, 0.8]),
            estimate(2.0, 3.0, "anger", text=[0.8, 0.1, 0.1], face=[0.1, 0.1, 0.8])]
    st = Stage("asr")
    st.add("d", turns, ests, speech=False)  # the third turn is lost
    r = st.result(NAMES)
    se = r["senses"]
    assert se["fused"]["weighted_f1"] == r["weighted_f1"] and se["fused"]["read"] == 2
    assert (se["text"]["accuracy"], se["voice"]["read"], se["face"]["read"]) == (
        pytest.approx(33.33), 1, 1)
    assert [row["text_label"] for row in st.rows] == ["joy", "neutral", ""]
    assert st.y_pred == ["joy", "anger", NONE]
