"""A robot's microphone in a room: reverberation per speaker and background noise.

:func:`render` mixes the dry lines of a generated conversation as a microphone a metre or
two away hears them: each speaker stands at their own place in a shoebox room and their
speech is convolved with the room impulse response (RIR) from there to the microphone
(image-source method, PyPI ``pyroomacoustics``, part of the voices extra: ``make
setup-voices``; wall absorption and reflection order from the wanted RT60 by Sabine's
formula, :func:`pyroomacoustics.inverse_sabine`); then noise is added at ``snr_db`` below
the speech (its power over the samples where someone speaks), after the microphone's gain
has put the speech at ``speech_dbfs``.

Noise kinds: ``pink`` (1/f power: fans, air conditioning, distant traffic), ``brown``
(1/f^2: rumble), ``white``; ``hum`` adds mains hum (50 Hz and harmonics) to pink noise.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy.signal import fftconvolve

from erc_ros.synth.voices import SETUP_COMMAND, VoicesMissing

SAMPLE_RATE = 16000
NOISES = ("pink", "brown", "white", "hum")


@dataclass(frozen=True)
class Room:
    """A room, its microphone and its noise (lengths in metres)."""

    size: tuple[float, float, float] = (5.0, 4.0, 2.7)
    rt60: float = 0.45  #: reverberation time, s (living rooms and offices: 0.3-0.6)
    mic: tuple[float, float, float] = (2.5, 0.8, 1.1)  #: the robot's microphone
    distance: tuple[float, float] = (1.0, 2.0)  #: speakers stand this far from the mic
    mouth_height: tuple[float, float] = (1.2, 1.65)  #: seated to standing
    snr_db: Optional[float] = 20.0  #: speech to noise, dB (None: no noise)
    noise: str = "pink"
    speech_dbfs: float = -26.0  #: the microphone's gain puts speech at this RMS level

    def __post_init__(self):
        if self.noise not in NOISES:
            raise ValueError(f"noise must be one of {', '.join(NOISES)}, got {self.noise!r}")
        if not 0.05 <= self.rt60 <= 2.0:
            raise ValueError(f"rt60 {self.rt60} s is outside 0.05-2.0 s")
        if not all(0 < m < s for m, s in zip(self.mic, self.size)):
            raise ValueError(f"the microphone {self.mic} is not inside the room {self.size}")

    def describe(self) -> str:
        snr = "no noise" if self.snr_db is None else f"{self.noise} noise at {self.snr_db:g} dB SNR"
        return (f"{self.size[0]:g}x{self.size[1]:g}x{self.size[2]:g} m room, RT60 "
                f"{self.rt60:g} s, speakers {self.distance[0]:g}-{self.distance[1]:g} m "
                f"from the microphone, {snr}")


def _pra():
    try:
        import pyroomacoustics as pra
    except ImportError as e:
        raise VoicesMissing(f"room acoustics need pyroomacoustics ({e}): run "
                            f"`{SETUP_COMMAND}`") from None
    return pra


def positions(room: Room, n: int, rng) -> list[np.ndarray]:
    """Where ``n`` speakers stand: in front of the microphone (into the room), spread over
    +-70 degrees, ``room.distance`` away, at a mouth height; inside the walls."""
    mic = np.asarray(room.mic, float)
    size = np.asarray(room.size, float)
    out = []
    angles = np.linspace(-70, 70, n) if n > 1 else np.zeros(1)
    for a in rng.permutation(angles):
        d = rng.uniform(*room.distance)
        th = np.deg2rad(a + rng.uniform(-8, 8))
        p = np.array([mic[0] + d * np.sin(th), mic[1] + d * np.cos(th),
                      rng.uniform(*room.mouth_height)])
        out.append(np.clip(p, 0.3, size - 0.3))
    return out


def impulse_responses(room: Room, n_speakers: int, seed: int = 0) -> list[np.ndarray]:
    """One RIR (16 kHz) per speaker, from their place to the microphone."""
    pra = _pra()
    rng = np.random.default_rng(seed)
    e_abs, max_order = pra.inverse_sabine(room.rt60, list(room.size))
    shoebox = pra.ShoeBox(list(room.size), fs=SAMPLE_RATE, materials=pra.Material(e_abs),
                          max_order=int(min(max_order, 40)))
    for p in positions(room, n_speakers, rng):
        shoebox.add_source(p.tolist())
    shoebox.add_microphone(list(room.mic))
    shoebox.compute_rir()
    return [np.asarray(r, np.float32) for r in shoebox.rir[0]]


def noise(kind: str, n: int, rng) -> np.ndarray:
    """``n`` samples of unit-power noise of ``kind``."""
    if kind == "white":
        x = rng.standard_normal(n)
    else:
        spec = np.fft.rfft(rng.standard_normal(n))
        f = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        f[0] = f[1] if f.size > 1 else 1.0
        spec /= f ** (1.0 if kind == "brown" else 0.5)
        x = np.fft.irfft(spec, n)
        if kind == "hum":
            t = np.arange(n) / SAMPLE_RATE
            x = x / (x.std() + 1e-12)
            x = x + sum(a * np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 2 * np.pi))
                        for k, a in ((1, 1.0), (2, 0.5), (3, 0.7), (5, 0.3)))
    return (x / (x.std() + 1e-12)).astype(np.float32)


def render(room: Room, clips: Sequence[tuple[int, np.ndarray, str]], total: int,
           seed: int = 0) -> np.ndarray:
    """Mix ``clips`` ((sample offset, dry 16 kHz audio, speaker)) into ``total`` samples as
    the room's microphone hears them. Reverberation tails past the end are cut."""

    speakers = list(dict.fromkeys(s for _, _, s in clips))
    rirs = dict(zip(speakers, impulse_responses(room, len(speakers), seed)))
    out = np.zeros(total, np.float64)
    active = np.zeros(total, bool)
    for o, x, s in clips:
        # the direct path's delay stays: the speech reaches the microphone a few ms later
        y = fftconvolve(x, rirs[s])
        n = min(y.size, total - o)
        out[o:o + n] += y[:n]
        active[o:o + min(x.size, total - o)] = True
    if active.any():  # the microphone's gain: speech at room.speech_dbfs
        out *= 10 ** (room.speech_dbfs / 20) / (np.sqrt(np.mean(out[active] ** 2)) + 1e-12)
    if room.snr_db is not None and active.any():
        p_speech = float(np.mean(out[active] ** 2))
        g = np.sqrt(p_speech / 10 ** (room.snr_db / 10))
        out += g * noise(room.noise, total, np.random.default_rng(seed + 7919))
    return out.astype(np.float32)
