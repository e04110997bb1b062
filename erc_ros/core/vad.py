"""Streaming voice activity: silero-vad run incrementally, and a hysteresis segmenter.

:class:`SileroVad` runs the packaged silero-vad ONNX model directly with onnxruntime (no
torch), one 512-sample window (32 ms at 16 kHz) at a time, carrying the model's recurrent
state and 64-sample context exactly as silero's own ``OnnxWrapper`` does. Each window is
processed once, as audio arrives: nothing is re-run over the buffer.

:class:`VadSegmenter` turns the per-window probabilities into speech segments with a start
threshold, a lower end threshold, a silence hang-over, a minimum length and a maximum
length (a longer run of speech is cut there).
"""
from __future__ import annotations

import importlib.util
import os
from collections import deque
from dataclasses import dataclass
from typing import Optional

import numpy as np

from .config import VadConfig
from .types import SAMPLE_RATE

WINDOW = 512  # samples per silero window at 16 kHz
CONTEXT = 64


def silero_model_path(name: str = "silero_vad_16k_sequence.onnx") -> str:
    """Path of a silero-vad ONNX model inside its package (found without importing it,
    since the package's ``__init__`` imports torch)."""
    spec = importlib.util.find_spec("silero_vad")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("silero-vad is not installed (pip install -r requirements.txt)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", name)
    if not os.path.exists(path):
        raise RuntimeError(f"silero-vad model not found at {path}")
    return path


class SileroVad:
    """silero-vad on 16 kHz audio, streaming, many 512-sample windows per ONNX call.

    Uses the package's "sequence" export (silero-vad PR 784): the same network as the
    one-window model, bit-exact per window, but one call runs a block of windows with the
    LSTM state carried inside the graph, so a poll costs one call instead of one per 32 ms.
    Recurrent state and the 64-sample context are carried between calls.
    """

    def __init__(self, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # the export has unused initialisers ORT warns about
        self._session = ort.InferenceSession(silero_model_path(), opts,
                                             providers=["CPUExecutionProvider"])
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), np.float32)
        self._c = np.zeros((1, 1, 128), np.float32)
        self._context = np.zeros(CONTEXT, np.float32)

    def run(self, windows: np.ndarray) -> np.ndarray:
        """Speech probability of each row of ``windows`` (n, 512), in stream order."""
        windows = np.asarray(windows, np.float32).reshape(-1, WINDOW)
        if windows.shape[0] == 0:
            return np.zeros(0, np.float32)
        ctx = np.empty((windows.shape[0], CONTEXT), np.float32)
        ctx[0] = self._context
        ctx[1:] = windows[:-1, -CONTEXT:]
        probs, self._h, self._c = self._session.run(
            ["speech_probs", "hn", "cn"],
            {"input": np.concatenate([ctx, windows], axis=1), "h": self._h, "c": self._c})
        self._context = windows[-1, -CONTEXT:].copy()
        return np.asarray(probs, np.float32).reshape(-1)

    def __call__(self, window: np.ndarray) -> float:
        return float(self.run(window[None, :])[0])


@dataclass
class SpeechSegment:
    start: float
    end: float
    forced_cut: bool = False  # ended by max length, not by silence
    #: Speech the VAD is not sure of: it never reached ``threshold`` or lasted less than
    #: ``min_speech_seconds`` (only where the segmenter keeps weak speech). The
    #: perception core keeps such a segment only where its recognizer hears words in it.
    weak: bool = False


class VadSegmenter:
    """Hysteresis over window probabilities -> speech segments (times in seconds).

    Feed ``(t_window_start, prob)`` in time order. ``config`` (:class:`VadConfig`) sets
    it: a segment starts when ``prob >= threshold`` and ends after ``min_silence_seconds``
    of ``prob < neg_threshold``; it is padded by ``pad_seconds`` on both sides, dropped if
    shorter than ``min_speech_seconds`` and cut at ``max_speech_s``.

    Weak speech (``weak``; the core asks for it where a recognizer can confirm it): a
    segment already opens at ``weak_threshold`` (kept within [neg_threshold, threshold]),
    and one down to ``min_weak_speech_seconds`` is kept. A segment that never reached
    ``threshold`` or is shorter than ``min_speech_seconds`` comes out ``weak``, widened into
    the quiet around it to ``weak_widen_seconds`` (never back into the segment before it,
    nor past the quiet seen after it): a one-word turn in a reverberant, noisy room ("Ooh!"
    at 0.40, "Ow!" above 0.5 for 0.13 s) is more than the few windows the model is sure of,
    and the recognizer reads it only whole.
    """

    def __init__(self, config: Optional[VadConfig] = None, max_speech_s: float = 15.0,
                 weak: bool = False):
        self.config = c = config or VadConfig()
        self.max_speech_s = max_speech_s
        # where speech opens: weak_threshold, within [neg_threshold, threshold]
        self.onset_threshold = min(max(c.weak_threshold, c.neg_threshold), c.threshold) \
            if weak else c.threshold
        self.min_weak_s = min(c.min_weak_speech_seconds, c.min_speech_seconds) if weak \
            else c.min_speech_seconds
        self.widen_s = c.weak_widen_seconds if weak else 0.0
        self._last_end: Optional[float] = None  # end of the last segment given out
        self.reset()

    def reset(self) -> None:
        self.open_start: Optional[float] = None  # start of the segment in progress
        self._silence_start: Optional[float] = None
        self._last_t = None
        self._peak = 0.0  # highest probability of the segment in progress
        self._onset: Optional[float] = None  # the pause's first window at onset_threshold
        #: The last pause inside the segment in progress that speech ended before the
        #: hang-over did: (where it went quiet, the start of the window that resumed it).
        self.resumed: Optional[tuple[float, float]] = None

    @property
    def in_speech(self) -> bool:
        return self.open_start is not None

    @property
    def pause_start(self) -> Optional[float]:
        """Where the speech in progress went quiet (its hang-over is running), else None."""
        return self._silence_start if self.open_start is not None else None

    def segment(self, start: float, end: float,
                horizon: Optional[float] = None) -> Optional[SpeechSegment]:
        """The segment in progress as it closes on ``[start, end]``: None when it is too
        short to keep; weak (and widened, up to ``horizon``: the quiet seen after it) when
        the model was not sure of it. Called by whatever closes it, so that each way a
        segment ends judges it alike."""
        dur = end - start
        if dur < self.min_weak_s:
            return None
        weak = dur < self.config.min_speech_seconds or self._peak < self.config.threshold
        if weak and dur < self.widen_s:
            before = self._last_end if self._last_end is not None and \
                self._last_end <= start else -np.inf
            lo = max(start - (self.widen_s - dur) / 2, before)
            hi = end + (self.widen_s - dur) - (start - lo)
            start, end = lo, max(end, min(hi, end if horizon is None else horizon))
        self._last_end = end
        return SpeechSegment(start, end, weak=weak)

    def _ended(self, at: float, forced_cut: bool = False) -> SpeechSegment:
        """The segment in progress, ended at ``at`` as it stands (a cut: kept whatever its
        length, never widened)."""
        self._last_end = at
        return SpeechSegment(self.open_start, at, forced_cut=forced_cut,
                             weak=self._peak < self.config.threshold)

    def update(self, t: float, prob: float) -> list[SpeechSegment]:
        """One window starting at ``t``; returns segments that closed."""
        dt = WINDOW / SAMPLE_RATE
        self._last_t = t + dt
        out: list[SpeechSegment] = []
        if self.open_start is None:
            if prob >= self.onset_threshold:
                self.open_start = t - self.config.pad_seconds
                self._silence_start = self._onset = self.resumed = None
                self._peak = prob
            return out
        self._peak = max(self._peak, prob)
        c = self.config
        if prob >= c.threshold or (self._silence_start is None and prob >= c.neg_threshold):
            if self._silence_start is not None:
                # where a segment would have opened had the pause closed the one before
                self.resumed = (self._silence_start, self._onset if self._onset is not None
                                else t)
            self._silence_start = self._onset = None
        elif self._silence_start is None:
            self._silence_start = t
        elif self._onset is None and prob >= self.onset_threshold:
            self._onset = t
        if self._silence_start is not None and t + dt - self._silence_start >= \
                c.min_silence_seconds:
            seg = self.segment(self.open_start, self._silence_start + c.pad_seconds, t + dt)
            self.open_start = None
            self._silence_start = self._onset = None
            if seg is not None:
                out.append(seg)
        elif t + dt - self.open_start >= self.max_speech_s:
            out.append(self._ended(t + dt, forced_cut=True))
            self.open_start = t + dt
            self._silence_start = self.resumed = None
        return out

    def split_open(self, at: float, resume: float) -> SpeechSegment:
        """End the segment in progress at ``at`` and go on with one that opened at
        ``resume`` (the speech after a pause, already seen); returns the ended one."""
        seg = self._ended(at)
        self.open_start = resume
        self.resumed = None
        self._peak = self.config.threshold  # what resumed it reached the threshold
        return seg

    def cut_open(self, at: float) -> SpeechSegment:
        """End the segment in progress at ``at`` (as it stands: kept whatever its length)
        and start afresh. Where a window of the pause already reached the onset threshold
        (the speech coming back), a segment opens there (padded, not before ``at``), as it
        would have had the pause closed the one before that window: the same start as
        :meth:`split_open` gives when the cut comes after the speech resumed."""
        onset, last_t = self._onset, self._last_t
        seg = self._ended(at)
        self.reset()
        self._last_t = last_t
        if onset is not None:
            self.open_start = max(onset - self.config.pad_seconds, at)
            self._peak = self.onset_threshold
        return seg

    def close(self) -> list[SpeechSegment]:
        """End of stream: close the open segment at the last window."""
        if self.open_start is None or self._last_t is None:
            self.reset()
            return []
        end = self._silence_start + self.config.pad_seconds \
            if self._silence_start is not None else self._last_t
        seg = self.segment(self.open_start, end, self._last_t)
        self.reset()
        return [seg] if seg is not None else []


class StreamingVad:
    """Runs :class:`SileroVad` over an :class:`~erc_ros.core.audio_buffer.AudioBuffer` as it
    fills, keeping a bounded history of window probabilities for later queries."""

    def __init__(self, config: Optional[VadConfig] = None, max_speech_s: float = 15.0,
                 weak: bool = False, history_s: float = 120.0):
        """``config``, ``max_speech_s``, ``weak``: its :class:`VadSegmenter`'s; silero runs
        on ``config.threads``; ``history_s``: window probabilities kept."""
        config = config or VadConfig()
        self.model = SileroVad(threads=config.threads)
        self.segmenter = VadSegmenter(config, max_speech_s, weak)
        self.next_index = 0  # absolute 16 kHz index of the next window to run
        self.probs: deque = deque(maxlen=int(history_s * SAMPLE_RATE / WINDOW))  # (t, prob)
        #: (index after the window that opened it, start time) of each speech segment
        #: opened, in order: what the VAD knew when (the speaker embedder places its windows
        #: by it, the same however the audio was batched into process() calls).
        self.onsets: deque = deque(maxlen=1024)
        self.windows = 0

    def reset(self, next_index: int = 0) -> None:
        self.model.reset()
        self.segmenter.reset()
        self.next_index = next_index
        self.probs.clear()
        self.onsets.clear()

    # -- what the rest of the core may know of, and do to, the segmenter ---------------
    @property
    def open_start(self) -> Optional[float]:
        """Start of the speech segment in progress (padded), else None."""
        return self.segmenter.open_start

    @property
    def in_speech(self) -> bool:
        return self.segmenter.in_speech

    @property
    def pause_start(self) -> Optional[float]:
        """Where the speech in progress went quiet (its hang-over running), else None."""
        return self.segmenter.pause_start

    def processed_until(self, buffer) -> float:
        """Time of the next window to run: the VAD has looked at the audio before it."""
        return buffer.time_of(self.next_index)

    def cut_open(self, at: float) -> SpeechSegment:
        """End the speech segment in progress at ``at`` and return it (an ASR result
        finalised before the hang-over ended); the segmenter starts afresh, so speech that
        goes on opens a new segment."""
        if self.segmenter.open_start is None:
            raise RuntimeError("cut_open: no speech segment in progress")
        seg = self.segmenter.cut_open(at)
        if self.segmenter.open_start is not None:  # the speech had come back already
            self.onsets.append((self.next_index, self.segmenter.open_start))
        return seg

    @property
    def resumed(self) -> Optional[tuple[float, float]]:
        """The last pause in the speech in progress that speech ended before the hang-over
        did: (where it went quiet, the start of the window that resumed it), else None."""
        return self.segmenter.resumed if self.segmenter.open_start is not None else None

    def split_open(self, at: float, resume: float) -> SpeechSegment:
        """End the speech segment in progress at ``at``, a pause it went on after, and go on
        with a segment from ``resume`` (padded), as if the VAD had closed it at that pause
        and opened another where the speech came back; returns the ended one."""
        if self.segmenter.open_start is None:
            raise RuntimeError("split_open: no speech segment in progress")
        start = resume - self.segmenter.config.pad_seconds
        seg = self.segmenter.split_open(at, start)
        self.onsets.append((self.next_index, start))
        return seg

    def close(self) -> list[SpeechSegment]:
        """End of stream (or epoch): close the segment in progress at the last window."""
        return self.segmenter.close()

    def process(self, buffer) -> list[SpeechSegment]:
        """Run every complete window the buffer holds beyond what was already run."""
        out: list[SpeechSegment] = []
        if self.next_index < buffer.n_start:  # fell behind the ring: skip what is gone
            self.next_index = buffer.n_start
        n = (buffer.n_end - self.next_index) // WINDOW
        for k0 in range(0, n, 512):  # blocks of at most ~16 s per ONNX call
            k = min(512, n - k0)
            audio = buffer.read_index(self.next_index, self.next_index + k * WINDOW)
            probs = self.model.run(audio.reshape(k, WINDOW))
            for j, p in enumerate(probs):
                t = buffer.time_of(self.next_index + j * WINDOW)
                self.probs.append((t, float(p)))
                opened = self.segmenter.open_start
                out.extend(self.segmenter.update(t, float(p)))
                if self.segmenter.open_start is not None and self.segmenter.open_start != opened:
                    self.onsets.append((self.next_index + (j + 1) * WINDOW,
                                        self.segmenter.open_start))
            self.next_index += k * WINDOW
            self.windows += k
        return out

    def speech_ratio(self, t0: float, t1: float) -> float:
        """Fraction of windows in [t0, t1) above the segmenter's threshold."""
        vals = [p for t, p in self.probs if t0 <= t < t1]
        return speech_ratio_of(vals, self.segmenter.config.threshold)

    def activity(self, times: np.ndarray) -> np.ndarray:
        """Speech probability at each of ``times`` (nearest window; 0 outside history)."""
        ts = np.fromiter((t for t, _ in self.probs), float, len(self.probs))
        ps = np.fromiter((p for _, p in self.probs), float, len(self.probs))
        return activity_at(ts, ps, times)


def speech_ratio_of(probs, threshold: float) -> float:
    """Fraction of window probabilities ``probs`` at or above ``threshold`` (0 for none)."""
    probs = np.asarray(probs, float)
    return float(np.mean(probs >= threshold)) if probs.size else 0.0


def activity_at(ts: np.ndarray, ps: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Speech probability at each of ``times`` from windows starting at ``ts`` (sorted) with
    probabilities ``ps``: the window each time falls in; 0 outside them."""
    times = np.asarray(times, float)
    if len(ts) == 0:
        return np.zeros(len(times))
    idx = np.clip(np.searchsorted(ts, times) - 1, 0, len(ts) - 1)
    inside = (times >= ts[0]) & (times < ts[-1] + WINDOW / SAMPLE_RATE)
    return np.where(inside, ps[idx], 0.0)


def clip_probabilities(model: SileroVad, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window start times in s from the clip's start, speech probabilities) of a whole 16 kHz
    clip, its complete windows in order, as :class:`StreamingVad` computes them live (the
    model's state is reset first: a clip is a stream of its own)."""
    model.reset()
    wav = np.asarray(wav, np.float32).reshape(-1)
    n = wav.size // WINDOW
    probs = [model.run(wav[k0 * WINDOW:min(n, k0 + 512) * WINDOW])
             for k0 in range(0, n, 512)]  # blocks of at most ~16 s per ONNX call
    ps = np.concatenate(probs) if probs else np.zeros(0, np.float32)
    return np.arange(n) * WINDOW / SAMPLE_RATE, ps.astype(float)
