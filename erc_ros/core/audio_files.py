"""Audio files -> 16 kHz mono float32, with bounded memory and a reason for every refusal
(:func:`read_audio_16k`).

WAV, FLAC and Ogg (Vorbis, Opus) at any sample rate and channel count are read with
libsndfile (``soundfile``); the header is read first, so a file longer than ``max_seconds``
is refused before any sample is decoded, and a long file is never held whole. Channels are
averaged and the rate converted with a polyphase filter (``scipy.signal.resample_poly``).
A refusal is an :class:`AudioFileError` whose ``reason`` is one of :data:`REFUSALS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from .types import SAMPLE_RATE

#: Why a file was refused: no such file, not an audio file libsndfile reads, no samples,
#: longer than allowed, a sample rate below the one asked for, NaN or infinite samples.
REFUSALS = ("missing", "not_audio", "empty", "too_long", "low_rate", "non_finite")


class AudioFileError(ValueError):
    """A file that cannot be read as audio; ``reason`` is one of :data:`REFUSALS`."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AudioInfo:
    """What the file held before conversion."""
    sample_rate: int
    channels: int
    seconds: float
    format: str


def read_audio_16k(path: str | Path, max_seconds: float = 60.0, min_rate: int = 0
                   ) -> tuple[np.ndarray, AudioInfo]:
    """The file's samples as 1-D float32 at 16 kHz (channels averaged) and what it held.
    Raises :class:`AudioFileError` for a missing file, a file that is not audio, one with
    no samples, one longer than ``max_seconds`` or sampled below ``min_rate`` Hz (both from
    its header, before decoding) and one holding NaN or infinite samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioFileError(f"{path}: no such file", "missing")
    if path.stat().st_size == 0:
        raise AudioFileError(f"{path}: an empty file (0 bytes)", "empty")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        raise AudioFileError(f"{path}: not an audio file this reader knows (WAV, FLAC, Ogg): "
                             f"{e}", "not_audio") from None
    meta = AudioInfo(int(info.samplerate), int(info.channels),
                     float(info.frames) / max(1, info.samplerate), str(info.format))
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioFileError(f"{path}: no audio samples", "empty")
    if meta.seconds > max_seconds:
        raise AudioFileError(f"{path}: {meta.seconds:.1f} s of audio, longer than the "
                             f"{max_seconds:g} s read at most (one utterance, not a "
                             "recording: cut it first)", "too_long")
    if min_rate and meta.sample_rate < min_rate:
        raise AudioFileError(f"{path}: sampled at {meta.sample_rate} Hz, below {min_rate} Hz: "
                             f"it holds no sound above {meta.sample_rate // 2} Hz, a band "
                             "the reader needs", "low_rate")
    try:
        x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise AudioFileError(f"{path}: cannot decode: {e}", "not_audio") from None
    if not x.size:
        raise AudioFileError(f"{path}: no audio samples", "empty")
    if not np.isfinite(x).all():
        raise AudioFileError(f"{path}: holds NaN or infinite samples", "non_finite")
    x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    if sr != SAMPLE_RATE:
        g = math.gcd(int(sr), SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, int(sr) // g)
    return np.ascontiguousarray(x, dtype=np.float32), meta
