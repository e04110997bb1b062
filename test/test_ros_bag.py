"""Bag-driven tests: a generated conversation (espeak-ng speech, faces, timed ASR, labels)
written by make-bag, replayed (a) live through the composed nodes with /clock and (b)
offline through the same Ingest -> PerceptionCore -> EmotionPipeline path eval-bag uses.
The labels come from the generated conversation (the bag's labels.csv / ground-truth topic).
"""
from __future__ import annotations

import pytest
import rclpy

from _ros_support import FAST_PERCEPTION, make_bag
from erc_ros.ros.live import live_replay
from erc_ros.ros.replay import replay_bag
from erc_ros.tools import eval_bag

pytestmark = pytest.mark.ros



@pytest.fixture(scope="module")
def bag(tmp_path_factory):
    return make_bag(tmp_path_factory.mktemp("bags") / "conv")


@pytest.fixture(scope="module")
def offline(bag, model):
    sets = tuple(f"{k}={v}" for k, v in FAST_PERCEPTION.items())
    core = eval_bag.make_core(eval_bag.DEFAULT_CONFIG, sets)
    pipe = eval_bag.make_pipeline(str(model))
    return replay_bag(bag, core, pipe)


def test_offline_replay_one_estimate_per_labelled_turn(bag, offline):
    labels = eval_bag.labels_for(bag, None, offline.ground_truth)
    assert len(labels) == 4 and len(offline.ground_truth) == 4
    assert [lab["label"] for lab in labels] == ["joy", "anger", "sadness", "neutral"]
    pairs = eval_bag.match(labels, offline.estimates)
    assert all(est is not None for _, est in pairs), "lost utterances"
    assert len(offline.estimates) == len(labels)
    for lab, est in pairs:
        assert est.text == lab["text"]  # the timed ASR text of that turn
        assert abs(est.end - lab["end"]) < 0.5 and abs(est.start - lab["start"]) < 0.5
        assert est.model_id == "tiny-test" and len(est.probabilities) == 7
    assert offline.refused == {}


def test_offline_replay_is_deterministic(bag, model, offline):
    sets = tuple(f"{k}={v}" for k, v in FAST_PERCEPTION.items())
    again = replay_bag(bag, eval_bag.make_core(eval_bag.DEFAULT_CONFIG, sets),
                       eval_bag.make_pipeline(str(model)))
    assert [(e.start, e.end, e.label, list(e.probabilities)) for e in again.estimates] == \
        [(e.start, e.end, e.label, list(e.probabilities)) for e in offline.estimates]


def test_live_replay_through_the_nodes_with_clock(bag, model, offline):
    rclpy.init()
    try:
        live = live_replay(bag, model_dir=str(model), rate=4.0, sets=dict(FAST_PERCEPTION))
    finally:
        rclpy.try_shutdown()
    labels = eval_bag.labels_for(bag, None, live.ground_truth)
    pairs = eval_bag.match(labels, live.estimates)
    assert all(est is not None for _, est in pairs), [lab for lab, e in pairs if e is None]
    assert len(live.estimates) == len(labels)  # exactly one estimate per utterance
    # Same utterances as the offline path (sim time carried end to end: exact spans).
    assert [(e.text, round(e.start, 3), round(e.end, 3)) for e in live.estimates] == \
        [(e.text, round(e.start, 3), round(e.end, 3)) for e in offline.estimates]
    # The text branch decides the tiny model: same text+context -> same label.
    assert [e.label for e in live.estimates] == [e.label for e in offline.estimates]
