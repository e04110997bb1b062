"""PerceptionCore API: configuration, refused input never corrupts state, history, threads."""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest

from erc_ros.core.conversation import ConversationHistory
from erc_ros.core.errors import (AudioCodingError, ImageDecodeError, InputError, StampError,
                                 TranscriptError)
from erc_ros.core.perception import PerceptionConfig, PerceptionCore
from erc_ros.core.types import AudioChunk, AudioFormat, Frame, TranscriptEvent, Utterance
from erc_ros.bench.core import boundary_errors

from core_support import core_config, script_conversation


def test_config_round_trip_flat_and_nested_with_docs():
    cfg = PerceptionConfig.from_dict({"vad": {"threshold": 0.6}, "faces.count": 4,
                                      "segmentation.mode": "vad",
                                      "diarization.enabled": "false"})
    assert cfg.vad.threshold == 0.6 and cfg.faces.count == 4 and not cfg.diarization.enabled
    again = PerceptionConfig.from_dict(cfg.to_dict())
    assert again == cfg
    assert PerceptionConfig.from_dict(cfg.to_dict(flat=True)) == cfg
    flat = cfg.to_dict(flat=True)
    described = PerceptionConfig.describe()
    assert {name for name, _, _ in described} == set(flat)
    assert all(doc and len(doc) > 10 for _, _, doc in described)
    defaults = PerceptionConfig().to_dict(flat=True)
    assert all(defaults[n] == d for n, d, _ in described)
    for bad in ({"vad.nope": 1}, {"nope.threshold": 1}, {"faces.count": 2.5},
                {"faces.count": "many"}, {"diarization.enabled": 3},
                {"segmentation.mode": "magic"}, {"vad.threshold": 0.2, "vad.neg_threshold": 0.3},
                {"voice.threads": 0}, {"voice.expression": "sometimes"}):
        with pytest.raises(ValueError):
            PerceptionConfig.from_dict(bad)


def test_refused_input_never_corrupts_the_stream():
    """Bad chunks, frames and transcripts interleaved with a good stream: each refused with
    a reason, and the utterances are the same as without them."""
    conv = script_conversation()
    core = PerceptionCore(core_config())
    pcm = (conv.audio * 32767).astype("<i2")
    utts, refused = [], []
    turns = list(conv.turns)
    ti = 0
    for k, i in enumerate(range(0, pcm.size, 1600)):
        ts = i / 16000
        bad = [
            lambda: core.push_audio(AudioChunk(ts, b"ID3\x04" + bytes(300),
                                               AudioFormat(16000, 1, "S16LE", "mp3"))),
            lambda: core.push_audio(AudioChunk(ts - 0.5, pcm[i:i + 1600].tobytes())),  # late
            lambda: core.push_frame(Frame(ts, b"\xff\xd8\xff\xe0 not really a jpeg")),
            lambda: core.push_transcript(TranscriptEvent(ts, "x", True, ts, ts - 1.0)),
            lambda: core.push_transcript(TranscriptEvent(float("nan"), "x")),
        ]
        if k % 7 == 3:
            try:
                bad[(k // 7) % len(bad)]()
            except InputError as e:
                refused.append(e)
        core.push_audio(AudioChunk(ts, pcm[i:i + 1600].tobytes()))
        if k % 7 == 0:
            core.push_frame(Frame(ts, conv.frame_at(ts)))
        now = ts + 0.1
        while ti < len(turns) and turns[ti].end + 0.3 <= now:
            tr = turns[ti]
            core.push_transcript(TranscriptEvent(now, tr.text, True, tr.start, tr.end))
            ti += 1
        utts += core.poll(now)
    utts += core.flush()
    kinds = {type(e) for e in refused}
    assert {AudioCodingError, StampError, ImageDecodeError, TranscriptError} <= kinds
    assert all(e.reason and str(e) for e in refused)
    assert len(utts) == len(turns)
    b = boundary_errors(conv, utts)
    assert b["start_ms_max"] <= 150 and b["end_ms_max"] <= 150
    st = core.stats()
    assert sum(st["counters"]["refused"].values()) == len(refused)
    assert st["counters"]["refused"]["audio_coding"] >= 1


def test_stats_report_queues_counters_and_stage_times():
    conv = script_conversation()
    core = PerceptionCore(core_config())
    pcm = (conv.audio[:16000 * 8] * 32767).astype("<i2")
    for i in range(0, pcm.size, 1600):
        core.push_audio(AudioChunk(i / 16000, pcm[i:i + 1600].tobytes()))
        core.push_frame(Frame(i / 16000, conv.frame_at(i / 16000)))
        core.poll(i / 16000 + 0.1)
    st = core.stats()
    for key in ("audio_seconds", "buffer_seconds", "queues", "counters", "stages",
                "realtime_factor", "speakers", "frames_buffered", "in_speech"):
        assert key in st
    assert st["audio_seconds"] == pytest.approx(8.0, abs=0.01)
    assert {"buffer", "vad", "frames_store", "poll"} <= set(st["stages"])
    assert st["stages"]["vad"]["calls"] > 0 and st["vad_windows"] >= 240


def test_conversation_history_is_bounded():
    h = ConversationHistory(max_utterances=3, max_conversations=2)
    mk = lambda c, i: Utterance(f"u{c}{i}", c, f"s{i % 2}", i, i + 1)
    for i in range(5):
        h.add(mk("a", i))
    assert [u.utterance_id for u in h.context("a")] == ["ua2", "ua3", "ua4"]
    assert h.speakers("a") == ["s0", "s1"]
    h.add(mk("b", 0))
    h.add(mk("c", 0))  # "a" is the least recently used: forgotten
    assert h.context("a") == [] and h.conversation_ids == ["b", "c"] and len(h) == 2
    h.reset("b")
    assert h.conversation_ids == ["c"]
    h.reset()
    assert len(h) == 0


def test_callbacks_and_timer_on_different_threads():
    """Audio pushed from one thread (a subscription callback) while another polls (a timer)."""
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False, segmentation__mode="vad"))
    pcm = (conv.audio * 32767).astype("<i2")
    done = threading.Event()
    errors = []

    def producer():
        try:
            for i in range(0, pcm.size, 1600):
                core.push_audio(AudioChunk(i / 16000, pcm[i:i + 1600].tobytes()))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    th = threading.Thread(target=producer)
    th.start()
    utts = []
    while not done.is_set():
        utts += core.poll(core.stats()["buffer_end"] or 0.0)
    th.join()
    utts += core.poll(conv.duration)
    utts += core.flush()
    assert not errors
    assert len(utts) == len(conv.turns)
    assert len({u.utterance_id for u in utts}) == len(utts)


def test_config_fields_are_plain_types():
    """The ROS node declares one parameter per field: only bool/int/float/str."""
    for name, default, _ in PerceptionConfig.describe():
        assert type(default) in (bool, int, float, str), name
    for section in dataclasses.fields(PerceptionConfig):
        assert dataclasses.is_dataclass(section.default_factory())
    assert np.isfinite(PerceptionConfig().audio.capacity_seconds)
