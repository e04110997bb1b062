"""Bounds on what ASR results may make the perception core keep (issue 10, item 5).

A flood of final results about speech far ahead of the audio clock used to wait forever
(6,320 pending after one flood). Such results are refused (``transcript_future``), the
waiting room is bounded (``pending_full``, the newest refused, the waiting ones kept), both
counted by reason, and the conversation that follows is unaffected.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from erc_ros.core.errors import InputError
from erc_ros.core.perception import PerceptionConfig, PerceptionCore
from erc_ros.core.types import AudioChunk, TranscriptEvent
from erc_ros.bench.core import stream

from core_support import best_turn, core_config, script_conversation

FLOOD = 10_000


def _core():
    return PerceptionCore(core_config(faces__enabled=False, diarization__enabled=False))


def _flood(core, make) -> Counter:
    reasons = Counter()
    for k in range(FLOOD):
        try:
            core.push_transcript(make(k))
        except InputError as e:
            reasons[e.reason] += 1
    return reasons


def _sizes(core) -> dict:
    return {"pending": len(core.segmenter.pending), "untimed": len(core.segmenter.untimed),
            "partials": len(core.segmenter.open_partials), "refusal_keys": len(core.counters["refused"])}


def test_flood_of_future_finals_is_refused_bounded_and_the_conversation_goes_on():
    conv = script_conversation()
    cap = PerceptionConfig().segmentation.max_pending_utterances
    core = _core()
    pcm = (conv.audio * 32767).astype("<i2")
    turns = sorted(conv.turns, key=lambda t: t.end)
    flood_at = turns[0].end + 1.0  # after the first turn, with the rest of the talk to come
    utts, ti, flooded = [], 0, False
    for i in range(0, pcm.size, 1600):
        ts = i / 16000
        core.push_audio(AudioChunk(ts, pcm[i:i + 1600].tobytes()))
        now = ts + 0.1
        while ti < len(turns) and turns[ti].end + 0.3 <= now:
            tr = turns[ti]
            core.push_transcript(TranscriptEvent(now, tr.text, True, tr.start, tr.end))
            ti += 1
        if not flooded and now >= flood_at:
            flooded = True
            # 1. Timed and untimed finals far ahead of the audio clock: all refused.
            far = _flood(core, lambda k: TranscriptEvent(now, f"far {k}", True,
                                                         now + 1000.0 + k, now + 1000.5 + k))
            far_untimed = _flood(core, lambda k: TranscriptEvent(now + 1000.0 + k, f"u {k}"))
            assert far == {"transcript_future": FLOOD}
            assert far_untimed == {"transcript_future": FLOOD}
            assert _sizes(core)["pending"] == 0 and _sizes(core)["untimed"] == 0
            # 2. Plausible finals (about audio just heard): the waiting room fills, then the
            # newest are refused; the waiting ones are kept.
            near = _flood(core, lambda k: TranscriptEvent(now, "near", True, now - 0.6,
                                                          now - 0.1))
            assert near == {"pending_full": FLOOD - cap}
            untimed = _flood(core, lambda k: TranscriptEvent(now, "soon"))
            assert untimed == {"pending_full": FLOOD - cap}
            sizes = _sizes(core)
            assert sizes["pending"] == cap and sizes["untimed"] == cap
            assert sizes["refusal_keys"] == 2
            refused = core.stats()["counters"]["refused"]
            assert refused == {"transcript_future": 2 * FLOOD,
                               "pending_full": 2 * (FLOOD - cap)}
        utts += core.poll(now)
        assert len(core.segmenter.pending) <= cap and len(core.segmenter.untimed) <= cap
    utts += core.flush()
    # The accepted flood came out (nothing waiting is lost) ...
    assert sum(u.text == "near" for u in utts) == cap
    assert sum(u.text == "soon" for u in utts) == cap
    assert not any(u.text.startswith(("far", "u ")) for u in utts)
    # ... and every turn of the conversation, each once, with its text and times.
    real = [u for u in utts if u.text not in ("near", "soon")]
    assert sorted(u.text for u in real) == sorted(t.text for t in conv.turns)
    for u in real:
        tr, _ = best_turn(conv, u)
        assert tr.text == u.text and abs(u.start - tr.start) < 1e-6 and \
            abs(u.end - tr.end) < 1e-6
    st = core.stats()
    assert st["queues"]["pending_utterances"] == 0 and st["queues"]["untimed_transcripts"] == 0


def test_finals_slightly_ahead_of_their_audio_still_wait_for_it():
    """ASR on its own microphone path may finalise before the robot's audio of the speech has
    all arrived: results 1 s ahead of the audio are accepted and cut the speech as usual."""
    conv = script_conversation()
    core = _core()
    utts, _ = stream(core, conv, asr="timed", video=False, asr_delay=-1.0)
    assert core.stats()["counters"]["refused"] == {}
    assert sorted(u.text for u in utts) == sorted(t.text for t in conv.turns)
    for u in utts:
        tr, _ = best_turn(conv, u)
        assert abs(u.start - tr.start) < 1e-6 and abs(u.end - tr.end) < 1e-6
        assert u.audio.size == round((u.end - u.start) * 16000) and np.abs(u.audio).max() > 0


def test_a_final_before_any_audio_or_poll_waits_for_its_audio():
    """With nothing to judge the lead by (no audio, no poll yet) a timed final is kept; the
    audio that follows covers it and it comes out."""
    core = _core()
    core.push_transcript(TranscriptEvent(20.0, "early bird", True, 20.2, 21.0))
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(1600) / 16000) * 32767).astype("<i2")
    utts = []
    for k in range(15):
        core.push_audio(AudioChunk(20.0 + 0.1 * k, tone.tobytes()))
        utts += core.poll(20.1 + 0.1 * k)
    utts += core.flush()
    assert [u.text for u in utts] == ["early bird"]
    assert utts[0].start == 20.2 and utts[0].end == 21.0
    assert core.stats()["counters"]["refused"] == {}


def test_limits_are_documented_and_validated():
    names = {n for n, _, _ in PerceptionConfig.describe()}
    assert {"segmentation.max_pending_utterances",
            "segmentation.max_transcript_lead_seconds"} <= names
    for bad in ({"segmentation.max_pending_utterances": 0},
                {"segmentation.max_transcript_lead_seconds": -1.0}):
        with pytest.raises(ValueError):
            PerceptionConfig.from_dict(bad)


def test_hostile_rate_and_future_flood_through_ingest_reach_the_node_health():
    """The node's input path (Ingest over real messages): an AudioInfo of 383999 Hz is
    buffered with a bounded filter on the stamps' time axis, and a flood of future finals is
    counted by reason in the health the node puts on /diagnostics."""
    pytest.importorskip("audio_common_msgs.msg")
    pytest.importorskip("diagnostic_msgs.msg")
    from erc_ros.core.audio_buffer import MAX_FILTER_TAPS
    from erc_ros.core.types import AudioFormat
    from erc_ros.ros import convert
    from erc_ros.ros.diagnostics import to_status
    from erc_ros.ros.ingest import Ingest

    core = _core()
    ingest = Ingest(core)
    rate, n, t0 = 383999, 38400, 5.0
    assert ingest.feed("audio_info", convert.audio_info_msg(AudioFormat(rate)), t0)
    tone = (0.3 * np.sin(2 * np.pi * 200 * np.arange(20 * n) / rate) * 32767).astype("<i2")
    for k in range(20):
        stamp = t0 + k * n / rate
        assert ingest.feed("audio_stamped",
                           convert.pcm16_to_audio_msg(tone[k * n:(k + 1) * n], stamp), stamp)
    assert core.buffer._rs.taps <= MAX_FILTER_TAPS
    assert core.buffer.counters["approx_resample_segments"] == 1
    # The 16 kHz axis follows the declared rate (lagging by the filter's few samples).
    lag = core.buffer._rs.half / rate + 1 / 16000
    assert 0 <= core.buffer.input_end_time - core.buffer.t_end <= lag
    assert core.buffer.input_end_time == pytest.approx(t0 + 20 * n / rate, abs=1e-6)
    for k in range(200):
        ev = TranscriptEvent(t0 + 2.0, f"w{k}", True, t0 + 1000.0 + k, t0 + 1000.5 + k)
        assert not ingest.feed("transcript", convert.event_to_transcript(ev), t0 + 2.0)
    assert ingest.health.snapshot()["refused"] == {"transcript_future": 200}
    status = to_status("utterances", "test", ingest.health)
    assert {kv.key: kv.value for kv in status.values}["refused.transcript_future"] == "200"
    assert len(core.segmenter.pending) == 0


def test_overlong_asr_text_is_refused_and_state_kept():
    """A 1 MB 'transcript' (a broken ASR, or a flood) is refused before it reaches the
    segmentation (and the tokenizer); a normal one still goes through."""
    core = _core()
    limit = core.config.segmentation.max_text_characters
    with pytest.raises(InputError) as err:
        core.push_transcript(TranscriptEvent(stamp=1.0, text="a" * (1 << 20), is_final=True))
    assert err.value.reason == "transcript_too_long"
    with pytest.raises(InputError):
        core.push_transcript(TranscriptEvent(stamp=1.0, text="a" * (limit + 1), is_final=True))
    assert _sizes(core)["untimed"] == 0
    core.push_transcript(TranscriptEvent(stamp=1.0, text="a" * limit, is_final=True))
    assert _sizes(core)["untimed"] == 1
    assert core.stats()["counters"]["refused"]["transcript_too_long"] == 2


def test_transcript_fields_are_bounded_in_the_core():
    """Every path into the core (the nodes, bag replay, bench-core feeding it directly) has
    the same bounds (issue 55): a speaker hint, locale or segment id longer than
    TRANSCRIPT_BOUNDS, a confidence neither NaN nor in [0, 1], an untimed final without
    text; the state is kept, and a plain result still goes in."""
    import math

    from erc_ros.core.segmentation import TRANSCRIPT_BOUNDS
    core = _core()
    before = _sizes(core)
    cases = {"transcript_field": [{"speaker_hint": "v" * 1_000_000},
                                  {"locale": "en" * (TRANSCRIPT_BOUNDS["locale"])},
                                  {"segment_id": "s" * 129}, {"confidence": math.inf},
                                  {"confidence": -5.0}, {"confidence": 1.5}],
             "empty_transcript": [{"text": "  \n "}]}
    for reason, kws in cases.items():
        for kw in kws:
            with pytest.raises(InputError) as err:
                core.push_transcript(TranscriptEvent(**{"stamp": 1.0, "text": "hi", **kw}))
            assert err.value.reason == reason, kw
    assert _sizes(core) == {**before, "refusal_keys": 2}
    assert core.stats()["counters"]["refused"] == {"transcript_field": 6,
                                                   "empty_transcript": 1}
    core.push_transcript(TranscriptEvent(1.0, "hi", speaker_hint="v" * 128,
                                         confidence=math.nan))
    core.push_transcript(TranscriptEvent(2.0, " ", start=0.5, end=1.5))  # timed: kept
    assert _sizes(core)["untimed"] == 1 and _sizes(core)["pending"] == 1
