"""Speech for generated conversations: espeak-ng voices per speaker, WAV reading and writing,
resampling to 16 kHz and trimming to the voiced part (the low-level helpers that
:mod:`erc_ros.synth.voices`, :mod:`erc_ros.synth.room` and :mod:`erc_ros.synth.conversation`
share)."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import wave
from math import gcd
from pathlib import Path
from typing import Optional

import numpy as np
from scipy.signal import resample_poly

from erc_ros.paths import cache_root

SAMPLE_RATE = 16000

#: espeak-ng voices for speakers, in order of first appearance: (voice, pitch, speed).
VOICES: list[tuple[str, int, int]] = [
    ("en-us+f3", 65, 160), ("en-us+m3", 35, 150), ("en+Alicia", 60, 160),
    ("en+edward", 40, 160), ("en-us+klatt", 45, 155), ("en-us+f5", 80, 170),
    ("en-us+m7", 25, 165), ("en-gb-scotland+m2", 40, 160), ("en-us+f1", 70, 145),
    ("en-us+Andy", 50, 160),
]


def voice_for(index: int) -> tuple[str, int, int]:
    """Voice of the index-th speaker; beyond the list, variants with shifted pitch/speed."""
    v, p, s = VOICES[index % len(VOICES)]
    k = index // len(VOICES)
    return v, int(np.clip(p + 11 * k * (1 if k % 2 else -1), 0, 99)), s + 7 * k


def cache_dir(sub: str = "") -> Path:
    """``sub`` of the cache (:func:`erc_ros.paths.cache_root`), created."""
    p = cache_root() / sub
    p.mkdir(parents=True, exist_ok=True)
    return p


def read_wav(path: str | Path) -> tuple[np.ndarray, int]:
    """Mono float32 and rate of a PCM WAV file (8/16/32-bit)."""
    with wave.open(str(path), "rb") as w:
        sr, ch, width, n = w.getframerate(), w.getnchannels(), w.getsampwidth(), w.getnframes()
        raw = w.readframes(n)
    dtype = {1: np.uint8, 2: np.int16, 4: np.int32}[width]
    x = np.frombuffer(raw, dtype).astype(np.float32)
    x = (x - 128) / 128 if width == 1 else x / float(2 ** (8 * width - 1))
    if ch > 1:
        x = x.reshape(-1, ch).mean(axis=1)
    return x.astype(np.float32), sr


def write_wav(path: str | Path, audio: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes(pcm.tobytes())


def to_16k(x: np.ndarray, sr: int) -> np.ndarray:
    if sr == SAMPLE_RATE:
        return x.astype(np.float32)
    g = gcd(sr, SAMPLE_RATE)
    return resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)


def espeak(text: str, voice: str = "en-us+f3", pitch: int = 50, speed: int = 160,
           cache: Optional[Path] = None) -> np.ndarray:
    """``text`` spoken by espeak-ng, 16 kHz float32 (cached by text and voice)."""
    cache = Path(cache) if cache else cache_dir("espeak")
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha1(f"{voice}|{pitch}|{speed}|{text}".encode()).hexdigest()[:20]
    path = Path(cache) / f"{key}.wav"
    if not path.exists():
        if shutil.which("espeak-ng") is None:
            raise RuntimeError("espeak-ng is not installed (apt-get install espeak-ng)")
        tmp = Path(tempfile.mkdtemp(dir=cache)) / "out.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed),
                        "-w", str(tmp), "--", text],  # "--": a line may start with "-"
                       check=True, capture_output=True)
        os.replace(tmp, path)
        shutil.rmtree(tmp.parent, ignore_errors=True)
    x, sr = read_wav(path)
    return to_16k(x, sr)


def trim(x: np.ndarray, rel: float = 0.02, frame: int = 160) -> np.ndarray:
    """Cut leading/trailing silence: frames whose RMS is below ``rel`` of the peak RMS."""
    n = x.size // frame
    if n == 0:
        return x
    rms = np.sqrt(np.mean(x[:n * frame].reshape(n, frame) ** 2, axis=1))
    on = np.flatnonzero(rms > rel * rms.max())
    if on.size == 0:
        return x[:0]
    return x[on[0] * frame:(on[-1] + 1) * frame]
