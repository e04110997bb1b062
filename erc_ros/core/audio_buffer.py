"""The audio buffer: whatever the microphone delivers, as 16 kHz mono float32 on a time axis.

Three parts:

- :func:`decode_chunk` reads one :class:`~erc_ros.core.types.AudioChunk` (raw PCM bytes or an
  array, any of int16/int32/float32/float64/uint8/int8, either endianness, interleaved
  channels) into mono float32 at its own rate, and refuses coded audio (mp3, opus, a WAV
  or Ogg file...) with an :class:`~erc_ros.core.errors.AudioCodingError`.
- :class:`StreamResampler` resamples a stream chunk by chunk with ``resample_poly``'s
  polyphase filter and exact rational factors (22050 -> 16000 is 320/441). It holds back
  the few input samples its filter still needs, so the concatenated output equals
  ``resample_poly`` over the whole stream: chunk boundaries leave no clicks.
- Bounded cost for any declared rate. ``resample_poly`` designs a filter of
  ``20 * max(up, down) + 1`` taps on every call: 383999 Hz (ratio 16000/383999) would be a
  7.7-million-tap filter per chunk. Here the filter is designed once per ratio
  (:func:`polyphase_filter`, cached) and the chunks go through ``upfirdn``. Ratios whose
  terms exceed :data:`MAX_RATIO_TERM` (640, the largest any standard rate needs: 11025 Hz is
  640/441) are not refused but approximated: the nearest fraction with terms <= 640 (16001
  Hz -> 1/1, 383999 Hz -> 1/24), so no filter exceeds :data:`MAX_FILTER_TAPS` (12801) taps
  and no 16 kHz sample costs more than 481 multiply-adds. Every standard rate (8000, 11025,
  16000, 22050, 32000, 44100, 48000, 88200, 96000, 192000, 384000 Hz...) stays exact. An
  approximate ratio alone would drift (16001 Hz read as 16000 Hz: 225 ms an hour); the
  resampler instead delivers, for each 16 kHz sample, the approximate stream's sample
  nearest to that sample's true time (``j / 16000`` s after the first input sample, from
  the declared rate). A sample is repeated or skipped now and then (16001 Hz: one a
  second), the time axis never drifts, and no sample is further than half an output sample
  (31 us) from its true time. The buffer counts such segments (``approx_resample_segments``).
- :class:`AudioBuffer` is a bounded ring of 16 kHz samples indexed by time. Stamps place
  chunks on the axis: small jitter is ignored, gaps are filled with silence, overlaps are
  trimmed, audio older than the buffer end is refused, and a large jump (bag loop, clock
  reset) starts a new *epoch* (the owner is told first through ``on_discontinuity``). It
  also checks that stamps advance as fast as the declared sample rate says.
"""
from __future__ import annotations

import functools
import math
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Callable, Optional

import numpy as np
from scipy.io import wavfile
from scipy.signal import firwin, resample_poly, upfirdn

from .config import AudioConfig
from .errors import AudioCodingError, AudioFormatError, AudioSizeError, SampleRateError, StampError
from .types import SAMPLE_RATE, AudioChunk, AudioFormat

#: ``coding_format`` values that mean raw PCM samples.
PCM_CODINGS = {"", "wave", "wav", "pcm", "raw", "lpcm", "s16le", "pcm_s16le"}

# GStreamer sample-format name -> numpy dtype (explicit byte order).
_SAMPLE_FORMATS = {
    "S8": np.dtype("i1"), "U8": np.dtype("u1"),
    "S16LE": np.dtype("<i2"), "S16BE": np.dtype(">i2"),
    "S32LE": np.dtype("<i4"), "S32BE": np.dtype(">i4"),
    "F32LE": np.dtype("<f4"), "F32BE": np.dtype(">f4"),
    "F64LE": np.dtype("<f8"), "F64BE": np.dtype(">f8"),
}

# Signatures of coded audio files sometimes sent on a "PCM" topic. Only long, specific
# signatures: a bare MPEG frame sync (0xFFFB) is also a perfectly good int16 sample.
def _sniff(raw: bytes) -> str:
    if raw[:3] == b"ID3" and len(raw) > 3 and raw[3] in (2, 3, 4):
        return "an MP3 file (ID3 tag)"
    if raw[:4] == b"RIFF" and raw[8:12] == b"WAVE":
        return "a WAV file (RIFF header)"
    if raw[:4] == b"OggS":
        return "an Ogg (Opus/Vorbis) stream"
    if raw[:4] == b"fLaC":
        return "a FLAC file"
    return ""


def _to_float(x: np.ndarray) -> np.ndarray:
    """Samples of any supported dtype to float32 in [-1, 1]."""
    if x.dtype.kind == "f":
        y = x.astype(np.float32, copy=False)
        if not np.all(np.isfinite(y)):
            raise AudioFormatError("float audio contains NaN or infinite samples")
        return np.clip(y, -1.0, 1.0)
    if x.dtype.kind == "u":  # unsigned PCM is offset binary
        half = float(2 ** (8 * x.dtype.itemsize - 1))
        return ((x.astype(np.float32) - half) / half).astype(np.float32)
    if x.dtype.kind == "i":
        return (x.astype(np.float32) / float(2 ** (8 * x.dtype.itemsize - 1))).astype(np.float32)
    raise AudioFormatError(f"unsupported sample dtype {x.dtype}")


def check_format(fmt: AudioFormat) -> None:
    """Raise if ``fmt`` does not describe raw PCM this buffer can read."""
    coding = (fmt.coding_format or "").strip().lower()
    if coding not in PCM_CODINGS:
        raise AudioCodingError(
            f"audio coding '{fmt.coding_format}' is not raw PCM; erc_ros needs uncompressed "
            f"samples (audio_common: set the capture node's coding format to 'wave')")
    if fmt.sample_format.upper() not in _SAMPLE_FORMATS:
        raise AudioFormatError(
            f"unknown sample format '{fmt.sample_format}' (known: "
            f"{', '.join(sorted(_SAMPLE_FORMATS))})")
    if not (1 <= int(fmt.channels) <= 64):
        raise AudioFormatError(f"channel count {fmt.channels} out of range 1..64")
    if not (4000 <= int(fmt.sample_rate) <= 384000):
        raise AudioFormatError(f"sample rate {fmt.sample_rate} Hz out of range 4000..384000")


def decode_chunk(chunk: AudioChunk) -> np.ndarray:
    """Mono float32 samples of ``chunk`` at its declared rate. Raises InputError subclasses."""
    fmt = chunk.fmt
    check_format(fmt)
    ch = int(fmt.channels)
    data = chunk.data
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        what = _sniff(raw)
        if what:
            raise AudioCodingError(f"declared raw PCM but the bytes look like {what}; send "
                                   f"uncompressed PCM (coding 'wave')")
        dtype = _SAMPLE_FORMATS[fmt.sample_format.upper()]
        frame = dtype.itemsize * ch
        if len(raw) % frame:
            raise AudioFormatError(
                f"{len(raw)} bytes is not a whole number of {ch}-channel {fmt.sample_format} "
                f"frames ({frame} bytes each)")
        x = np.frombuffer(raw, dtype=dtype)
    elif isinstance(data, np.ndarray):
        x = data
        if x.ndim == 2:
            if x.shape[1] != ch:
                raise AudioFormatError(f"array of shape {x.shape} but {ch} channels declared")
            x = x.reshape(-1)
        elif x.ndim != 1:
            raise AudioFormatError(f"audio array must be 1-D (interleaved) or 2-D, got {x.shape}")
        if x.dtype.kind not in "iuf":
            raise AudioFormatError(f"unsupported sample dtype {x.dtype}")
        if x.size % ch:
            raise AudioFormatError(f"{x.size} samples is not a multiple of {ch} channels")
    else:
        raise AudioFormatError(f"audio data must be bytes or a numpy array, got {type(data).__name__}")
    y = _to_float(x)
    if ch > 1:
        y = y.reshape(-1, ch).mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(y, dtype=np.float32)


#: Largest term of an up/down resampling ratio used as is. ``resample_poly``'s filter has
#: ``20 * max(up, down) + 1`` taps; every standard rate fits (11025 Hz needs 640/441).
#: A ratio with a larger term is replaced by the nearest one within it (module docs).
MAX_RATIO_TERM = 640
#: The longest resampling filter ever designed (20 * MAX_RATIO_TERM + 1 taps).
MAX_FILTER_TAPS = 20 * MAX_RATIO_TERM + 1


def resample_ratio(rate_in: int, rate_out: int = SAMPLE_RATE,
                   max_term: int = MAX_RATIO_TERM) -> Fraction:
    """``rate_out / rate_in``, or the nearest fraction whose terms are <= ``max_term``."""
    exact = Fraction(int(rate_out), int(rate_in))
    if max(exact.numerator, exact.denominator) <= max_term:
        return exact
    # Bound the denominator of the ratio below 1 (its numerator is then smaller still).
    approx = exact.limit_denominator(max_term) if exact <= 1 else \
        1 / (1 / exact).limit_denominator(max_term)
    if approx <= 0:
        raise ValueError(f"cannot resample {rate_in} Hz to {rate_out} Hz")
    return approx


@functools.lru_cache(maxsize=16)
def polyphase_filter(up: int, down: int) -> tuple[np.ndarray, int]:
    """``resample_poly``'s default filter for ``up/down`` (Kaiser-windowed sinc, float32,
    scaled by ``up``), zero-padded in front as ``resample_poly`` pads it, and the number of
    leading outputs of ``upfirdn`` to discard. Designed once per ratio and shared."""
    max_rate = max(up, down)
    half_len = 10 * max_rate
    h = firwin(2 * half_len + 1, 1.0 / max_rate, window=("kaiser", 5.0)).astype(np.float32)
    h *= up
    n_pre_pad = down - half_len % down
    h = np.concatenate([np.zeros(n_pre_pad, np.float32), h])
    h.setflags(write=False)
    return h, (half_len + n_pre_pad) // down


class _PolyStream:
    """``resample_poly(x, up, down)`` chunk by chunk; the concatenated output is the offline
    output (the filter from :func:`polyphase_filter`, applied with ``upfirdn``).

    Output sample ``n`` needs input up to ``n * down / up + half``; it is emitted once that
    input has arrived (``half`` is the filter's half length: a millisecond or two of
    latency). Each push re-filters only the new input plus the filter's context, starting
    on an input index that is a multiple of ``down`` so the output grid stays aligned.
    """

    def __init__(self, up: int, down: int):
        self.up, self.down = up, down
        # The filter's half length is 10*max(up, down) in the upsampled domain; in input
        # samples that is 10*max/up (+2 for rounding). No filter, no latency.
        self.half = 0 if self.passthrough else int(math.ceil(10 * max(up, down) / up)) + 2
        self.taps = 0 if self.passthrough else 20 * max(up, down) + 1
        self._x = np.zeros(0, np.float32)  # kept input, starting at absolute index _x0
        self._x0 = 0
        self.n_in = 0
        self.n_out = 0

    @property
    def passthrough(self) -> bool:
        return self.up == 1 and self.down == 1

    def push(self, x: np.ndarray) -> np.ndarray:
        if self.passthrough:
            self.n_in += x.size
            self.n_out += x.size
            return x
        self._x = np.concatenate([self._x, x]) if self._x.size else x.copy()
        self.n_in += x.size
        n_final = (self.n_in - self.half) * self.up // self.down
        return self._emit(max(n_final, 0))

    def flush(self) -> np.ndarray:
        if self.passthrough:
            return np.zeros(0, np.float32)
        return self._emit(-(-self.n_in * self.up // self.down))

    def _emit(self, n_end: int) -> np.ndarray:
        if n_end <= self.n_out:
            return np.zeros(0, np.float32)
        d, u = self.down, self.up
        s = max(0, ((self.n_out * d // u) - self.half) // d * d)
        s = max(s, self._x0)  # _x0 is a multiple of `down` too
        seg = self._x[s - self._x0:]
        h, n_pre_remove = polyphase_filter(u, d)
        # = resample_poly(seg, u, d), from index n_pre_remove on; upfirdn's output runs
        # half a filter past the input, enough for every output the offline call keeps.
        y = upfirdn(h, seg, u, d)
        base = s * u // d - n_pre_remove
        out = y[self.n_out - base:n_end - base].astype(np.float32, copy=False)
        self.n_out += out.size
        # Keep only what the next outputs can need, from an index aligned on `down`.
        keep = max(0, ((self.n_out * d // u) - self.half) // d * d)
        if keep > self._x0:
            self._x = self._x[keep - self._x0:]
            self._x0 = keep
        return out


class StreamResampler:
    """Chunk-by-chunk resampling to ``rate_out`` at a bounded cost (see the module docs).

    With an exact ratio (every standard rate) the concatenated output equals
    ``resample_poly`` over the whole stream. Otherwise (``exact`` False) output sample ``j``
    is the sample of the approximately resampled stream nearest to ``j / rate_out`` s
    after the first input sample: at most half an output sample off, never drifting.
    ``n_out`` always follows the declared rate: ``~(n_in - half) * rate_out / rate_in``
    while streaming, ``ceil(n_in * rate_out / rate_in)`` after :meth:`flush`.
    """

    def __init__(self, rate_in: int, rate_out: int = SAMPLE_RATE,
                 max_ratio_term: int = MAX_RATIO_TERM):
        self.rate_in, self.rate_out = int(rate_in), int(rate_out)
        ratio = resample_ratio(self.rate_in, self.rate_out, max_ratio_term)
        self.up, self.down = ratio.numerator, ratio.denominator
        self.exact = ratio == Fraction(self.rate_out, self.rate_in)
        self._poly = _PolyStream(self.up, self.down)
        self.half = self._poly.half
        #: Taps of the filter this stream runs (0: none needed).
        self.taps = self._poly.taps
        self.n_in = 0
        self.n_out = 0
        # Approximate ratio: approximate-stream sample k sits at input position k*down/up,
        # i.e. output j (input position j*rate_in/rate_out) is its sample j*_A/_B.
        self._A = self.rate_in * self.up
        self._B = self.rate_out * self.down
        self._a = np.zeros(0, np.float32)  # approximate-stream samples from index _a0 on
        self._a0 = 0

    @property
    def passthrough(self) -> bool:
        return self.exact and self._poly.passthrough

    def push(self, x: np.ndarray) -> np.ndarray:
        self.n_in += x.size
        y = self._poly.push(x)
        if self.exact:
            self.n_out += y.size
            return y
        n_a = self._poly.n_out
        n_end = -(-(self._B * (2 * n_a - 1)) // (2 * self._A)) if n_a else 0
        return self._slip(y, n_end)

    def flush(self) -> np.ndarray:
        """All remaining output (the end of the stream: zero padding after it, as offline)."""
        y = self._poly.flush()
        if self.exact:
            self.n_out += y.size
            return y
        return self._slip(y, -(-self.n_in * self.rate_out // self.rate_in))

    def _nearest(self, j0: int, m: np.ndarray) -> np.ndarray:
        """Approximate-stream index nearest to output ``j0 + m``: floor((j*A + B/2) / B)
        (the big-integer part in Python, the per-sample part in int64)."""
        q0, r0 = divmod(2 * j0 * self._A + self._B, 2 * self._B)
        return q0 + (r0 + 2 * self._A * m) // (2 * self._B)

    def _slip(self, y: np.ndarray, n_end: int) -> np.ndarray:
        """Outputs up to ``n_end``, each the nearest sample of the approximate stream."""
        self._a = np.concatenate([self._a, y]) if self._a.size else \
            np.asarray(y, np.float32).copy()
        if n_end <= self.n_out:
            return np.zeros(0, np.float32)
        idx = self._nearest(self.n_out, np.arange(n_end - self.n_out, dtype=np.int64)) - self._a0
        # Past the end of the stream (flush only), zeros: the offline zero padding.
        out = np.zeros(idx.size, np.float32)
        ok = idx < self._a.size
        out[ok] = self._a[idx[ok]]
        self.n_out = n_end
        first = int(self._nearest(n_end, np.zeros(1, np.int64))[0])  # next output's sample
        drop = min(first - self._a0, self._a.size)
        if drop > 0:
            self._a = self._a[drop:]
            self._a0 += drop
        return out


@dataclass
class PushResult:
    """What one push did (for counters)."""

    samples: int = 0  # 16 kHz samples appended (including gap fill)
    gap_filled: float = 0.0  # seconds of silence inserted for a gap
    trimmed: float = 0.0  # seconds of overlapping input dropped
    discontinuity: str = ""  # "" or "clock_jump" / "clock_reset"


class AudioBuffer:
    """Bounded ring of 16 kHz mono float32 samples on the stamps' time axis.

    Time of absolute sample ``i`` of the current epoch: ``epoch_t0 + i / 16000``. Only the
    last ``config.capacity_seconds`` are kept; :meth:`read` returns zeros for what is not.
    ``config`` (:class:`~erc_ros.core.config.AudioConfig`) sets its stamp tolerance, gap
    fill, clock reset, chunk size and sample-rate check; ``on_discontinuity(kind)`` is called
    before a new epoch starts.
    """

    #: The sample-rate check looks at the last this many chunks' stamps ...
    RATE_CHECK_WINDOW = 20
    #: ... once they span at least this many seconds.
    RATE_CHECK_MIN_SPAN_S = 0.5

    def __init__(self, config: Optional[AudioConfig] = None,
                 on_discontinuity: Optional[Callable[[str], None]] = None):
        self.config = config or AudioConfig()
        self.capacity = int(round(self.config.capacity_seconds * SAMPLE_RATE))
        self.on_discontinuity = on_discontinuity
        self._ring = np.zeros(self.capacity, np.float32)
        # (stamp, declared duration) of the last chunks
        self._rate_hist: deque = deque(maxlen=self.RATE_CHECK_WINDOW)
        self.epoch = -1
        self.epoch_t0 = 0.0
        self.n_end = 0  # absolute index after the last sample of this epoch
        self._fmt: Optional[AudioFormat] = None
        self._rs: Optional[StreamResampler] = None
        self._rs_t0 = 0.0  # time of the resampler's first input sample
        self.counters = {"chunks": 0, "empty_chunks": 0, "gaps": 0, "gap_fill_s": 0.0,
                         "overlaps": 0, "overlap_trimmed_s": 0.0, "clock_jumps": 0,
                         "clock_resets": 0, "format_changes": 0, "seconds_in": 0.0,
                         "approx_resample_segments": 0}

    # -- time axis ---------------------------------------------------------------------
    @property
    def n_start(self) -> int:
        return max(0, self.n_end - self.capacity)

    @property
    def t_end(self) -> float:
        return self.epoch_t0 + self.n_end / SAMPLE_RATE

    @property
    def t_start(self) -> float:
        return self.epoch_t0 + self.n_start / SAMPLE_RATE

    def index_of(self, t: float) -> int:
        return int(round((t - self.epoch_t0) * SAMPLE_RATE))

    def time_of(self, i: int) -> float:
        return self.epoch_t0 + i / SAMPLE_RATE

    @property
    def input_end_time(self) -> float:
        """Time just after the last input sample pushed (ahead of t_end by the filter delay)."""
        if self._rs is None:
            return self.t_end
        return self._rs_t0 + self._rs.n_in / self._fmt.sample_rate

    # -- reading -----------------------------------------------------------------------
    def read_index(self, i0: int, i1: int) -> np.ndarray:
        out = np.zeros(max(0, i1 - i0), np.float32)
        a, b = max(i0, self.n_start), min(i1, self.n_end)
        if b > a:
            ra, rb = a % self.capacity, (b - 1) % self.capacity + 1
            if ra < rb:
                out[a - i0:b - i0] = self._ring[ra:rb]
            else:
                k = self.capacity - ra
                out[a - i0:a - i0 + k] = self._ring[ra:]
                out[a - i0 + k:b - i0] = self._ring[:rb]
        return out

    def read(self, t0: float, t1: float) -> np.ndarray:
        """Samples in [t0, t1) of the current epoch (zeros where nothing is buffered)."""
        return self.read_index(self.index_of(t0), self.index_of(t1))

    # -- writing -----------------------------------------------------------------------
    def _append(self, y: np.ndarray) -> None:
        n = y.size
        if n == 0:
            return
        if n >= self.capacity:
            y, self.n_end = y[-self.capacity:], self.n_end + n - self.capacity
            n = y.size
        r = self.n_end % self.capacity
        k = min(n, self.capacity - r)
        self._ring[r:r + k] = y[:k]
        if k < n:
            self._ring[:n - k] = y[k:]
        self.n_end += n

    def _flush_resampler(self) -> None:
        if self._rs is not None:
            self._append(self._rs.flush())
            self._rs = None

    def _start_segment(self, stamp: float, fmt: AudioFormat) -> None:
        """A new resampler whose first input sample lands on the 16 kHz grid at ``stamp``."""
        self._fmt = fmt
        self._rs = StreamResampler(fmt.sample_rate)
        self._rs_t0 = self.t_end if self.epoch >= 0 else stamp

    def _new_epoch(self, stamp: float, fmt: AudioFormat, kind: str) -> None:
        if self.epoch >= 0:
            self._flush_resampler()
            self.counters[kind + "s"] += 1
            if self.on_discontinuity is not None:
                self.on_discontinuity(kind)
        self.epoch += 1
        self.epoch_t0 = stamp
        self.n_end = 0
        self._rate_hist.clear()
        self._rs = None
        self._start_segment(stamp, fmt)

    def _check_rate(self, stamp: float, dur: float, fmt: AudioFormat) -> None:
        """Refuse chunks while stamps advance at a pace the declared rate cannot explain.
        Lost chunks (a loaded subscriber, a lossy link) also make the stamps run ahead of
        the audio, but only at the pairs around a loss: a rate is judged wrong only where
        the typical pair (the median) is off too, not the sum alone (a burst of losses
        refused the audio after it, compounding the loss)."""
        if not self.config.check_sample_rate:
            return
        hist = list(self._rate_hist) + [(stamp, dur)]
        adv = total = 0.0
        pairs = []
        for (s0, d0), (s1, _) in zip(hist, hist[1:]):
            diff = s1 - s0
            if 0.0 <= diff <= 0.5 + 8 * d0 and d0 > 0:  # skip gaps and clock jumps
                adv += diff
                total += d0
                pairs.append(diff / d0)
        if adv < self.RATE_CHECK_MIN_SPAN_S or total <= 0 or len(hist) < 6:
            return
        ratio, typical = adv / total, float(np.median(pairs))
        limit = math.log1p(self.config.rate_tolerance)
        if abs(math.log(ratio)) > limit and abs(math.log(max(typical, 1e-9))) > limit:
            if stamp >= hist[-2][0]:
                self._rate_hist.append((stamp, dur))  # the window rolls on: a fixed stream recovers
            raise SampleRateError(
                f"declared sample rate {fmt.sample_rate} Hz, but the stamps advance {ratio:.2f}x "
                f"as fast as the audio: the real rate looks like ~{fmt.sample_rate / ratio:.0f} "
                f"Hz (or the stamps are wrong); chunk refused")

    def push(self, chunk: AudioChunk) -> PushResult:
        """Decode, check and append one chunk. Raises an InputError and changes nothing if
        the chunk is refused."""
        x = decode_chunk(chunk)
        fmt = chunk.fmt
        stamp = float(chunk.stamp)
        if not math.isfinite(stamp):
            raise StampError(f"audio stamp {chunk.stamp!r} is not a finite time")
        res = PushResult()
        if x.size == 0:
            self.counters["empty_chunks"] += 1
            return res
        dur = x.size / fmt.sample_rate
        if dur > self.config.max_chunk_seconds:
            raise AudioSizeError(
                f"audio chunk of {dur:.1f} s exceeds audio.max_chunk_seconds="
                f"{self.config.max_chunk_seconds:g}; send it in smaller chunks")
        fmt_key = (fmt.sample_rate, fmt.channels, fmt.sample_format.upper())
        if self._fmt is not None and fmt_key != (self._fmt.sample_rate, self._fmt.channels,
                                                 self._fmt.sample_format.upper()):
            self._rate_hist.clear()
        self._check_rate(stamp, dur, fmt)
        # Pace history: every chunk in stamp order, even one refused below for overlapping
        # (with a wrong declared rate, chunks overlap): it is about the stamps, not about what
        # gets buffered. A chunk stamped before the last one (late, reordered) says nothing.
        if not self._rate_hist or stamp >= self._rate_hist[-1][0]:
            self._rate_hist.append((stamp, dur))

        if self.epoch < 0:
            self._new_epoch(stamp, fmt, "start")
        else:
            delta = stamp - self.input_end_time
            if delta < -self.config.clock_reset_seconds:
                self._new_epoch(stamp, fmt, "clock_reset")
                res.discontinuity = "clock_reset"
            elif delta > self.config.max_gap_fill_seconds:
                self._new_epoch(stamp, fmt, "clock_jump")
                res.discontinuity = "clock_jump"
            elif delta < -self.config.stamp_tolerance_seconds:
                if stamp + dur <= self.input_end_time + self.config.stamp_tolerance_seconds:
                    raise StampError(
                        f"audio chunk [{stamp:.3f}, {stamp + dur:.3f}] s is older than the "
                        f"buffered audio (ends at {self.input_end_time:.3f} s): out-of-order "
                        f"or repeated chunk dropped")
                drop = int(round(-delta * fmt.sample_rate))
                x = x[drop:]
                res.trimmed = drop / fmt.sample_rate
                self.counters["overlaps"] += 1
                self.counters["overlap_trimmed_s"] += res.trimmed
            elif delta > self.config.stamp_tolerance_seconds:
                self._flush_resampler()
                gap = int(round((stamp - self.t_end) * SAMPLE_RATE))
                if gap > 0:
                    self._append(np.zeros(gap, np.float32))
                    res.gap_filled = gap / SAMPLE_RATE
                    res.samples += gap
                    self.counters["gaps"] += 1
                    self.counters["gap_fill_s"] += res.gap_filled
                self._start_segment(stamp, fmt)
            if self._fmt is not None and fmt_key != (self._fmt.sample_rate, self._fmt.channels,
                                                     self._fmt.sample_format.upper()):
                self._flush_resampler()
                self.counters["format_changes"] += 1
                self._start_segment(stamp, fmt)
        if not self._rs.exact and self._rs.n_in == 0:
            self.counters["approx_resample_segments"] += 1  # a segment at an approximate ratio
        y = self._rs.push(x)
        self._append(y)
        res.samples += y.size
        self.counters["chunks"] += 1
        self.counters["seconds_in"] += dur
        return res

    def flush(self) -> None:
        """End of stream: emit the resampler's held-back tail."""
        if self._rs is not None and self._fmt is not None:
            fmt, t = self._fmt, self.input_end_time
            self._flush_resampler()
            self._start_segment(t, fmt)

    def reset(self) -> None:
        """Forget everything (a new stream)."""
        self.__init__(self.config, self.on_discontinuity)


def read_wav_16k(path: str | Path) -> np.ndarray:
    """A WAV file -> mono float32 at 16 kHz (polyphase resampling)."""

    sr, x = wavfile.read(str(path))
    if x.dtype.kind == "i":
        x = x.astype(np.float32) / np.iinfo(x.dtype).max
    elif x.dtype.kind == "u":
        x = (x.astype(np.float32) - 128) / 128
    x = x.astype(np.float32)
    if x.ndim == 2:
        x = x.mean(1)
    if sr != SAMPLE_RATE:
        g = math.gcd(sr, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, sr // g).astype(np.float32)
    return x
