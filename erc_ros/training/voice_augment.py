"""What a conversation and a robot's microphone do to a voice, as training augmentations of
16 kHz speech (:func:`augment`, one seeded random draw per call).

- ``talk``: another person's voice where turns meet, as the utterance cut from a
  conversation holds it: the other speaker's last words under the start of the turn, or
  their first words over its end (overlaps of up to 0.5 s and 30 % of the turn, and up to
  0.4 s more of their voice alone before or after it, as a segmenter cuts a turn from
  overlapping speech), or a back-channel ("yeah") over the middle; at -10 to +3 dB to the
  turn's level. The other voice comes from the caller (another speaker's clip).
- ``room``: reverberation by a statistical room impulse response (exponentially decaying
  noise for an RT60 of 0.2-0.8 s after a direct path, direct-to-reverberant ratio 0-12 dB;
  Lehmann & Johansson's diffuse tail), then the level restored.
- ``noise``: pink, brown or white noise at 5-30 dB SNR over the speech.
- ``level``: a gain of -20 to +6 dB (peaks kept below full scale).
- ``speed``: 0.9-1.1x (pitch and tempo together, by resampling).
- ``codec``: an Ogg Opus round trip at low bitrate (libsndfile), as a network stream does.

The evaluation of a model measures each one's effect by speaker-held-out dev (``train
--recipe voice --ablate``); the room the benchmarks use is a different simulator (image
sources, :mod:`erc_ros.synth.room`), so no test condition is the training one.
"""
from __future__ import annotations

import io
import math
from typing import Callable, Optional

import numpy as np
import soundfile as sf
from scipy.signal import fftconvolve, resample_poly

from erc_ros.core.types import SAMPLE_RATE
from erc_ros.runtime.voice_expert import VoiceGate, voiced_span

#: Every augmentation, in the order a voice meets them.
ORDER = ("talk", "room", "noise", "level", "speed", "codec")
#: The recipe's (``all``): a robot's microphone. ``talk`` is asked for by name: through the
#: nodes it read more turns but not more right ones (docs/voice.md).
AUGMENTATIONS = ORDER[1:]


def parse(spec: str) -> tuple[str, ...]:
    """``"room,noise"`` / ``"all"`` (the recipe's) / ``"all,talk"`` / ``"none"`` -> the
    augmentations, checked."""
    if spec == "none":
        return ()
    names: tuple[str, ...] = ()
    for n in (s.strip() for s in (spec or "all").split(",")):
        names += AUGMENTATIONS if n == "all" else (n,) if n else ()
    bad = [n for n in names if n not in ORDER]
    if bad:
        raise ValueError(f"unknown augmentation {', '.join(bad)}: use {', '.join(ORDER)}, "
                         "all or none")
    return names


def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def room(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    rt60 = rng.uniform(0.2, 0.8)
    drr_db = rng.uniform(0.0, 12.0)
    n = int(rt60 * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    tail[: int(0.0025 * SAMPLE_RATE)] = 0.0  # first reflections arrive after the direct path
    tail *= math.sqrt(10 ** (-drr_db / 10) / max(np.sum(tail ** 2), 1e-12))
    rir = tail
    rir[0] = 1.0
    y = fftconvolve(x, rir)[: x.size]
    return (y * (_rms(x) / max(_rms(y), 1e-9))).astype(np.float32)


def _coloured(kind: str, n: int, rng: np.random.Generator) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    f = np.maximum(np.fft.rfftfreq(n, 1 / SAMPLE_RATE), 20.0)
    spec *= {"white": 1.0, "pink": 1 / np.sqrt(f), "brown": 1 / f}[kind]
    y = np.fft.irfft(spec, n)
    return y / max(_rms(y), 1e-12)


def noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    snr = rng.uniform(5.0, 30.0)
    kind = ("pink", "brown", "white")[int(rng.integers(3))]
    speech = _rms(x[np.abs(x) > 0.1 * np.max(np.abs(x))]) if x.size and np.max(np.abs(x)) > 0 \
        else _rms(x)
    return (x + _coloured(kind, x.size, rng) * speech * 10 ** (-snr / 20)).astype(np.float32)


def level(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    y = x * 10 ** (rng.uniform(-20.0, 6.0) / 20)
    peak = float(np.max(np.abs(y))) if y.size else 0.0
    return (y * (0.98 / peak) if peak > 0.98 else y).astype(np.float32)


def speed(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    factor = rng.uniform(0.9, 1.1)
    up = 100
    down = int(round(up * factor))
    return resample_poly(x, up, down).astype(np.float32)


def codec(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    buf = io.BytesIO()
    sf.write(buf, np.clip(x, -1, 1), SAMPLE_RATE, format="OGG", subtype="OPUS",
             compression_level=float(rng.uniform(0.6, 1.0)))
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float32")
    y = y[: x.size]
    return np.pad(y, (0, x.size - y.size)).astype(np.float32)


def other_speech(x: np.ndarray) -> np.ndarray:
    """The voiced part of ``x`` (as the voice gate finds it), to lay over another turn."""
    v = voiced_span(np.asarray(x, np.float32), VoiceGate())
    return np.asarray(x[v[0]:v[1]] if v else x[:0], np.float32)


def talk(x: np.ndarray, rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """``x`` with a piece of ``other`` (another speaker's speech, :func:`other_speech`) at the
    edge of its speech or, one time in four, over its middle (a back-channel)."""
    v = voiced_span(x, VoiceGate())
    if v is None or other.size < int(0.1 * SAMPLE_RATE):
        return np.asarray(x, np.float32)
    first, last = v
    speech = last - first
    y = np.asarray(x, np.float32)
    gain = _rms(y[first:last]) / max(_rms(other), 1e-9) * 10 ** (rng.uniform(-10.0, 3.0) / 20)
    where = rng.random()
    if where < 0.25:  # a back-channel: 0.25-0.6 s of the other voice inside the turn
        n = min(other.size, int(rng.uniform(0.25, 0.6) * SAMPLE_RATE), speech)
        a = int(rng.integers(0, other.size - n + 1))
        at = first + int(rng.integers(0, speech - n + 1))
        y = y.copy()
        y[at:at + n] += other[a:a + n] * gain
        return y
    overlap = int(rng.uniform(0.0, min(0.5, 0.3 * speech / SAMPLE_RATE)) * SAMPLE_RATE)
    alone = int(rng.uniform(0.0, 0.4) * SAMPLE_RATE)
    n = min(other.size, overlap + alone)
    if n <= 0:
        return y
    if where < 0.625:  # the other speaker's last words, under the start of the turn
        piece = other[other.size - n:] * gain
        start = first + overlap - n
        if start < 0:
            y, start = np.pad(y, (-start, 0)), 0
    else:  # the other speaker's first words, over the end of the turn
        piece = other[:n] * gain
        start = last - overlap
        if start + n > y.size:
            y = np.pad(y, (0, start + n - y.size))
    y = y.copy()
    y[start:start + n] += piece
    return y


_FUNCS = {"room": room, "noise": noise, "level": level, "speed": speed, "codec": codec}


def augment(x: np.ndarray, names, rng: np.random.Generator, p: float = 0.7,
            other: Optional[Callable[[np.random.Generator], np.ndarray]] = None) -> np.ndarray:
    """``x`` through each of ``names`` with probability ``p``, in the order a voice meets
    them (talk, room, noise, level, speed, codec). ``talk`` needs ``other``: given the
    generator, another speaker's speech (:func:`other_speech`)."""
    if "talk" in names and other is None:
        raise ValueError("the talk augmentation needs another speaker's speech (other=)")
    y = np.asarray(x, np.float32)
    for name in ORDER:
        if name in names and rng.random() < p:
            y = talk(y, rng, other(rng)) if name == "talk" else _FUNCS[name](y, rng)
    return y
