"""Fitting the sense fusion (erc_ros.training.senses) on real readings: MELD dev's words, RAVDESS
voices read by the shipped voice expert, FER2013 faces read by the shipped face expert."""
from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from erc_ros.core.types import FACE_CLASSES
from erc_ros.datasets.voices import read_voices
from erc_ros.paths import data_root
from erc_ros.runtime.face_expert import FaceExpert
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.senses import SENSES
from erc_ros.runtime.voice_expert import VoiceExpert
from erc_ros.synth.faces import face_image
from erc_ros.training.senses import (Design, fit, meld_rows, meld_voice_rows, ravdess_rows,
                                     report, table, voice_readings)

DATA = data_root()
pytestmark = pytest.mark.skipif(not (DATA / "ravdess_speech").is_dir(),
                                reason="RAVDESS is not in ../shared/data (licensed, never in "
                                       "the repository)")


@pytest.fixture(scope="module")
def rows():
    pipe = EmotionPipeline.from_model_dir(default_model_dir(), backend="torch", fusion="text")
    faces = FaceExpert(threads=1)
    portraits = {i: faces.predict([face_image(i)])[0] for i in range(2)}
    out = meld_rows(pipe, DATA / "meld" / "dev_sent_emo.csv", lambda i: portraits[i % 2],
                    dialogues=8)
    clips = [c for c in read_voices(f"ravdess:{DATA / 'ravdess_speech'}")
             if c.speaker in ("ravdess-16", "ravdess-17")][::3]
    voice = voice_readings(VoiceExpert(threads=1), clips)
    with np.load(DATA / "fer2013" / "public_test.npz") as fer:  # each fer[k] reads the file
        images, labels = fer["images"], fer["labels"]
    pick = np.arange(0, len(labels), 5)  # the file is sorted by label
    fp = faces.predict([cv2.cvtColor(images[i], cv2.COLOR_GRAY2RGB) for i in pick])
    fl = np.array([FACE_CLASSES.index(str(x)) for x in labels[pick]])
    out += ravdess_rows(pipe, voice, (fp, fl, np.full(len(pick), "check")), 8, 0)
    # odd dialogues take the check side's actors (16-18): these clips are all there is
    out += [r for r in meld_voice_rows(pipe, DATA / "meld" / "dev_sent_emo.csv", voice, 0,
                                       dialogues=16) if r.part == "check"]
    return out


def test_the_compositions_hold_what_each_sense_read(rows):
    groups = {r.group for r in rows}
    assert groups == {"meld", "ravdess", "ravdess+faces", "meld+voices"}
    for r in rows:
        assert "text" in r.readings  # every turn has words (RAVDESS: its sentence)
        if r.group == "meld":
            assert "voice" not in r.readings and "face" in r.readings
        if r.group in ("ravdess", "meld+voices"):
            assert "face" not in r.readings
    d = Design(rows)
    # a face is weighed from the speaker's second reading on
    first = [i for i, r in enumerate(rows) if "face" in r.readings
             and r.readings["face"].baseline is None]
    assert first and not d.on["face"][first].any()
    assert d.on["face"].any() and d.on["voice"].any()


def test_the_fit_weighs_each_sense_where_it_knows(rows):
    fusion = fit(rows)
    assert set(fusion.theta) == set(SENSES)
    rep = report(fusion, rows)
    rav, faced, meld, both = (rep[g] for g in ("ravdess", "ravdess+faces", "meld",
                                                 "meld+voices"))
    # the words are neutral sentences: the voice carries the emotion, and the fusion follows it
    assert rav["fused"]["uar"] >= rav["voice"]["uar"] - 2, rav
    assert rav["fused"]["uar"] >= rav["text"]["uar"] + 20, rav
    # a face of the same label on top of the voice
    assert faced["fused"]["uar"] >= max(faced["voice"]["uar"], faced["face"]["uar"]) - 2, faced
    # MELD's words with a resting portrait face: the words keep their label
    assert meld["fused"]["weighted_f1"] >= meld["text"]["weighted_f1"] - 2, meld
    # words and a voice of the same label (this expert heard actors 16-17: its voice reads
    # them surely): the fusion keeps the better of the two
    assert both["fused"]["weighted_f1"] >= max(both["text"]["weighted_f1"],
                                               both["voice"]["weighted_f1"]) - 2, both
    assert "voice" not in meld and "face" not in rav  # a sense a composition has not
    # the turns the fused label took from the text add up to the accuracies' difference
    for r in (rav, faced, meld, both):
        c, n = r["fused_vs_text"], r["turns"]
        assert r["text"]["read"] == r["fused"]["read"] == n
        gain = round((r["fused"]["accuracy"] - r["text"]["accuracy"]) * n / 100)
        assert c["wrong_to_right"] - c["right_to_wrong"] == gain, r
        assert c["changed"] >= c["wrong_to_right"] + c["right_to_wrong"]
    assert rav["fused_vs_text"]["wrong_to_right"] > rav["fused_vs_text"]["right_to_wrong"]
    assert "fused is not text" in table(rep).splitlines()[0]
    # a fusion of text and voice reports the face, never weighs it
    two = fit(rows, senses=("text", "voice"))
    assert set(two.theta) == {"text", "voice"}
    faced2 = report(two, rows)["ravdess+faces"]
    assert faced2["fused"] == report(two, [r for r in rows if r.group == "ravdess"]
                                     )["ravdess"]["fused"]
    with pytest.raises(ValueError, match="text is needed"):
        fit(rows, senses=("voice", "face"))


def test_fit_senses_says_what_it_needs(tmp_path):
    out = subprocess.run([sys.executable, "-m", "erc_ros", "fit-senses", "--voice-features",
                          str(tmp_path / "missing.npz")], capture_output=True, text=True)
    assert out.returncode != 0
    assert "no voice features" in out.stderr and "train --recipe voice" in out.stderr
    for flag, value, says in (("--fit-on", "meld,faces", "--fit-on meld,faces: some of meld"),
                              ("--senses", "voice,face", "--senses voice,face: text and"),
                              ("--min-familiar-share", "1.5", "--min-familiar-share 1.5: from")):
        out = subprocess.run([sys.executable, "-m", "erc_ros", "fit-senses", flag, value],
                             capture_output=True, text=True)
        assert out.returncode != 0 and says in out.stderr, out.stderr


def test_a_composition_counts_the_voices_the_gate_found_unfamiliar_as_the_nodes_do():
    """RAVDESS conversations whose actors' first clip the gate found unfamiliar: each voice
    reading carries the share of the conversation's voices found familiar so far, as
    readings_of gives it, and the fit weighs the voice as the fusion will."""
    labels = np.tile(np.arange(4), 2)
    voice = {"probs": np.eye(len(FACE_CLASSES))[labels], "label": labels,
             "speaker": np.repeat(["ravdess-16", "ravdess-17"], 4),
             "sentence": np.ones(8, int), "ok": np.tile([False, True, True, True], 2),
             "unfamiliar": np.tile([True, False, False, False], 2)}
    pipe = EmotionPipeline.from_model_dir(default_model_dir(), backend="torch", fusion="text")
    rows = ravdess_rows(pipe, voice, None, 8, 0)
    assert len(rows) == 8 and sum("voice" in r.readings for r in rows) == 6
    shares, seen = [], 0
    for k, r in enumerate(rows, 1):
        seen += "voice" in r.readings
        if "voice" in r.readings:
            shares.append(r.readings["voice"].familiar_share)
            assert shares[-1] == pytest.approx(seen / k)
    assert min(shares) < 1
    d, strict = Design(rows), Design(rows, min_familiar_share=0.75)
    on = np.array(["voice" in r.readings for r in rows])
    assert (d.on["voice"] == on).all()
    share = np.array([r.readings["voice"].familiar_share if "voice" in r.readings else 0
                      for r in rows])
    assert (strict.on["voice"] == on & (share >= 0.75)).all()
    assert strict.on["voice"].sum() < on.sum()


def test_meld_voices_gives_each_turn_a_clip_of_its_label_from_the_dialogues_side():
    """Even dialogues hear actors 1-15, odd ones 16-18, each turn a clip of its label; an
    actor without a clip of a label lends it from another actor of the same side."""
    # four actors, each read with its own top probability, so a reading says whose clip it is
    top = {"ravdess-01": 1.0, "ravdess-02": 0.8, "ravdess-16": 0.9, "ravdess-17": 0.7}
    labels, speaker = [], []
    for a in top:
        for y in range(len(FACE_CLASSES)):
            if not (a == "ravdess-16" and y == FACE_CLASSES.index("sadness")):
                labels.append(y)
                speaker.append(a)
    labels, speaker = np.array(labels), np.array(speaker)
    probs = np.array([np.eye(7)[y] * top[a] + np.eye(7)[(y + 1) % 7] * (1 - top[a])
                      for y, a in zip(labels, speaker)])
    voice = {"probs": probs, "ok": np.ones(len(labels), bool), "label": labels,
             "speaker": speaker, "sentence": np.ones(len(labels), int)}
    pipe = EmotionPipeline.from_model_dir(default_model_dir(), backend="torch", fusion="text")
    rows = meld_voice_rows(pipe, DATA / "meld" / "dev_sent_emo.csv", voice, 0, dialogues=20)
    assert {r.group for r in rows} == {"meld+voices"}
    lent = 0
    for r in rows:
        p = r.readings["voice"].probs
        assert int(np.argmax(p)) == r.label  # a clip of the turn's label
        whose = min(top, key=lambda a: abs(top[a] - p.max()))
        assert (int(whose[-2:]) > 15) == (r.part == "check"), (whose, r.part)
        if r.part == "check" and FACE_CLASSES[r.label] == "sadness":
            assert whose == "ravdess-17"  # actor 16 has none: lent from its side
            lent += 1
    assert lent  # the first 20 dialogues have sadness in an odd one
