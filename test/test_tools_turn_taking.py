"""Turn-taking as people do it (gaps, overlaps, back-channels) and a microphone in a room."""
from __future__ import annotations

import numpy as np
import pytest

from erc_ros.synth import conversation as cg

from erc_ros.synth.speech import espeak
SR = 16000


def tone_speech(line: cg.ScriptLine, index: int) -> np.ndarray:
    """A line's stand-in voice: a tone per speaker, 0.07 s per character (length matters
    here, not words), so the timeline's arithmetic is checked exactly."""
    n = int(0.07 * len(line.text) * SR)
    t = np.arange(n) / SR
    return (0.3 * np.sin(2 * np.pi * (180 + 60 * index) * t)).astype(np.float32)


def lines(n: int, speakers=("A", "B", "C"), seed: int = 0) -> list[cg.ScriptLine]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        s = speakers[int(rng.integers(len(speakers)))]
        out.append(cg.ScriptLine(s, "x" * int(rng.integers(8, 80)), "neutral", f"dia1_utt{i}"))
    return out


def test_pauses_keep_the_classic_clean_gaps():
    conv = cg.build(lines(30), seed=2, speech=tone_speech, with_faces=False)
    gaps = [b.start - a.end for a, b in zip(conv.turns, conv.turns[1:])]
    assert min(gaps) >= 0.5 - 1e-6 and max(gaps) <= 1.2 + 1e-6
    assert all(t.kind == "turn" for t in conv.turns)


def test_natural_turn_taking_draws_gaps_overlaps_and_back_channels():
    timing = cg.NATURAL
    ls = lines(400, seed=1)
    conv = cg.build(ls, seed=5, speech=tone_speech, with_faces=False, timing=timing)
    turns = [t for t in conv.turns if t.kind == "turn"]
    bcs = [t for t in conv.turns if t.kind == "backchannel"]
    assert len(turns) == 400
    change, same = [], []
    for a, b in zip(turns, turns[1:]):
        (change if a.speaker != b.speaker else same).append(b.start - a.end)
    change, same = np.asarray(change), np.asarray(same)
    # Between speakers: most gaps a few hundred ms, about a quarter overlapping, never more
    # than the cap; the median near the drawn mean (the overlap cap only lifts the low tail).
    assert 0.1 < np.median(change) < 0.3
    share = np.mean(change < 0)
    assert 0.12 < share < 0.35, share
    assert change.min() >= -timing.max_overlap - 1e-3
    assert np.mean((change > 0) & (change < 0.7)) > 0.5
    # The same speaker pauses longer, within the range.
    assert np.median(same) > np.median(change)
    assert same.min() >= timing.pause_range[0] - 1e-3 and same.max() <= timing.pause_range[1] + 1e-3
    # Back-channels: over long turns, by someone else, unlabelled.
    assert 0.05 * len(turns) < len(bcs) < 0.3 * len(turns)
    for bc in bcs:
        host = max(turns, key=lambda t: min(t.end, bc.end) - max(t.start, bc.start))
        assert host.start <= bc.start and bc.end <= host.end and host.speaker != bc.speaker
        assert bc.emotion == "" and bc.text.rstrip("?") in [b.rstrip("?") for b in
                                                             cg.BACKCHANNELS]
    # Exact ground truth: each turn's audio is its speaker's tone at its span.
    t = turns[3]
    seg = conv.audio[int(t.start * SR) + 10:int(t.end * SR) - 10]
    assert np.sqrt(np.mean(seg ** 2)) > 0.01
    # The same seed gives the same conversation.
    again = cg.build(ls, seed=5, speech=tone_speech, with_faces=False, timing=timing)
    assert again.turns == conv.turns and np.array_equal(again.audio, conv.audio)


def test_natural_levels_differ_per_speaker_within_the_spread():
    conv = cg.build(lines(40), seed=3, speech=tone_speech, with_faces=False,
                    timing=cg.TurnTaking("natural", backchannel_rate=0.0, fto_mean=1.0,
                                         fto_sd=0.01, pause_median=1.0, pause_range=(1.0, 1.0)))
    level = {}
    for t in conv.turns:
        seg = conv.audio[int(t.start * SR):int(t.end * SR)]
        level.setdefault(t.speaker, []).append(20 * np.log10(np.sqrt(np.mean(seg ** 2))))
    means = {s: np.mean(v) for s, v in level.items()}
    assert all(np.ptp(v) < 0.1 for v in level.values())  # one level per speaker
    assert all(abs(m - cg.NATURAL.level_dbfs) <= cg.NATURAL.level_spread_db + 0.1
               for m in means.values())


def test_a_room_reverberates_and_adds_noise_at_the_snr():
    pytest.importorskip("pyroomacoustics", reason="the voices extra (make setup-voices)")
    from erc_ros.synth.room import Room, impulse_responses, render

    room = Room(rt60=0.5, snr_db=15.0)
    rirs = impulse_responses(room, 3, seed=0)
    assert len(rirs) == 3
    for h in rirs:
        # The direct path arrives first, 1-2 m away: 3-6 ms at 343 m/s (pyroomacoustics
        # delays the RIR by its fractional-delay filter's half length, 40 samples).
        onset = (int(np.argmax(np.abs(h) > 0.5 * np.abs(h).max())) - 40) / SR
        assert 0.9 / 343 < onset < 2.1 / 343 + 1e-3
        # Energy decays by 60 dB in about RT60 (Schroeder's backward integral, T20 * 3).
        e = np.cumsum(h[::-1] ** 2)[::-1]
        db = 10 * np.log10(e / e[0] + 1e-30)
        t5, t25 = np.argmax(db < -5) / SR, np.argmax(db < -25) / SR
        assert 0.3 < 3 * (t25 - t5) < 0.8
    x = (0.1 * np.random.default_rng(0).standard_normal(SR)).astype(np.float32)
    clean = render(Room(rt60=0.5, snr_db=None), [(SR, x, "A")], 4 * SR, seed=1)
    noisy = render(room, [(SR, x, "A")], 4 * SR, seed=1)
    n = noisy - clean
    active = slice(SR, 2 * SR)
    snr = 10 * np.log10(np.mean(clean[active] ** 2) / np.mean(n ** 2))
    assert abs(snr - 15.0) < 0.5
    assert abs(20 * np.log10(np.sqrt(np.mean(clean[active] ** 2))) - room.speech_dbfs) < 0.1
    # The whole generator with a room: same turns, reverberant audio, the seed decides.
    ls = lines(6)
    a = cg.build(ls, seed=1, speech=tone_speech, with_faces=False, timing=cg.NATURAL, room=room)
    b = cg.build(ls, seed=1, speech=tone_speech, with_faces=False, timing=cg.NATURAL)
    assert a.turns == b.turns and a.audio.size == b.audio.size
    assert not np.allclose(a.audio, b.audio) and np.abs(a.audio).max() <= 0.98 + 1e-6
    with pytest.raises(ValueError, match="noise"):
        Room(noise="traffic")
    with pytest.raises(ValueError, match="not inside"):
        Room(mic=(9.0, 1.0, 1.0))


def test_espeak_speaks_lines_that_look_like_options(tmp_path):
    """MELD train has "-leg?" and "!": espeak-ng would read a leading "-" as an option and
    write nothing; the line is spoken like any other."""
    for text in ("-leg?", "!", "-she, of course, she- uh- familiar"):
        x = espeak(text, cache=tmp_path)
        assert x.size > 0.2 * SR and np.abs(x).max() > 0.01
