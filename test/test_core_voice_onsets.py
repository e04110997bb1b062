"""Where a second voice starts inside one recognized segment (diarization.onset_cuts):
pyannote's segmentation-3.0 on real people (RAVDESS actors answering each other, with a
pause, back to back, and over the other's last words)."""
from __future__ import annotations

import numpy as np
import pytest

from erc_ros.core.asr import Word
from erc_ros.core.config import DiarizationConfig, PerceptionConfig
from erc_ros.core.voice_onsets import (VoiceOnsets, onset_cuts, other_voice_frames,
                                       speaker_onsets)
from erc_ros.paths import data_root
from erc_ros.synth.speech import trim

from core_support import ravdess_clips

SR = 16000
pytestmark = pytest.mark.skipif(not (data_root() / "ravdess_speech").is_dir(),
                                reason="RAVDESS is not in ../shared/data (licensed, never in "
                                       "the repository)")


@pytest.fixture(scope="module")
def onsets():
    return VoiceOnsets()


def _two_voices(first, second, gap_s: float) -> tuple[np.ndarray, float]:
    """``second`` starting ``gap_s`` after ``first`` ends (negative: over its last words),
    the two added; and the second's start in seconds."""
    a, b = trim(first), trim(second)
    start = a.size + int(round(gap_s * SR))
    x = np.zeros(max(a.size, start + b.size), np.float32)
    x[:a.size] += a
    x[start:start + b.size] += b
    return x, start / SR


def _found(onsets, x):
    dz = DiarizationConfig()
    t, act = onsets.activity(x)
    return speaker_onsets(t, act, dz.onset_threshold, dz.onset_min_seconds)


def test_a_second_voice_is_found_where_it_starts_and_one_voice_has_none(onsets):
    # RAVDESS's odd actors are men, even ones women: two men (1, 3), two women (2, 4), and
    # a man and a woman twice.
    clips = {a: [x for _, x in ravdess_clips(a, 4)] for a in (1, 2, 3, 4)}
    pairs = [(1, 3), (2, 4), (1, 2), (3, 4)]
    right, alone = [], []
    for k, (p, q) in enumerate(pairs):
        for gap in (0.3, 0.0, -0.3):
            x, truth = _two_voices(clips[p][k], clips[q][(k + 1) % 4], gap)
            found = _found(onsets, x)
            right.append(len(found) == 1 and abs(found[0] - truth) <= 0.35)
        alone.append(_found(onsets, trim(clips[p][k])))
    # Measured: 8 of 12 found within 0.35 s (the two women's three not at all, the man and
    # woman over each other's words once at the wrong place); what this allows is one more
    # miss, and never a voice found in one person's sentence.
    assert sum(right) >= 7, right
    assert alone == [[]] * len(pairs), alone
    # The activity's frames: 16.9 ms apart, within the audio, each speaker's a probability.
    t, act = onsets.activity(x)
    assert np.allclose(np.diff(t), onsets.frame_step) and 0 < t[0] and t[-1] <= x.size / SR
    assert act.shape == (t.size, 3) and act.min() >= 0 and act.max() <= 1 + 1e-6
    # Past the model's 10 s chunk nothing is read; silence has no one talking.
    t_long, _ = onsets.activity(np.zeros(15 * SR, np.float32))
    assert t_long[-1] <= 10.0
    assert _found(onsets, np.zeros(3 * SR, np.float32)) == []


def _evenly(words: str, t0: float, t1: float) -> list[Word]:
    toks = words.split()
    d = (t1 - t0) / len(toks)
    return [Word(w, t0 + i * d, t0 + (i + 1) * d, 1.0) for i, w in enumerate(toks)]


def test_an_onset_cuts_at_the_nearest_word_boundary_and_pieces_keep_their_length():
    words = _evenly("kids are talking by the door dogs are sitting by the door", 0.0, 3.6)
    # boundaries every 0.3 s: at 0.3, 0.6, ..., 3.3 (word i starts at 0.3 i)
    assert onset_cuts(words, [1.75], [], 0.5, 0.6) == [6]          # 1.8 is the nearest
    assert onset_cuts(words, [1.75], [], 0.5, 0.01) == []          # none near enough
    assert onset_cuts(words, [0.2], [], 0.5, 0.6) == [2]           # not within 0.5 of the start
    assert onset_cuts(words, [3.5], [], 0.5, 0.6) == [10]          # nor of the end
    assert onset_cuts(words, [1.75], [6], 0.5, 0.6) == [4]         # 0.5 s from a cut made
    assert onset_cuts(words, [1.0, 1.2], [], 0.5, 0.6) == [3, 5]   # pieces 0.5 s apart at least
    assert onset_cuts(words[:1], [0.1], [], 0.5, 0.6) == []


def test_onsets_are_each_speakers_first_lasting_activity_after_the_first_speaker():
    t = np.arange(100) * 0.02
    act = np.zeros((100, 3))
    act[0:60, 0] = 0.9           # speaker 0 from 0 s
    act[40:42, 1] = 0.9          # a blip of speaker 1: too short
    act[50:100, 1] = 0.9         # speaker 1 from 1.0 s
    act[70:80, 2] = 0.6          # speaker 2 from 1.4 s, 0.2 s long
    assert speaker_onsets(t, act, 0.5, 0.5) == [pytest.approx(1.0)]
    assert speaker_onsets(t, act, 0.5, 0.2) == [pytest.approx(1.0), pytest.approx(1.4)]
    assert speaker_onsets(t, act, 0.7, 0.2) == [pytest.approx(1.0)]
    assert speaker_onsets(t[:1], act[:1], 0.5, 0.5) == []


def test_onset_cuts_settings_are_checked():
    for bad in ({"onset_threshold": 0.0}, {"onset_threshold": 1.0},
                {"onset_min_seconds": 0.0}, {"onset_max_shift_seconds": -1.0}):
        cfg = PerceptionConfig()
        for k, v in bad.items():
            setattr(cfg.diarization, k, v)
        with pytest.raises(ValueError, match="onset"):
            cfg.validate()


def test_other_voices_masks_every_voice_but_the_one_that_talks_most():
    step = 0.02
    t = 0.01 + np.arange(100) * step          # 2 s of frames
    act = np.zeros((100, 3))
    act[0:30, 1] = 0.9           # a neighbour's last words: 0.6 s
    act[25:100, 0] = 0.9         # the main voice: 1.5 s, over the neighbour's end
    mask = other_voice_frames(t, act, 0.5, 0.3, 2 * SR, step)
    assert mask.shape == (2 * SR,) and mask.dtype == bool
    # the neighbour's frames (0-0.6 s), overlap included, are left out; nothing after
    assert mask[:int(0.59 * SR)].all() and not mask[int(0.61 * SR):].any()
    # a second voice shorter than min_seconds is the model hesitating: nothing is left out
    assert not other_voice_frames(t, act, 0.5, 0.7, 2 * SR, step).any()
    # one voice, or none
    assert not other_voice_frames(t, act[:, [0, 2, 2]], 0.5, 0.3, 2 * SR, step).any()
    assert not other_voice_frames(t[:0], act[:0], 0.5, 0.3, 2 * SR, step).any()


def test_own_voice_leaves_out_a_neighbours_words_on_real_voices(onsets):
    """The end of one actor's sentence, then another actor's (with a pause, back to back,
    over the first's last words): what is left is about the second's sentence."""
    clips = {a: [x for _, x in ravdess_clips(a, 4)] for a in (1, 2, 3, 4)}
    pairs = [(1, 3), (2, 4), (1, 2), (3, 4)]
    dz, vc = DiarizationConfig(), PerceptionConfig().voice
    errors, alone = [], []
    for k, (p, q) in enumerate(pairs):
        first = trim(clips[p][k])[-int(0.8 * SR):]
        second = trim(clips[q][(k + 1) % 4])
        for gap in (0.3, 0.0, -0.3):
            x, start = _two_voices(first, second, gap)
            kept = onsets.own_voice(x, dz.onset_threshold, vc.own_voice_min_seconds,
                                    vc.own_voice_keep_seconds)
            errors.append(np.inf if kept is None else abs(kept.size - second.size) / SR)
        alone.append(onsets.own_voice(trim(clips[p][k]), dz.onset_threshold,
                                      vc.own_voice_min_seconds, vc.own_voice_keep_seconds))
    # Measured: 8 of 12 within 0.4 s of the second sentence (the two women's three not told
    # apart, as their onsets are not found above; one more at 0.46 s); this allows one miss more.
    assert sum(e <= 0.4 for e in errors) >= 7, np.round(errors, 2)
    assert all(a is None for a in alone)
