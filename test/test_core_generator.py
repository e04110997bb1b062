"""The conversation generator: scripts, MELD CSVs with their real labels, files, frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from erc_ros.cli import main
from erc_ros.paths import data_root
from erc_ros.synth import conversation as cg

from erc_ros.synth.speech import voice_for
from core_support import espeak_cache

ROOT = Path(__file__).resolve().parents[1]
DATA = data_root()


def test_script_parsing():
    lines = cg.parse_script("# a comment\n\nAlice [joy]: Hello there!\nBob: Hi: how are you?\n")
    assert [(l.speaker, l.emotion, l.text) for l in lines] == [
        ("Alice", "joy", "Hello there!"), ("Bob", "", "Hi: how are you?")]
    with pytest.raises(ValueError):
        cg.parse_script("no speaker here")


def test_meld_dialogue_becomes_a_spoken_conversation_with_its_labels(tmp_path):
    csv = DATA / "meld" / "dev_sent_emo.csv"
    assert csv.exists(), f"MELD dev CSV expected at {csv} (set ERC_ROS_DATA)"
    (dia,) = cg.read_meld(csv, dialogues=[0])
    assert [l.utterance_id for l in dia][:2] == ["dia0_utt0", "dia0_utt1"]
    conv = cg.build(dia, cache=espeak_cache(), name="meld0")
    assert len(conv.turns) == len(dia)
    assert [t.emotion for t in conv.turns] == [l.emotion for l in dia]
    assert conv.turns[0].emotion == "sadness" and conv.turns[0].speaker == "Phoebe"
    # Exact ground truth: each turn's span is voiced at its edges, silent between turns.
    for a, b in zip(conv.turns, conv.turns[1:]):
        assert b.start - a.end >= 0.5
        gap = conv.audio[int(a.end * 16000) + 160:int(b.start * 16000) - 160]
        assert np.abs(gap).max() == 0.0
    for t in conv.turns:
        seg = conv.audio[int(t.start * 16000):int(t.end * 16000)]
        assert np.sqrt(np.mean(seg[:1600] ** 2)) > 1e-3 and np.sqrt(np.mean(seg[-1600:] ** 2)) > 1e-3
    # Distinct voices per speaker; files round-trip.
    assert len({voice_for(i) for i in range(len(conv.speakers))}) == len(conv.speakers)
    conv.save(tmp_path / "c")
    back = cg.GeneratedConversation.load(tmp_path / "c")
    assert back.turns == conv.turns and back.sample_rate == 16000
    assert np.abs(back.audio - conv.audio).max() < 1e-4
    assert set(back.faces) == set(conv.speakers)
    f = back.frame_at(conv.turns[1].start + 0.5)
    assert f.shape == (480, 640, 3) and f.dtype == np.uint8


def test_cli_writes_a_conversation(tmp_path, monkeypatch):
    script = tmp_path / "s.txt"
    script.write_text("Ann [joy]: What a lovely day.\nBen [neutral]: Yes, it is.\n")
    monkeypatch.setenv("ERC_ROS_CACHE", str(espeak_cache().parent))
    assert main(["gen-conversation", "--script", str(script), "--out", str(tmp_path / "o")]) == 0
    back = cg.GeneratedConversation.load(tmp_path / "o")
    assert [t.speaker for t in back.turns] == ["Ann", "Ben"]
    assert (tmp_path / "o" / "faces" / "Ann.png").exists()
