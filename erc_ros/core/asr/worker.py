"""The recognizer on its own thread behind a bounded queue of speech segments."""
from __future__ import annotations

import collections
import logging
import math
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from .whisper import SAMPLE_RATE, AsrResult, WhisperRecognizer

log = logging.getLogger("erc_ros.asr")


@dataclass
class SegmentResult:
    """One submitted segment, transcribed (or failed: ``result.error`` set, text empty)."""

    segment_id: Any
    start: float  #: the segment's span on the caller's clock, as submitted
    end: float
    result: AsrResult
    submitted: float  #: wall clock (time.monotonic) of submit / of the result
    done: float

    @property
    def latency(self) -> float:
        """Seconds from submit to result (queueing + transcription)."""
        return self.done - self.submitted


_STOP = object()


class AsrWorker:
    """A recognizer on its own thread behind a bounded queue of segments.

    ``submit`` never blocks: it returns False when ``max_queue`` segments already wait (the
    caller counts it and emits the speech without text). Finished results are collected
    with ``results()``, non-blocking. A transcription that raises is counted in ``errors``
    and still yields a result (empty text, ``result.error`` set): every accepted segment
    comes out exactly once."""

    def __init__(self, recognizer: WhisperRecognizer, max_queue: Optional[int] = None,
                 latency_window: int = 1000, on_done: Optional[Any] = None):
        self.recognizer = recognizer
        self.max_queue = int(max_queue or recognizer.config.max_queue)
        if self.max_queue < 1:
            raise ValueError("max_queue must be >= 1")
        self._queue: queue.Queue = queue.Queue(maxsize=self.max_queue)
        self._done: collections.deque[SegmentResult] = collections.deque()
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._latencies: collections.deque[float] = collections.deque(maxlen=latency_window)
        #: Of each latency: seconds waited behind other decodes, and the decode's own.
        self._waits: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._computes: collections.deque[float] = collections.deque(maxlen=latency_window)
        self._counts = {"submitted": 0, "done": 0, "refused_full": 0, "errors": 0,
                        "dropped_at_close": 0, "degraded": 0}
        self._busy = 0
        self._audio_seconds = 0.0
        self._compute_seconds = 0.0
        self._closed = False
        #: Called (no arguments, on the worker's thread) after each result is ready.
        self.on_done = on_done
        self._thread = threading.Thread(target=self._run, name="erc-asr-worker", daemon=True)
        self._thread.start()

    def submit(self, segment_id: Any, audio16k: np.ndarray, start: float, end: float,
               prompt: str = "") -> bool:
        """Queue a speech segment (16 kHz mono; ``start``/``end`` on the caller's clock, the
        words come back on it; ``prompt``: what was said before it). False when the queue
        is full or the worker is closed."""
        item = (segment_id, np.array(audio16k, copy=True), float(start), float(end),
                time.monotonic(), str(prompt))
        with self._lock:
            if self._closed:
                return False
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._counts["refused_full"] += 1
                return False
            self._counts["submitted"] += 1
            self._busy += 1
        return True

    def results(self) -> list[SegmentResult]:
        """The results finished since the last call, in completion order (non-blocking)."""
        with self._lock:
            out = list(self._done)
            self._done.clear()
        return out

    def pending(self) -> int:
        """Segments accepted and not finished yet (waiting or being transcribed)."""
        with self._lock:
            return self._busy

    def wait_idle(self, timeout: Optional[float] = None) -> bool:
        """Block until every accepted segment is finished; False on timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: self._busy == 0, timeout)

    def stats(self) -> dict:
        """Counts (submitted, done, refused_full, errors, degraded, pending; refit with window
        fit), submit -> result
        latency p50/p95 in ms over the last ``latency_window`` segments and its two parts
        (``wait``: behind the decodes before it; ``decode``: its own), and the realtime
        factor: audio seconds / compute seconds of the successful transcriptions (> 1:
        faster than real time)."""

        def pct(values, q) -> float:
            return float(np.percentile(values, q) * 1e3) if len(values) else math.nan

        with self._lock:
            out = dict(self._counts)
            if self.recognizer.config.window == "fit":
                out["refit"] = self.recognizer.refits
            if self.recognizer.config.fallback == "beam":
                out["fallback"] = self.recognizer.fallbacks
            out.update(
                pending=self._busy, queue_capacity=self.max_queue,
                latency_p50_ms=pct(self._latencies, 50),
                latency_p95_ms=pct(self._latencies, 95),
                wait_p50_ms=pct(self._waits, 50), wait_p95_ms=pct(self._waits, 95),
                decode_p50_ms=pct(self._computes, 50), decode_p95_ms=pct(self._computes, 95),
                audio_seconds=self._audio_seconds, compute_seconds=self._compute_seconds,
                realtime_factor=(self._audio_seconds / self._compute_seconds
                                 if self._compute_seconds > 0 else math.nan))
        return out

    def close(self, timeout: Optional[float] = None, drop_pending: bool = False) -> int:
        """Stop the thread and join it; returns how many accepted segments were dropped.

        By default every accepted segment is finished first. ``drop_pending``: the segments
        still waiting are dropped (no result; counted in ``dropped_at_close``) and only the
        one being transcribed is finished. ``timeout``: give up waiting after that long (the
        thread is a daemon; :attr:`alive` says whether it still runs)."""
        dropped = 0
        with self._lock:
            stop, self._closed = not self._closed, True
            if drop_pending:
                while True:
                    try:
                        item = self._queue.get_nowait()
                    except queue.Empty:
                        break
                    if item is _STOP:
                        continue
                    dropped += 1
                self._busy -= dropped
                self._counts["dropped_at_close"] += dropped
                self._idle.notify_all()
        if stop or drop_pending:
            try:
                self._queue.put(_STOP, timeout=timeout)  # after every segment left
            except queue.Full:
                log.warning("AsrWorker.close: the queue stayed full for %s s", timeout)
                return dropped
        self._thread.join(timeout)
        return dropped

    @property
    def alive(self) -> bool:
        """Whether the recognizer's thread still runs (a transcription in native code)."""
        return self._thread.is_alive()

    def __enter__(self) -> "AsrWorker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            segment_id, audio, start, end, submitted, prompt = item
            t0, began = time.perf_counter(), time.monotonic()
            backlog = int(self.recognizer.config.degrade_backlog)
            fast = 0 < backlog <= self._queue.qsize()  # waiting behind this one
            try:
                result = self.recognizer.transcribe(audio, offset=start, fast=fast,
                                                    prompt=prompt)
                failed = False
            except Exception as e:  # counted; the segment still comes out, without text
                log.warning("ASR failed on segment %r: %r", segment_id, e)
                result = AsrResult.empty(audio.size / SAMPLE_RATE if audio.ndim == 1 else 0.0,
                                         compute_seconds=time.perf_counter() - t0,
                                         error=f"{type(e).__name__}: {e}")
                failed = True
            done = time.monotonic()
            with self._lock:
                self._done.append(SegmentResult(segment_id, start, end, result, submitted, done))
                self._counts["done"] += 1
                self._counts["errors"] += failed
                self._counts["degraded"] += fast
                self._latencies.append(done - submitted)
                self._waits.append(began - submitted)
                self._computes.append(done - began)
                if not failed:
                    self._audio_seconds += result.audio_seconds
                    self._compute_seconds += result.compute_seconds
                self._busy -= 1
                self._idle.notify_all()
            if self.on_done is not None:
                try:
                    self.on_done()
                except Exception as e:  # the caller's hook must not stop the worker
                    log.warning("AsrWorker on_done hook failed: %r", e)
