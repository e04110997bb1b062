"""Training side: datasets, train/evaluate commands, feature caching, fusion stage."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import wavfile

from erc_ros import cli
from erc_ros.datasets import emorynlp, iemocap, meld, robot_views
from erc_ros.datasets.dialogues import Dialogue, class_counts, class_weights
from erc_ros.models.labels import MELD_LABELS
from erc_ros.paths import data_root
from erc_ros.training.fusion_stage import (FusionStageConfig, dev_figures, encode_dialogues,
                                           modality_dropout, train_fusion_stage)

ROOT = Path(__file__).resolve().parents[1]
MELD_DEV = data_root() / "meld" / "dev_sent_emo.csv"
MELD_TRAIN = data_root() / "meld" / "train_sent_emo.csv"


def test_meld_dialogues_and_labels():
    dev = meld.load_meld(MELD_DEV)
    assert sum(len(d) for d in dev) == 1109
    d0 = dev[0]
    assert d0.conversation_id == "meld-dev_sent_emo-0"
    assert [u.utterance_id.rsplit("-", 1)[1] for u in d0.utterances] == \
        [str(i) for i in range(len(d0))]
    counts = class_counts(dev, 7)
    assert counts.sum() == 1109 and counts.argmax() == 0  # neutral dominates
    w = class_weights(counts, 1.0)
    assert abs(float((w * counts).sum() / counts.sum()) - 1) < 1e-5 and w[0] < w[2]
    assert np.allclose(class_weights(counts, 0.0), 1)
    assert all(u.end >= u.start for u in d0.utterances)


def test_robot_view_has_no_names_and_no_exclamations():
    """The text as a robot could at best have it: speakers tagged in order of first turn per
    dialogue (as diarization does), '!' read as '.', '?!' as '?'; labels, times and the
    originals untouched."""
    dev = meld.load_meld(MELD_DEV)[:20]
    rv = robot_views.robot_view(dev, suffix="-robot")
    assert len(rv) == len(dev) and [d.labels for d in rv] == [d.labels for d in dev]
    for d, r in zip(dev, rv):
        assert r.conversation_id == d.conversation_id + "-robot"
        order = list(dict.fromkeys(u.speaker_id for u in d.utterances))
        assert [u.speaker_id for u in r.utterances] == \
            [f"speaker_{order.index(u.speaker_id)}" for u in d.utterances]
        assert all("!" not in u.text and u.start == v.start
                   for u, v in zip(r.utterances, d.utterances))
    assert any("!" in u.text for d in dev for u in d.utterances)  # the originals keep theirs
    u = meld.load_meld(MELD_DEV)[0].utterances[0]
    d = Dialogue("c", [u.__class__(**{**u.__dict__, "text": "What?! No!! Why!?! Fine."})],
                      [0])
    assert robot_views.robot_view([d])[0].utterances[0].text == "What? No. Why? Fine."
    only = robot_views.robot_view([d], ["speakers"])[0].utterances[0]
    assert only.text == "What?! No!! Why!?! Fine." and only.speaker_id == "speaker_0"
    with pytest.raises(ValueError, match="robot views are"):
        robot_views.robot_view(dev, ["names"])


def test_sentences_view_cuts_each_turn_as_the_node_does():
    """``sentences``: a turn cut after every sentence (not at '...'), one utterance a
    sentence in order, the turn's time shared by characters; its label on every piece
    (training) or on its longest alone (scoring: each turn once); a turn of one sentence
    unchanged. The node's cut (segmentation.split_sentences) follows the same rule."""
    from erc_ros.core.asr import sentence_cuts

    assert robot_views.split_sentences("Wait... what? No!  Okay") == ["Wait... what?", "No!", "Okay"]
    assert robot_views.split_sentences("Fine.") == ["Fine."] and robot_views.split_sentences("") == [""]
    assert sentence_cuts(["Wait...", "what?", "No!", "Okay"]) == [2, 3]
    u = meld.load_meld(MELD_DEV)[0].utterances[0]
    turn = u.__class__(**{**u.__dict__, "text": "Oh no. It is all over!", "start": 10.0,
                          "end": 12.2})
    one = u.__class__(**{**u.__dict__, "utterance_id": "x-1", "text": "Really?"})
    d = Dialogue("c", [turn, one], [3, 1])
    (every,) = robot_views.robot_view([d], ["sentences"])
    assert [x.text for x in every.utterances] == ["Oh no.", "It is all over!", "Really?"]
    assert [x.utterance_id for x in every.utterances] == \
        [turn.utterance_id + ".0", turn.utterance_id + ".1", "x-1"]
    assert every.labels == [3, 3, 1]
    assert every.utterances[0].start == 10.0 and every.utterances[1].end == 12.2
    assert every.utterances[0].end == pytest.approx(10.0 + 2.2 * 6 / 21)
    assert every.utterances[2].start == one.start and every.utterances[2].end == one.end
    (longest,) = robot_views.robot_view([d], ["sentences", "exclamations"], labelled="longest")
    assert [x.text for x in longest.utterances][1] == "It is all over." and \
        longest.labels == [-1, 3, 1]
    assert robot_views.robot_view([Dialogue("c", [turn])], ["sentences"])[0].labels == []
    with pytest.raises(ValueError, match="labelled is one of"):
        robot_views.robot_view([d], ["sentences"], labelled="first")
    dev = meld.load_meld(MELD_DEV)[:20]
    cut = robot_views.robot_copy(dev, cuts=["sentences"])
    assert sum(len(c) for c in cut) > sum(len(x) for x in dev)
    assert all(u.speaker_id.startswith("speaker_") and "!" not in u.text
               for c in cut for u in c.utterances)
    assert [" ".join(u.text for u in c.utterances) for c in cut] == \
        [" ".join(" ".join(u.text.split()) for u in c.utterances)
         for c in robot_views.robot_copy(dev)]
    with pytest.raises(ValueError, match="cuts are sentences"):
        robot_views.robot_copy(dev, cuts=["speakers"])


def test_robot_copy_keeps_the_names_of_a_drawn_share():
    """The training copy: '!' dropped everywhere; speaker_N tags, except in the drawn share
    of the dialogues (a household the robot knows), which keep their names; the same draw
    for the same seed."""
    dev = meld.load_meld(MELD_DEV)[:40]
    assert [[(u.speaker_id, u.text) for u in d.utterances] for d in robot_views.robot_copy(dev)] == \
        [[(u.speaker_id, u.text) for u in d.utterances] for d in robot_views.robot_view(dev,
                                                                                suffix="-robot")]
    half = robot_views.robot_copy(dev, 0.5, seed=7)
    named = [c.conversation_id for c, d in zip(half, dev)
             if [u.speaker_id for u in c.utterances] == [u.speaker_id for u in d.utterances]]
    assert len(named) == 20 and all(c.conversation_id.endswith("-robot") for c in half)
    assert all(u.speaker_id.startswith("speaker_") for c in half
               if c.conversation_id not in named for u in c.utterances)
    assert not any("!" in u.text for c in half for u in c.utterances)
    assert [c.labels for c in half] == [d.labels for d in dev]
    again = robot_views.robot_copy(dev, 0.5, seed=7)
    assert [u.speaker_id for c in again for u in c.utterances] == \
        [u.speaker_id for c in half for u in c.utterances]
    other = robot_views.robot_copy(dev, 0.5, seed=8)
    assert [u.speaker_id for c in other for u in c.utterances] != \
        [u.speaker_id for c in half for u in c.utterances]
    assert all(not u.speaker_id.startswith("speaker_") for c in robot_views.robot_copy(dev, 1.0)
               for u in c.utterances)
    with pytest.raises(ValueError, match="share of the dialogues"):
        robot_views.robot_copy(dev, 1.5)


def test_emorynlp_dialogues():
    dev = emorynlp.load_emorynlp(data_root() / "emorynlp" / "emorynlp_dev_final.csv")
    assert len(dev) > 50 and all(l >= 0 for d in dev for l in d.labels)
    assert all(u.speaker_id and "[" not in u.speaker_id for d in dev for u in d.utterances)


def test_iemocap_standard_layout(tmp_path):
    root = tmp_path / "IEMOCAP_full_release"
    s = root / "Session1" / "dialog"
    (s / "transcriptions").mkdir(parents=True)
    (s / "EmoEvaluation").mkdir(parents=True)
    (s / "transcriptions" / "Ses01F_impro01.txt").write_text(
        "Ses01F_impro01_F000 [006.2901-008.2357]: Excuse me.\n"
        "Ses01F_impro01_M000 [007.5712-010.4750]: Do you have your forms?\n"
        "Ses01F_impro01_F001 [010.0100-011.4397]: Yeah.\n"
        "M: unrelated line\n")
    (s / "EmoEvaluation" / "Ses01F_impro01.txt").write_text(
        "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
        "[6.2901 - 8.2357]\tSes01F_impro01_F000\tneu\t[2.5000, 2.5000, 2.5000]\n"
        "C-E2:\tNeutral;\t()\n"
        "[7.5712 - 10.4750]\tSes01F_impro01_M000\tfru\t[2.5000, 2.5000, 2.5000]\n"
        "[10.0100 - 11.4397]\tSes01F_impro01_F001\txxx\t[2.5000, 3.5000, 2.0000]\n")
    wavdir = root / "Session1" / "sentences" / "wav" / "Ses01F_impro01"
    wavdir.mkdir(parents=True)
    # The first utterance's WAV: half a second of int16 tone at 22.05 kHz (espeak-ng's rate),
    # read as float32 at 16 kHz; the others have none.
    t = np.arange(11025) / 22050
    wavfile.write(str(wavdir / "Ses01F_impro01_F000.wav"), 22050,
                  (0.5 * 32767 * np.sin(2 * np.pi * 220 * t)).astype(np.int16))
    (d,) = iemocap.load_iemocap(root, sessions=(1,), with_audio=True)
    assert [u.speaker_id for u in d.utterances] == ["F", "M", "F"]
    assert d.labels == [0, 5, -1]  # neutral, frustrated, xxx kept as context only
    assert d.utterances[1].text == "Do you have your forms?"
    audio = d.utterances[0].audio
    assert d.utterances[0].has_audio and audio.dtype == np.float32
    assert audio.shape == (8000,)  # 11025 samples at 22.05 kHz = 8000 at 16 kHz
    assert abs(float(np.abs(audio[1000:7000]).max()) - 0.5) < 0.02  # the tone's amplitude
    assert not d.utterances[1].has_audio and not d.utterances[2].has_audio
    (d4,) = iemocap.load_iemocap(root, sessions=(1,), labels=iemocap.IEMOCAP4_LABELS)
    assert d4.labels == [0, -1, -1]


def test_train_then_evaluate_commands(tmp_path):
    out = tmp_path / "tiny"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(out), "--limit-dialogues", "24",
                     "--epochs", "2"]) == 0
    man = json.loads((out / "manifest.json").read_text())
    assert man["provenance"]["recipe"]["name"] == "tiny"
    assert set(man["provenance"]["data"]) == {"train_sent_emo.csv", "dev_sent_emo.csv"}
    assert (out / "dev_confusion.png").stat().st_size > 1000
    log = json.loads((out / "train_log.json").read_text())
    assert {r["weights"] for r in log["history"]} == {"raw", "ema"}
    js = tmp_path / "eval.json"
    assert cli.main(["evaluate", "--format", "meld", "--csv", str(MELD_DEV), "--model", str(out),
                     "--json", str(js), "--limit-dialogues", "6"]) == 0
    r = json.loads(js.read_text())
    assert {"accuracy", "weighted_f1", "per_class_f1", "confusion"} <= set(r)
    n = sum(len(d) for d in meld.load_meld(MELD_DEV)[:6])
    assert r["n"] == n == int(np.sum(r["confusion"]))
    assert 0 <= r["weighted_f1"] <= 100 and set(r["per_class_f1"]) == set(man["label_names"])
    assert js.with_suffix(".png").is_file()
    # --robot-view: the same dialogues, the text as a robot has it, recorded in the JSON.
    assert cli.main(["evaluate", "--csv", str(MELD_DEV), "--model", str(out), "--json", str(js),
                     "--limit-dialogues", "6", "--robot-view", "all"]) == 0
    r = json.loads(js.read_text())
    assert r["robot_view"] == ["speakers", "exclamations"] and r["n"] == n
    # ... cut into sentences too: more utterances read, each turn still scored once.
    assert cli.main(["evaluate", "--csv", str(MELD_DEV), "--model", str(out), "--json", str(js),
                     "--limit-dialogues", "6", "--robot-view", "all,sentences"]) == 0
    r = json.loads(js.read_text())
    assert r["robot_view"] == ["speakers", "exclamations", "sentences"] and r["n"] == n
    with pytest.raises(SystemExit, match="robot views are"):
        cli.main(["evaluate", "--csv", str(MELD_DEV), "--model", str(out), "--json", str(js),
                  "--robot-view", "speakers,names"])
    # The head ablation over this model's vectors, two head seeds: one row each, the table
    # gives their mean and range.
    from erc_ros.training import ablation

    ab = tmp_path / "ablation"
    assert ablation.main(["--model", str(out), "--out", str(ab), "--limit-train", "4",
                          "--heads", "concat", "--epochs", "1", "--class-weights", "0.5",
                          "--seeds", "13,1"]) == 0
    rows = json.loads((ab / "ablation.json").read_text())
    assert [(r["head"], r["class_weight_power"], r["seed"]) for r in rows] == \
        [("concat", 0.5, 13), ("concat", 0.5, 1)]
    f1 = [r["weighted_f1"] for r in rows]
    line = ablation.summary_table(rows).splitlines()[-1]
    assert f"| 2 | {np.mean(f1):.2f} [{min(f1):.2f}, {max(f1):.2f}] |" in line, line
    # --int8: each head scored on the INT8 copy's vectors too, a column of the table.
    assert ablation.main(["--model", str(out), "--out", str(ab), "--limit-train", "4",
                          "--heads", "concat", "--epochs", "1", "--class-weights", "0.5",
                          "--int8", "--select", "fp32+int8"]) == 0
    rows = json.loads((ab / "ablation.json").read_text())
    assert len(rows) == 1 and 0 <= rows[0]["weighted_f1_int8"] <= 100
    assert ablation.summary_table(rows).splitlines()[0].endswith("INT8 weighted F1 |")
    with pytest.raises(SystemExit):
        ablation.main(["--out", str(ab), "--select", "fp32+int8"])  # no --model, no --int8


@pytest.mark.parametrize("flag,value,says", [
    ("--feature-distill", "-1", "outside [0, inf]"),
    ("--distill", "1.5", "outside [0, 1]"),
    ("--self-distill", "nan", "outside [0, 1]"),
    ("--epochs", "0", "outside [1, inf]"),
    ("--freeze-layers", "-1", "outside [0, inf]"),
    ("--lr", "0", "outside (0, inf]"),
    ("--threads", "two", "'two' is not an int"),
])
def test_train_flags_out_of_range_are_usage_errors(tmp_path, capsys, flag, value, says):
    # Before anything loads or trains: exit 2 with argparse's message naming the flag.
    with pytest.raises(SystemExit) as e:
        cli.main(["train", "--recipe", "tiny", "--out", str(tmp_path / "m"), flag, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and says in err, err
    assert not (tmp_path / "m").exists()


def test_text_stage_config_rejects_weights_out_of_range():
    from erc_ros.training.text_stage import TextStageConfig

    for bad in (dict(feature_distill=-0.5), dict(distill=1.2), dict(ema_decay=1.5),
                dict(epochs=0), dict(class_weight_power=float("nan"))):
        with pytest.raises(ValueError, match=next(iter(bad))):
            TextStageConfig(**bad)
    TextStageConfig(distill=1.0, feature_distill=2.0, ema_decay=0.999)  # in range


@pytest.mark.long
def test_distillation_from_teachers(tmp_path, monkeypatch, capsys):
    """KD toward teacher logits moves the student to the teacher, against the labels; the
    command records the teachers by id and hash (never by path)."""
    from erc_ros.training.text_stage import (TextClassifier, TextStageConfig, build_samples,
                                             predict_samples, teacher_logits, train_text_stage)
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe

    train = meld.load_meld(MELD_TRAIN)[:12]
    torch.manual_seed(0)
    student = build_from_recipe(RECIPES["tiny"], MELD_LABELS, "student")
    n = len(build_samples(student, train))
    fear = np.full((n, 7), -9.0, np.float32)
    fear[:, 2] = 0.0  # the teacher says "fear" for everything
    cfg = TextStageConfig(epochs=3, batch_size=8, lr=3e-3, head_lr=3e-3, distill=1.0,
                          distill_tau=1.0, threads=1)
    with pytest.raises(ValueError):
        train_text_stage(student, train, [], cfg, teacher=fear[:-1], progress=False)
    train_text_stage(student, train, [], cfg, teacher=fear, progress=False)
    pred = predict_samples(TextClassifier(student), student, build_samples(student, train))
    assert (pred.argmax(1) == 2).mean() > 0.9  # labels are mostly neutral, never mostly fear

    logits = teacher_logits([student, student], train, progress=False)
    assert logits.shape == (n, 7)
    np.testing.assert_allclose(np.exp(logits), pred, atol=1e-5)
    # A trained teacher speaks as `evaluate` scores it: its head over whole dialogues.
    from erc_ros.training.fusion_stage import dialogue_teacher_logits

    whole = dialogue_teacher_logits([student], train, progress=False)
    live = np.concatenate([student.predict_dialogue(d.utterances)[np.asarray(d.labels) >= 0]
                           for d in train])
    assert whole.shape == (n, 7)
    # float32 probabilities through the same layers, padded differently: ~1e-7 apart
    np.testing.assert_allclose(np.exp(whole), live, atol=1e-5)

    teacher_dir, out = tmp_path / "teacher", tmp_path / "student"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(teacher_dir),
                     "--limit-dialogues", "8", "--max-steps", "2"]) == 0
    assert cli.main(["train", "--recipe", "tiny", "--out", str(out), "--limit-dialogues", "8",
                     "--max-steps", "2", "--teacher", str(teacher_dir)]) == 0
    rec = json.loads((out / "manifest.json").read_text())["provenance"]["recipe"]
    assert rec["distill"] == 0.5 and len(rec["teachers"]) == 1
    assert str(tmp_path) not in json.dumps(rec["teachers"])
    assert len(rec["teachers"][0]["manifest_sha256"]) == 64
    # A recipe that names its teacher per corpus: MELD distils from it, logits and vectors;
    # EmoryNLP, with no teacher named, trains without distillation and says so.
    from erc_ros.training import recipes
    from erc_ros.training.provenance import lineage

    base = dict(recipes.RECIPES["tiny"])
    monkeypatch.setitem(recipes.RECIPES, "tiny", dict(
        base, distill_from={"meld": [str(teacher_dir)]}, feature_distill=1.0))
    named = tmp_path / "named"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(named), "--limit-dialogues", "8",
                     "--max-steps", "2"]) == 0
    rec = json.loads((named / "manifest.json").read_text())["provenance"]["recipe"]
    assert len(rec["teachers"]) == 1 and rec["feature_distill"] == 1.0
    assert cli.main(["train", "--recipe", "tiny", "--out", str(named), "--limit-dialogues", "8",
                     "--max-steps", "2", "--format", "emorynlp"]) == 0
    assert "no teacher for --format emorynlp" in capsys.readouterr().err
    rec = json.loads((named / "manifest.json").read_text())["provenance"]["recipe"]
    assert "teachers" not in rec and rec["feature_distill"] == 0.0
    # A recipe cycle distilled from the model as the previous cycle left it.
    recipe = dict(base, then=[dict(epochs=1, distill=0.5, teacher="previous")],
                  fusion_stage=dict(head="magt", class_weight_power=0.5, epochs=2))
    monkeypatch.setitem(recipes.RECIPES, "tiny", recipe)
    cycled = tmp_path / "cycled"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(cycled), "--limit-dialogues", "8",
                     "--max-steps", "2"]) == 0
    log = json.loads((cycled / "train_log.json").read_text())
    assert {h.get("cycle") for h in log["history"]} == {1, 2, None}
    assert [h["head"] for h in log["history"] if h.get("stage") == 2] == ["magt", "magt"]
    man = json.loads((cycled / "manifest.json").read_text())
    if man["provenance"]["dev_metrics"].get("stage") == 2:  # stage 2 won: its head is saved
        assert man["config"]["fusion_head"] == "magt"
        from erc_ros.models.artefact import load_model_dir

        assert type(load_model_dir(cycled).fusion).__name__.lower().startswith("magt")
    # Rounds after stage 2 number on after the cycles; each is kept only if its own stage 2
    # beats the model as it stood, else the model is restored. A round that cannot change the
    # encoder (lr 0) refits the same head on the same vectors: it never beats, so it restores.
    monkeypatch.setitem(recipes.RECIPES, "tiny", dict(
        base, fusion_stage=dict(head="concat", class_weight_power=0.5, epochs=2),
        rounds=[dict(epochs=1), dict(epochs=1, lr=0.0, head_lr=0.0)]))
    rounds = tmp_path / "rounds"
    capsys.readouterr()
    assert cli.main(["train", "--recipe", "tiny", "--out", str(rounds), "--limit-dialogues", "8",
                     "--max-steps", "2", "--fp32"]) == 0  # float32: reloaded as it was
    err = capsys.readouterr().err
    assert "round (cycle 2): dev" in err
    assert "round (cycle 3): dev" in err and err.rstrip().count("restoring the model") >= 1
    log = json.loads((rounds / "train_log.json").read_text())
    assert {h.get("cycle") for h in log["history"]} == {1, 2, 3, None}
    s2 = [h["weighted_f1"] for h in log["history"] if h.get("stage") == 2]
    assert len(s2) == 6  # 2 epochs of stage 2 after the cycle, then after each round
    assert log["best"]["weighted_f1"] >= max(s2[:2])  # rounds never leave it worse
    # An undone round moves the next one to the next seed (else it would repeat it exactly).
    first_undone = re.search(r"round \(cycle 2\): dev \S+ does not beat", err) is not None
    assert log["config"]["seed"] == base["seed"] + int(first_undone)
    # Rounds alone over a model directory (--cycle past the recipe's cycles): they must beat
    # the init's figure, else the init model is what is saved, weights and head as they were.
    again = tmp_path / "again"
    assert cli.main(["train", "--recipe", "tiny", "--init", str(rounds), "--out", str(again),
                     "--limit-dialogues", "8", "--max-steps", "2", "--cycle", "3", "--fp32"]) == 0
    log = json.loads((again / "train_log.json").read_text())
    assert {h.get("cycle") for h in log["history"]} == {3, None}
    assert "restoring the model" in capsys.readouterr().err
    assert log["best"]["kept_init"] and log["best"]["weighted_f1"] == \
        json.loads((rounds / "manifest.json").read_text())["provenance"]["dev_metrics"]["weighted_f1"]
    from erc_ros.models.artefact import load_model_dir

    a, b = load_model_dir(rounds).state_dict(), load_model_dir(again).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # --keep-rounds: the round that cannot beat (lr 0) is kept all the same, and says so.
    assert cli.main(["train", "--recipe", "tiny", "--init", str(rounds), "--out", str(again),
                     "--limit-dialogues", "8", "--max-steps", "2", "--cycle", "3", "--fp32",
                     "--keep-rounds"]) == 0
    err = capsys.readouterr().err
    assert "kept by --keep-rounds" in err and "restoring the model" not in err
    log = json.loads((again / "train_log.json").read_text())
    assert log["best"]["cycle"] == 3 and not log["best"].get("kept_init")
    # Past the last round: the fusion stage alone over the init model.
    assert cli.main(["train", "--recipe", "tiny", "--init", str(rounds), "--out", str(again),
                     "--limit-dialogues", "8", "--cycle", "4"]) == 0
    log = json.loads((again / "train_log.json").read_text())
    assert log["history"] and all(h.get("stage") == 2 for h in log["history"])
    # ... and with --keep-rounds its head is saved whatever dev says (an arm scored elsewhere).
    capsys.readouterr()
    assert cli.main(["train", "--recipe", "tiny", "--init", str(rounds), "--out", str(again),
                     "--limit-dialogues", "8", "--cycle", "4", "--keep-rounds"]) == 0
    err = capsys.readouterr().err
    log = json.loads((again / "train_log.json").read_text())
    assert "keeping the init model" not in err and not log["best"].get("kept_init"), err
    assert log["best"].get("stage") == 2 and "keeping the stage-1 head" not in err, err
    # --robot-view-copy: every training dialogue also as a robot has it, recorded.
    copied = tmp_path / "copied"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(copied), "--limit-dialogues", "8",
                     "--max-steps", "2", "--robot-view-copy"]) == 0
    assert "robot-view copy: 8 training dialogues" in capsys.readouterr().err
    assert json.loads((copied / "manifest.json").read_text())["provenance"]["recipe"][
        "robot_view_copy"] == "tags"
    # ... as tags and with the names kept (a household), two copies, recorded too.
    assert cli.main(["train", "--recipe", "tiny", "--out", str(copied), "--limit-dialogues", "8",
                     "--max-steps", "2", "--robot-view-copy", "tags,names"]) == 0
    assert "robot-view copy: 8 training dialogues, each also without '!' as tags and as " \
        "names" in capsys.readouterr().err
    assert json.loads((copied / "manifest.json").read_text())["provenance"]["recipe"][
        "robot_view_copy"] == "tags,names"
    # ... and cut into sentences as the node cuts a turn.
    assert cli.main(["train", "--recipe", "tiny", "--out", str(copied), "--limit-dialogues", "8",
                     "--max-steps", "2", "--robot-view-copy", "sentences"]) == 0
    assert "as sentences (sentences: speaker_N, one utterance a sentence)" in \
        capsys.readouterr().err
    # --heard: what the recognizer heard of train dialogues, added as it is and recorded;
    # a file that is missing, not MELD's format or without a label is refused up front.
    with open(ROOT / "data" / "heard" / "meld_train_espeak.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = [r for r in reader if int(r["Dialogue_ID"]) < 2]

    def write(path, rows):
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=reader.fieldnames)
            w.writeheader()
            w.writerows(rows)
        return path

    heard = write(tmp_path / "heard.csv", rows)
    assert cli.main(["train", "--recipe", "tiny", "--out", str(copied), "--limit-dialogues", "8",
                     "--max-steps", "2", "--robot-view-copy", "--heard", str(heard)]) == 0
    err = capsys.readouterr().err
    assert f"heard: 2 dialogues, {len(rows)} labelled utterances from {heard}" in err
    assert "robot-view copy: 8 training dialogues" in err
    man = json.loads((copied / "manifest.json").read_text())["provenance"]
    assert man["recipe"]["heard"] == ["heard.csv"] and "heard.csv" in man["data"]
    unlabelled = write(tmp_path / "unlabelled.csv", [dict(r, Emotion="") for r in rows])
    other = tmp_path / "other.csv"
    other.write_text("Utterance,Emotion\nhello,joy\n")
    with pytest.raises(SystemExit, match="not for --format emorynlp"):
        cli.main(["train", "--recipe", "tiny", "--format", "emorynlp", "--out", str(copied),
                  "--limit-dialogues", "8", "--max-steps", "2", "--heard", str(heard)])
    for path, why in ((tmp_path / "none.csv", "no such file"),
                      (other, "not a MELD-format CSV"),
                      (unlabelled, "no utterance has a MELD emotion label")):
        with pytest.raises(SystemExit, match=why):
            cli.main(["train", "--recipe", "tiny", "--out", str(copied), "--limit-dialogues",
                      "8", "--max-steps", "2", "--heard", str(path)])
    for bad in ("tags,name", "tags,tags", ","):
        with pytest.raises(SystemExit):
            cli.main(["train", "--recipe", "tiny", "--out", str(copied), "--limit-dialogues",
                      "8", "--robot-view-copy", bad])
        assert "comma list of tags, names, mixed, sentences, each once; got" in capsys.readouterr().err
    with pytest.raises(SystemExit, match="needs --init"):
        cli.main(["train", "--recipe", "tiny", "--out", str(again), "--cycle", "2"])
    # Continuing from a model directory with a longer context: the prompt changes with it.
    longer = tmp_path / "longer"
    assert cli.main(["train", "--recipe", "tiny", "--init", str(out), "--out", str(longer),
                     "--limit-dialogues", "8", "--max-steps", "2", "--past-context", "5"]) == 0
    man = json.loads((longer / "manifest.json").read_text())
    assert man["preprocessing"]["prompt"]["past_context"] == 5
    # Its provenance: the command as given to main, and how the init model was made (its
    # command, figure, minutes), both without this machine's paths.
    prov, made = man["provenance"], json.loads((out / "manifest.json").read_text())["provenance"]
    assert prov["command"].startswith("python -m erc_ros train --recipe tiny --init <...>/student")
    lin = prov["init_provenance"]
    assert lin["command"] == made["command"] and "--teacher <...>/teacher" in lin["command"]
    assert lin["dev_metrics"] == made["dev_metrics"] and lin["created"] == made["created"]
    assert len(lin["manifest_sha256"]) == 64 and "init_provenance" not in lin  # from scratch
    assert str(tmp_path) not in json.dumps(prov)
    # A model trained from `longer` would carry the whole chain back to `out`.
    assert lineage(longer)["init_provenance"] == lin
    with pytest.raises(SystemExit, match="--freeze-layers builds a new encoder"):
        cli.main(["train", "--recipe", "tiny", "--init", str(out), "--out", str(longer),
                  "--freeze-layers", "1"])


def _geometry(vectors) -> np.ndarray:
    """Cosine similarities of every pair of rows (the upper triangle)."""
    v = torch.nn.functional.normalize(torch.as_tensor(vectors, dtype=torch.float32), dim=-1)
    s = (v @ v.T).numpy()
    return s[np.triu_indices(len(s), 1)]


def test_a_round_is_undone_whole():
    """A round that lost is undone: every tensor, and the stage-2 head even where stage 2
    put a head of another kind in its place."""
    from erc_ros.training.fusion_stage import use_head
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import _restore, _snapshot, build_from_recipe

    torch.manual_seed(0)
    model = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "m")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    kind, fusion_config = model.config.fusion_head, dict(model.config.fusion)
    snap = _snapshot(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    from erc_ros.models.fusion import build_fusion
    from erc_ros.training.fusion_stage import HEAD_DEFAULTS

    dt, da, dv = model.dims
    hcfg = dict(HEAD_DEFAULTS, text_dim=dt, audio_dim=da, video_dim=dv, num_classes=7,
                max_speakers=model.config.preprocessing.max_speakers)
    use_head(model, "magt", build_fusion("magt", hcfg), hcfg)
    assert model.state_dict().keys() != before.keys()
    _restore(model, snap)
    assert model.config.fusion_head == kind == "concat" and model.config.fusion == fusion_config
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], v) for k, v in before.items())


def test_feature_distillation_pulls_the_students_geometry_to_the_teachers():
    """Feature KD: the same student, trained with and without the feature term toward a
    teacher's text vectors (from the cached-teacher pass, whole dialogues): with it, the
    student's pairwise cosine similarities correlate far better with the teacher's (0.28 ->
    0.53 here; over three teacher seeds the gain was 0.17-0.25, asserted >= 0.1)."""
    from erc_ros.training.fusion_stage import dialogue_teacher_logits, encode_dialogues
    from erc_ros.training.text_stage import TextStageConfig, train_text_stage
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe

    train = meld.load_meld(MELD_TRAIN)[:12]
    torch.manual_seed(1)
    teacher = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "teacher").eval()
    logits, vectors = dialogue_teacher_logits([teacher], train, progress=False, features=True)
    n = sum(int(y >= 0) for d in train for y in d.labels)
    assert logits.shape == (n, 7) and vectors.shape == (n, teacher.dims[0])
    target = _geometry(vectors)
    corr = {}
    for w in (0.0, 5.0):
        torch.manual_seed(0)
        student = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "student")
        cfg = TextStageConfig(epochs=3, batch_size=8, lr=3e-3, head_lr=3e-3, feature_distill=w,
                              ema_decay=0.0, threads=1)
        if w:
            with pytest.raises(ValueError):
                train_text_stage(student, train, [], cfg, teacher_features=vectors[:-1],
                                 progress=False)
        train_text_stage(student, train, [], cfg, teacher_features=vectors, progress=False)
        own = torch.cat([c.text[c.labels >= 0]
                         for c in encode_dialogues(student, train, progress=False)])
        corr[w] = np.corrcoef(_geometry(own.numpy()), target)[0, 1]
    assert corr[5.0] > corr[0.0] + 0.1, corr


def test_feature_cache_and_fusion_stage(tmp_path):
    from erc_ros.models.fusion import build_fusion
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe

    torch.manual_seed(0)
    model = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "t")
    dialogues = meld.load_meld(MELD_DEV)[:12]
    rng = np.random.default_rng(0)
    for d in dialogues[:4]:  # some utterances with audio, so the mask varies
        d.utterances[0].audio = rng.normal(0, 0.1, 8000).astype(np.float32)
    cache = tmp_path / "feats.safetensors"
    feats = encode_dialogues(model, dialogues, cache, progress=False)
    # The second call reads the file and runs no encoder (the file's key is the model's and
    # the dialogues': a key overwritten while saving made every later call encode again).
    from safetensors import safe_open

    from erc_ros.training.fusion_stage import cache_key

    with safe_open(str(cache), "pt") as f:
        assert f.metadata()["key"] == cache_key(model, dialogues)
    encode = model.encode
    model.encode = lambda *a, **k: pytest.fail("encoded again despite the cache")
    again = encode_dialogues(model, dialogues, cache, progress=False)
    model.encode = encode
    assert len(again) == 12 and torch.equal(again[3].text, feats[3].text)
    assert bool(feats[0].modality[0, 1]) and not bool(feats[0].modality[1, 1])
    # Another model (or other dialogues) never gets the cached vectors of the first.
    torch.manual_seed(1)
    other = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "t")
    fresh = encode_dialogues(other, dialogues, cache, progress=False)
    assert not torch.equal(fresh[3].text, feats[3].text)
    assert len(encode_dialogues(other, dialogues[:5], cache, progress=False)) == 5
    head = build_fusion("magt", dict(text_dim=16, audio_dim=8, video_dim=8, num_classes=7,
                                     d_model=16, num_heads=2))
    summary = train_fusion_stage(head, feats[:8], feats[8:], MELD_LABELS,
                                 FusionStageConfig(epochs=3, batch_size=4, pearson_kd=0.5,
                                                   relational_kd=0.5), progress=False)
    # The stage keeps its best epoch: the head it leaves scores on dev exactly what `best`
    # records (the same predictions through the same rounding), the highest of the epochs.
    # (Over a random tiny encoder and 8 dialogues its figure says nothing of the data.)
    best = summary["best"]
    assert [h["epoch"] for h in summary["history"]] == [1, 2, 3]
    assert best["weighted_f1"] == max(h["weighted_f1"] for h in summary["history"])
    assert dev_figures(head, feats[8:], MELD_LABELS) == \
        {"weighted_f1": best["weighted_f1"], "accuracy": best["accuracy"]}


def test_fusion_stage_distils_a_teacher_over_whole_dialogues():
    """Stage 2 with a teacher's logits: with the KD term alone (distill 1) the head learns
    what the teacher says (here: always class 3, whatever the labels), without it the labels;
    the teacher's rows follow the labelled utterances of each dialogue."""
    from erc_ros.models.fusion import build_fusion
    from erc_ros.training.fusion_stage import per_dialogue, predict_cached
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe

    torch.manual_seed(0)
    model = build_from_recipe(dict(RECIPES["tiny"]), MELD_LABELS, "t")
    feats = encode_dialogues(model, meld.load_meld(MELD_DEV)[:10], progress=False)
    feats[0].labels[1] = -1  # an unlabelled utterance has no teacher row
    n = sum(int((c.labels >= 0).sum()) for c in feats)
    rows = np.full((n, 7), -9.0, np.float32)
    rows[:, 3] = 0.0
    teacher = per_dialogue(rows, feats)
    assert teacher[0].shape == (len(feats[0].labels), 7) and not teacher[0][1].any()
    with pytest.raises(ValueError, match="teacher rows"):
        per_dialogue(rows[1:], feats)

    def fit(distill):
        torch.manual_seed(0)
        head = build_fusion("concat", dict(text_dim=model.dims[0], audio_dim=model.dims[1],
                                           video_dim=model.dims[2], num_classes=7))
        train_fusion_stage(head, feats, [], MELD_LABELS,
                           FusionStageConfig(epochs=15, batch_size=4, lr=3e-3, distill=distill,
                                             unimodal_self_distill=0.0, modality_dropout=0.0),
                           progress=False, teacher=teacher)
        return np.asarray(predict_cached(head, feats)[1])

    assert (fit(1.0) == 3).mean() > 0.9
    assert (fit(0.0) == 3).mean() < 0.5


def test_modality_dropout_never_hides_everything():
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(64, 10, 3, generator=g) > 0.3
    out = modality_dropout(mask, 0.9, g)
    assert not (out & ~mask).any()  # never invents a modality
    assert (out.any(-1) == mask.any(-1)).all()  # something stays wherever something was
    assert out.sum() < mask.sum()
