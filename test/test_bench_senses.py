"""bench-senses: the per-turn face frame, a real run on RAVDESS actors with FER2013 faces
(the embedded recognizer, the voice and face experts, the nodes' perception path), and its
refusals."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from erc_ros.bench import senses as bs
from erc_ros.cli import main
from erc_ros.core.config import FaceConfig
from erc_ros.core.faces import detector_for
from erc_ros.core.audio_files import read_audio_16k
from erc_ros.datasets.fer2013 import framed_face, read_npz
from erc_ros.datasets.voices import read_ravdess
from erc_ros.paths import data_root
from erc_ros.synth import conversation as gen
from erc_ros.synth.senses import FacedConversation, TurnFace

RAVDESS = data_root() / "ravdess_speech"
FER = data_root() / "fer2013" / "public_test.npz"


@pytest.fixture(scope="module")
def fer():
    return read_npz(FER)


def _faces_of(fer, label: str, n: int) -> list[int]:
    return np.flatnonzero(np.asarray(fer.classes)[fer.labels] == label)[:n].tolist()


def test_each_turn_shows_its_own_face_at_its_speakers_place(fer):
    clips = {c.path.name: c for c in read_ravdess(RAVDESS) if c.speaker in ("ravdess-16",
                                                                           "ravdess-17")}
    chosen = [clips["03-01-03-02-01-01-16.flac"], clips["03-01-05-02-01-01-17.flac"],
              clips["03-01-04-02-02-01-16.flac"]]
    lines = [gen.ScriptLine(c.speaker, "", c.label, f"u{i}") for i, c in enumerate(chosen)]
    assert [x.emotion for x in lines] == ["joy", "anger", "sadness"]
    audio = {x.utterance_id: read_audio_16k(c.path)[0] for x, c in zip(lines, chosen)}
    conv = gen.build(lines, speech=lambda x, _: audio[x.utterance_id], with_faces=False,
                     timing=gen.TurnTaking("natural", backchannel_rate=0.0), seed=1)
    idx = {x.utterance_id: _faces_of(fer, x.emotion, 1)[0] for x in lines}
    sides = {"u0": 110, "u1": 70, "u2": 90}
    tf = {u: TurnFace(framed_face(fer.images[i], sides[u]), sides[u], lines[int(u[1])].emotion,
                      i) for u, i in idx.items()}
    faced = FacedConversation.of(conv, tf)
    t0, t1, t2 = conv.turns
    assert (t0.speaker, t1.speaker, t2.speaker) == ("ravdess-16", "ravdess-17", "ravdess-16")

    def shows(frame, box, face: TurnFace) -> bool:
        """The frame's pixels in ``box`` are ``face``'s (sensor noise aside)."""
        x, y, w, h = box
        pad = (face.image.shape[1] - face.side) // 2
        own = face.image[pad:pad + h, pad:pad + w].astype(int)
        return float(np.abs(frame[y:y + h, x:x + w].astype(int) - own).mean()) < 4.0

    mid0 = (t0.start + t0.end) / 2
    frame = faced.frame_at(mid0)
    assert frame.shape == (480, 640, 3) and frame.dtype == np.uint8
    assert shows(frame, faced.face_box(t0.speaker, mid0), tf["u0"])
    assert faced.face_box(t1.speaker, mid0) is None  # no face before their first turn
    cx, cy = faced.places[t1.speaker]
    assert frame[cy - 20:cy + 20, cx - 20:cx + 20].std() < 8  # the empty place: background
    mid1 = (t1.start + t1.end) / 2
    frame = faced.frame_at(mid1)
    assert shows(frame, faced.face_box(t1.speaker, mid1), tf["u1"])  # the turn's face
    assert shows(frame, faced.face_box(t0.speaker, mid1), tf["u0"])  # the listener's last
    assert faced.face_box(t1.speaker, mid1)[2] == 70
    mid2 = (t2.start + t2.end) / 2
    frame = faced.frame_at(mid2)
    assert shows(frame, faced.face_box(t2.speaker, mid2), tf["u2"])
    assert faced.face_of(t2.speaker, mid2)[1].label == "sadness"
    # The talking face moves with the voice; the listener's stays put.
    later = mid2 + 1 / 15
    assert faced.face_box(t2.speaker, later) != faced.face_box(t2.speaker, mid2) or \
        faced.face_box(t2.speaker, later + 1 / 15) != faced.face_box(t2.speaker, mid2)
    assert faced.face_box(t1.speaker, mid2) == faced.face_box(t1.speaker, later)


def test_the_cores_detector_finds_framed_faces_at_a_robots_distances(fer):
    """FER's tight 48 px crops on their border, 110 px wide in the frame: the perception
    core's own detector finds most of them where they are."""
    det = detector_for(FaceConfig())
    found = 0
    picks = np.random.default_rng(0).choice(len(fer), 24, replace=False)
    for i in picks:
        face = framed_face(fer.images[i], 110)
        img = np.full((480, 640, 3), 120, np.uint8)
        img[150:150 + face.shape[0], 200:200 + face.shape[1]] = face
        c = 150 + face.shape[0] / 2, 200 + face.shape[1] / 2
        found += any(abs(y + h / 2 - c[0]) < 30 and abs(x + w / 2 - c[1]) < 30
                     for x, y, w, h in det.detect(img))
    assert found >= 8, f"{found} of 24 faces found"


def test_a_turn_is_heard_whole_in_part_or_spilling_over_a_neighbour():
    assert bs.span_fit(10.0, 12.0, 9.9, 12.1) == "whole"
    assert bs.span_fit(10.0, 12.0, 10.0, 11.4) == "part"  # cut at a sentence end inside it
    assert bs.span_fit(10.0, 12.0, 10.0, 11.5) == "whole"  # 75 % of the turn
    assert bs.span_fit(10.0, 12.0, 9.0, 12.0) == "spills"  # a third of it is the neighbour
    assert bs.span_fit(10.0, 12.0, 9.4, 12.0) == "whole"  # 23 % outside
    assert bs.span_fit(10.0, 12.0, 12.5, 13.0) == "spills"  # another turn altogether


def test_conversations_alternate_two_speakers_and_use_each_clip_once():
    clips = [c for c in read_ravdess(RAVDESS) if c.speaker in ("ravdess-16", "ravdess-17",
                                                              "ravdess-18")]
    convs = bs.plan(clips, 8, None, seed=3)
    used = [c.path for cv in convs for c in cv]
    assert len(used) == len(set(used))  # each clip once
    # every clip but, at most, a few of one speaker left without a partner
    assert len(clips) - 8 < len(used) <= len(clips)
    for cv in convs:
        assert len({c.speaker for c in cv}) == 2 or len(cv) == 1
        assert all(a.speaker != b.speaker for a, b in zip(cv, cv[1:]))
    assert bs.plan(clips, 8, None, seed=3) == convs
    assert len(bs.plan(clips, 4, 2, seed=3)) == 2


def test_bench_senses_scores_every_sense_on_real_people(tmp_path, capsys):
    out = tmp_path / "senses.json"
    rc = main(["bench-senses", "--ravdess", str(RAVDESS), "--actors", "16,17", "--faces",
               str(FER), "--conversations", "3", "--turns", "4", "--seed", "0",
               "--bags", str(tmp_path / "bags"), "--out", str(tmp_path / "out"),
               "--json", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["actors"] == ["ravdess-16", "ravdess-17"] and r["conversations"] == 3
    assert r["turns"] == 12 == r["matched"] + r["merged"] + r["lost"]
    assert set(r["senses"]) == {"text", "voice", "face", "fused"}
    for m in r["senses"].values():
        assert math.isfinite(m["weighted_f1"]) and math.isfinite(m["uar"])
        assert {"accuracy", "per_class_f1", "read"} <= set(m)
    assert r["status"]["voice"].get("ok", 0) > r["turns"] / 2
    assert r["senses"]["voice"]["read"] > r["turns"] / 2
    assert r["senses"]["face"]["read"] > 0 and r["status"]["face"].get("seen", 0) > 0
    assert 0 < r["faces"]["detected_share"] <= 1 and r["faces"]["turns"] == 12
    by = r["voice_by_span"]  # where the voice reads: every turn once, by how it was heard
    assert list(by) == list(bs.SPANS) and sum(v["turns"] for v in by.values()) == 12
    assert sum(v["read"] for v in by.values()) == r["senses"]["voice"]["read"]
    assert all(v["right"] <= v["read"] <= v["turns"] for v in by.values())
    assert by["lost"]["turns"] == r["lost"]
    assert r["machine"]["cpu"] and r["model_id"]
    # the recognizer the run heard with, and why (auto: its timed decodes here)
    assert r["asr"]["model"] in ("tiny.en", "base") and r["asr"]["model_reason"]
    assert out.with_suffix(".png").is_file()
    with open(tmp_path / "out" / "turns.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and rows[0]["text"] in bs.RAVDESS_STATEMENTS.values()
    for row in rows:  # a turn is scored with an estimate that overlaps it
        if row["status"] != "lost":
            assert float(row["heard_start"]) < float(row["end"])
            assert float(row["heard_end"]) > float(row["start"])
        assert (row["span"] == "lost") == (row["status"] == "lost")
    assert {k: sum(row["span"] == k for row in rows) for k in bs.SPANS} == \
        {k: v["turns"] for k, v in by.items()}
    printed = capsys.readouterr().out
    assert "| voice |" in printed and f"recognizer Whisper {r['asr']['model']}" in printed
    # The bags are kept: a second run makes none and scores the same.
    assert main(["bench-senses", "--ravdess", str(RAVDESS), "--actors", "16,17", "--faces",
                 str(FER), "--conversations", "1", "--turns", "4", "--seed", "0", "--bags",
                 str(tmp_path / "bags"), "--json", str(tmp_path / "again.json")]) == 0
    assert len(list((tmp_path / "bags").iterdir())) == 3


def test_bench_senses_refuses_what_it_cannot_run_on(tmp_path, capsys, fer):
    def refused(*argv) -> str:
        rc = main(["bench-senses", *argv, "--json", str(tmp_path / "x.json")])
        assert rc == 2
        return capsys.readouterr().err

    assert "no such folder" in refused("--ravdess", str(tmp_path / "nowhere"))
    err = refused("--ravdess", str(RAVDESS), "--actors", "16,99")
    assert "error:" in err and "'99'" in err
    assert "two speakers" in refused("--ravdess", str(RAVDESS), "--actors", "16")
    bad = tmp_path / "bad.csv"
    bad.write_text("file,emotion\na.wav,joy\n")
    assert "error:" in refused("--clips", str(bad))
    # A clips CSV (with a text column) whose labels the faces do not all have.
    ravdess = read_ravdess(RAVDESS)
    clips = [next(c for c in ravdess if c.speaker == s and c.label == label)
             for s in ("ravdess-16", "ravdess-17") for label in ("joy", "anger")]
    assert {c.label for c in clips} == {"joy", "anger"}
    good = tmp_path / "clips.csv"
    with open(good, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "speaker", "text"])
        for c in clips:
            w.writerow([c.path, c.label, c.speaker, "hello"])
    only_joy = tmp_path / "joy.npz"
    keep = _faces_of(fer, "joy", 5)
    np.savez(only_joy, images=fer.images[keep], labels=np.array(["joy"] * len(keep)))
    err = refused("--clips", str(good), "--faces", str(only_joy))
    assert "error:" in err and "anger" in err
    assert "no such file" in refused("--clips", str(good), "--faces", str(tmp_path / "no.npz"))
    assert "at least 2 turns" in refused("--ravdess", str(RAVDESS), "--turns", "1")
    with pytest.raises(SystemExit) as e:  # neither --ravdess nor --clips
        main(["bench-senses", "--json", str(tmp_path / "x.json")])
    assert e.value.code == 2
    assert bs.csv_texts(good)[clips[0].path] == "hello"
