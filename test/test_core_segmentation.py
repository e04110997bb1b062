"""Segmentation on real speech: timed ASR, untimed ASR, voice activity alone, resets."""
from __future__ import annotations

import numpy as np

from erc_ros.core.perception import PerceptionCore
from erc_ros.core.types import AudioChunk, AudioFormat, TranscriptEvent
from erc_ros.bench.core import boundary_errors, score, stream

from core_support import best_turn, core_config, real_conversation, run_core, script_conversation


def _each_turn_once(conv, utts, t0=0.0, min_overlap=0.6):
    """Every ground-truth turn is covered by exactly one utterance (>= min_overlap of it)."""
    hits = {id(t): 0 for t in conv.turns}
    for u in utts:
        tr, ov = best_turn(conv, u, t0)
        assert tr is not None, f"utterance {u.start - t0:.2f}-{u.end - t0:.2f} s matches no turn"
        if ov >= min_overlap * (tr.end - tr.start):
            hits[id(tr)] += 1
    missing = [t.text for t in conv.turns if hits[id(t)] == 0]
    doubled = [t.text for t in conv.turns if hits[id(t)] > 1]
    assert not missing and not doubled, (missing, doubled)


def test_timed_asr_cuts_exactly_once_within_150ms_with_speakers_and_faces():
    conv = script_conversation()
    utts, core = run_core(conv, asr="timed", video=True, t0=1000.0)
    assert len(utts) == len(conv.turns)
    _each_turn_once(conv, utts, t0=1000.0)
    b = boundary_errors(conv, utts, t0=1000.0)
    assert b["start_ms_max"] <= 150 and b["end_ms_max"] <= 150 and b["missing"] == 0
    for u in utts:
        tr, _ = best_turn(conv, u, 1000.0)
        assert u.text == tr.text
        assert u.audio.dtype == np.float32 and u.sample_rate == 16000
        assert abs(u.audio.size - round((u.end - u.start) * 16000)) <= 1
        assert u.features["speaker_embedding"].shape == (256,)
        assert u.speaker_source == "cluster" and 0 <= u.speaker_confidence <= 1
        assert len(u.faces) == 8 and all(f.shape == (112, 112, 3) for f in u.faces)
        assert u.modality_mask == (True, True, True)
        assert u.final_stamp is not None and u.final_stamp >= u.end
    assert score(conv, utts, t0=1000.0)["der"] <= 0.10
    # No duplicate from voice activity: the speech segments were claimed by the ASR spans.
    st = core.stats()
    assert st["counters"]["utterances_vad"] == 0
    assert st["queues"]["pending_utterances"] == 0


def test_untimed_asr_aligns_text_to_its_speech():
    conv = script_conversation()
    utts, core = run_core(conv, asr="untimed")
    assert len(utts) == len(conv.turns)
    _each_turn_once(conv, utts)
    for u in utts:
        tr, ov = best_turn(conv, u)
        assert u.text == tr.text, "text aligned to the wrong speech"
        assert ov >= 0.9 * (tr.end - tr.start)
        assert abs(u.start - tr.start) < 0.3 and abs(u.end - tr.end) < 0.6
    assert core.stats()["counters"]["untimed_estimated_span"] == 0


def test_voice_activity_alone_gives_one_utterance_per_turn():
    conv = script_conversation()
    utts, _ = run_core(conv, asr="none")
    assert len(utts) == len(conv.turns)
    _each_turn_once(conv, utts)
    assert all(u.text == "" and u.has_audio for u in utts)
    assert score(conv, utts)["der"] <= 0.15


def test_incremental_results_do_not_duplicate_and_48k_stereo_input_works():
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False))
    pcm = np.round(np.repeat(conv.audio, 3)[:, None].repeat(2, axis=1) * 32767).astype("<i2")
    fmt = AudioFormat(48000, 2, "S16LE")  # 48 kHz stereo (naive x3 upsampling is fine here)
    n, utts, turn_i = 4800, [], 0
    turns = conv.turns
    for i in range(0, pcm.shape[0], n):
        ts = i / 48000
        core.push_audio(AudioChunk(ts, pcm[i:i + n].reshape(-1).tobytes(), fmt))
        now = ts + 0.1
        if turn_i < len(turns):
            tr = turns[turn_i]
            if tr.start + 0.5 <= now < tr.end:  # partial results while speaking
                core.push_transcript(TranscriptEvent(now, tr.text[:10], False, tr.start, now,
                                                     segment_id=f"s{turn_i}"))
            if tr.end + 0.3 <= now:
                core.push_transcript(TranscriptEvent(now, tr.text, True, tr.start, tr.end,
                                                     segment_id=f"s{turn_i}"))
                turn_i += 1
        utts += core.poll(now)
    utts += core.flush()
    assert len(utts) == len(turns)
    assert boundary_errors(conv, utts)["start_ms_max"] <= 150
    assert core.stats()["counters"]["partials"] > 0


def test_real_recordings_two_speakers():
    """Real speech (Debian asterisk prompts, two people): exact turns and low DER."""
    conv = real_conversation()
    utts, _ = run_core(conv, asr="timed")
    _each_turn_once(conv, utts)
    b = boundary_errors(conv, utts)
    assert b["start_ms_max"] <= 150 and b["end_ms_max"] <= 150
    assert score(conv, utts)["der"] <= 0.20
    vad_utts, _ = run_core(conv, asr="none")
    assert score(conv, vad_utts)["der"] <= 0.30


def test_bag_loop_clock_reset_starts_a_new_conversation():
    """The same conversation replayed twice with stamps restarting (rosbag --loop)."""
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False))
    first, _ = stream(core, conv, asr="timed", video=False, t0=10.0)
    second, _ = stream(core, conv, asr="timed", video=False, t0=10.0)
    assert len(first) == len(second) == len(conv.turns)
    assert {u.conversation_id for u in first}.isdisjoint({u.conversation_id for u in second})
    assert core.stats()["audio"]["clock_resets"] == 1
    ids = [u.utterance_id for u in first + second]
    assert len(set(ids)) == len(ids)


def test_new_conversation_after_silence_and_on_request():
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False,
                                      conversation__new_conversation_gap_seconds=5.0))
    a, _ = stream(core, conv, asr="timed", video=False, t0=0.0)
    b, _ = stream(core, conv, asr="timed", video=False, t0=conv.duration + 4.0)  # gap filled
    assert len({u.conversation_id for u in a}) == 1
    assert b[0].conversation_id != a[-1].conversation_id  # > 5 s without speech
    cid = core.new_conversation()
    assert cid != b[-1].conversation_id and core.conversation_id == cid
    assert len(core.history.context(a[0].conversation_id)) == len(a)


def test_slow_asr_in_auto_mode_gives_no_textless_duplicate():
    """Final results 1.5 s after each turn (after the VAD hang-over closed the speech): the
    speech waits for its text instead of being emitted twice."""
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False))
    utts, _ = stream(core, conv, asr="timed", video=False, asr_delay=1.5)
    assert len(utts) == len(conv.turns) and all(u.has_text for u in utts)
    _each_turn_once(conv, utts)


def test_timed_result_waits_for_audio_that_lags_the_clock_but_not_for_audio_that_stopped():
    """A busy node, or a microphone clock behind ROS time: the clock runs seconds ahead of
    the audio taken so far. While the audio still grows, a timed result waits for all of the
    audio it names (a timeout would cut its speaker embedding and its audio short); once the
    audio stops, it is built after asr_wait_seconds, counted as timed_audio_incomplete."""
    core = PerceptionCore(core_config(faces__enabled=False, diarization__enabled=False))
    wait = core.config.segmentation.asr_wait_seconds
    rng = np.random.default_rng(0)
    pcm = (0.1 * rng.standard_normal(16000 * 5)).astype(np.float32)

    def push(a, b):  # audio [a, b) s in 0.1 s chunks
        for i in range(int(a * 10), int(b * 10)):
            core.push_audio(AudioChunk(i / 10, pcm[i * 1600:(i + 1) * 1600]))

    core.push_transcript(TranscriptEvent(2.0, "one", True, 1.0, 2.0))
    push(0.0, 0.5)
    assert core.poll(2.0 + wait + 1.0) == []        # audio lags the clock by 3.5 s, still grows
    push(0.5, 2.5)
    (u,) = core.poll(2.0 + wait + 1.5)               # the audio arrived: all of it is used
    assert (u.start, u.end, u.text) == (1.0, 2.0, "one")
    assert abs(u.audio.size - 16000) <= 16 and np.count_nonzero(u.audio) >= 0.99 * u.audio.size
    assert core.stats()["counters"]["timed_audio_incomplete"] == 0

    core.push_transcript(TranscriptEvent(4.0, "two", True, 3.0, 4.0))  # its audio never comes
    assert core.poll(4.0 + wait + 0.1) == []         # the audio grew 1.6 s ago: still waits
    (u,) = core.poll(2.0 + wait + 1.5 + wait)        # stopped for asr_wait_seconds: built
    assert u.text == "two" and not u.audio.any()    # no audio was there to read
    assert core.stats()["counters"]["timed_audio_incomplete"] == 1


def _stream_with_jumps(core, conv, cuts, offsets, chunk_s=0.1):
    """Feed ``conv``'s audio in 0.1 s chunks; from ``cuts[k]`` s on its stamps are shifted by
    ``offsets[k + 1]`` (``offsets[0]`` before the first cut): a forward jump beyond
    max_gap_fill_seconds or stamps going backwards at each cut. Returns every utterance
    poll and flush returned."""
    fmt = AudioFormat(sample_rate=16000, channels=1, sample_format="S16LE")
    pcm = (np.clip(conv.audio, -1, 1) * 32767).astype("<i2")
    n = int(chunk_s * 16000)
    out = []
    for i in range(0, pcm.size, n):
        ts = i / 16000
        off = offsets[sum(ts >= c for c in cuts)]
        core.push_audio(AudioChunk(off + ts, pcm[i:i + n].tobytes(), fmt))
        out += core.poll(off + ts + chunk_s)
    return out + core.flush()


def test_speech_open_at_a_clock_jump_is_returned_not_lost():
    """The audio clock jumps while someone speaks (a pause longer than max_gap_fill_seconds,
    stamps going backwards): the speech open at each jump becomes an utterance, and every
    utterance the core builds is returned exactly once."""
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False, segmentation__mode="vad"))
    a = core.config.audio
    turns = conv.turns
    cuts = [0.5 * (turns[k].start + turns[k].end) for k in (2, 5, 8)]  # mid-speech
    gap = a.max_gap_fill_seconds + 10.0
    offsets = [100.0, 100.0 + gap, 100.0 - 80.0, 100.0 - 80.0 + gap]  # +jump, back, +jump
    utts = _stream_with_jumps(core, conv, cuts, offsets)
    st = core.stats()
    assert st["audio"]["clock_jumps"] == 2 and st["audio"]["clock_resets"] == 1
    assert st["counters"]["discontinuities"] == 3
    ids = [u.utterance_id for u in utts]
    assert len(ids) == len(set(ids)) == st["counters"]["utterances"], \
        f"{st['counters']['utterances']} built, {len(ids)} returned"
    for k, cut in enumerate(cuts):  # the speech cut by the jump ends there, on its old clock
        before = cut + offsets[k]
        assert any(u.start < before - 0.3 and abs(u.end - before) <= 0.2 for u in utts), \
            f"no utterance ends at the jump at {before:.2f} s: " \
            f"{[(round(u.start, 2), round(u.end, 2)) for u in utts]}"


def test_a_poll_behind_an_audio_backlog_is_not_a_stall():
    """A timer that read its clock, then waited for the core while seconds of audio came in
    (an input backlog), polls with a time far behind that audio: the audio is new, not
    stalled, so the next poll does not close the speech in progress (it split turns when a
    polling thread was starved)."""
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False, segmentation__mode="vad"))
    limit = core.config.vad.stalled_audio_seconds
    turn = conv.turns[1]
    stop = 0.5 * (turn.start + turn.end)  # mid-speech
    pcm = (np.clip(conv.audio, -1, 1) * 32767).astype("<i2")
    core.poll(0.0)
    for i in range(0, int(stop * 16000), 1600):  # the backlog, no poll in between
        core.push_audio(AudioChunk(i / 16000, pcm[i:i + 1600].tobytes()))
    assert stop > limit + 1
    core.poll(0.5)  # the clock it read before the backlog
    core.poll(core.buffer.input_end_time)  # the next tick
    assert core.vad.open_start is not None, "the speech in progress was closed"
    assert core.stats()["counters"]["speech_closed_stalled"] == 0


def test_speech_open_when_the_microphone_stops_is_closed_after_a_bounded_time():
    """The microphone stops mid-speech and polls go on: the open speech is closed at the last
    audio once none has come for vad.stalled_audio_seconds, not left open until audio returns;
    speech after the audio resumes is an utterance of its own."""
    conv = script_conversation()
    core = PerceptionCore(core_config(faces__enabled=False, segmentation__mode="vad"))
    limit = core.config.vad.stalled_audio_seconds
    assert limit > 0
    turn = conv.turns[1]
    stop = 0.5 * (turn.start + turn.end)  # mid-speech
    fmt = AudioFormat(sample_rate=16000, channels=1, sample_format="S16LE")
    pcm = (np.clip(conv.audio, -1, 1) * 32767).astype("<i2")
    got = []
    for i in range(0, int(stop * 16000), 1600):
        core.push_audio(AudioChunk(i / 16000, pcm[i:i + 1600].tobytes(), fmt))
        got += core.poll(i / 16000 + 0.1)
    assert core.vad.open_start is not None  # speech in progress when the audio stops
    last = core.buffer.input_end_time
    waits = []
    for k in range(1, int(10 * limit) + 10):  # polls every 0.1 s, no audio
        out = core.poll(last + k / 10)
        got += out
        if out:
            waits.append(k / 10)
    assert waits and limit <= waits[0] <= limit + 0.3, (waits, limit)
    cut = [u for u in got if u.start < stop - 0.5]
    assert abs(cut[-1].end - last) <= 0.1 and cut[-1].start <= turn.start + 0.3
    assert core.stats()["counters"]["speech_closed_stalled"] == 1
    # The audio returns (the gap is filled with silence) with the next turn in it.
    n, nxt = len(got), conv.turns[2]
    resume, a0 = last + limit + 1.0, nxt.start - 0.5
    for i in range(int(a0 * 16000), int((nxt.end + 0.6) * 16000), 1600):
        t = resume + i / 16000 - a0
        core.push_audio(AudioChunk(t, pcm[i:i + 1600].tobytes(), fmt))
        got += core.poll(t + 0.1)
    got += core.flush()
    assert core.stats()["counters"]["discontinuities"] == 0
    assert len(got) == n + 1, [(round(u.start, 2), round(u.end, 2)) for u in got]
    assert abs(got[-1].start - (resume + 0.5)) <= 0.3  # the next turn alone


def test_weak_speech_is_widened_into_the_quiet_around_it_and_kept_apart():
    """A burst the VAD is not sure of (0.45 for two 32 ms windows: below the 0.5 threshold
    and shorter than min_speech_seconds) is dropped by default; with weak speech on it comes
    out weak, widened to weak_widen_seconds: never back into the segment before it, never past the quiet
    seen after it (the hang-over that closed it)."""
    from erc_ros.core.config import VadConfig
    from erc_ros.core.vad import WINDOW, VadSegmenter

    dt = WINDOW / 16000

    def run(burst_at: float, **weak):
        seg = VadSegmenter(VadConfig(**weak), 15.0, weak=bool(weak))
        out = []
        for i in range(int(3.0 / dt)):
            t = i * dt
            p = 0.9 if t < 1.0 else 0.45 if burst_at <= t < burst_at + 2 * dt else 0.0
            out += seg.update(t, p)
        return out + seg.close()

    weak = dict(weak_threshold=0.35, min_weak_speech_seconds=0.1, weak_widen_seconds=0.7)
    first, = run(1.5)  # the default: the burst is not speech
    assert not first.weak and abs(first.end - (np.ceil(1.0 / dt) * dt + 0.05)) < 1e-6
    a, b = run(1.5, **weak)
    assert (a.start, a.end) == (first.start, first.end) and not a.weak
    assert b.weak and abs((b.end - b.start) - 0.7) < 1e-6 and b.start < 1.5 < b.end
    a, b = run(1.45, **dict(weak, weak_widen_seconds=0.9))  # just after the first's hang-over
    assert b.weak and b.start == a.end and b.end - b.start < 0.9
    a, b = run(1.5, **dict(weak, weak_widen_seconds=2.0))  # no further than the quiet seen after it
    quiet_end = np.ceil((1.5 + 2 * dt) / dt) * dt + 0.4 + dt  # the window that closed it
    assert b.weak and b.end <= quiet_end + 1e-6 and b.end - b.start < 2.0
