"""The face-expression expert inside the perception core: the faces detected while a person
speaks are classified then (off the close path), and when an utterance closes the speaker's
readable faces are averaged into its distribution, behind a quality gate.

:class:`FaceExpressions` owns the expert's counters and latency window; the core hands it
the frames (:meth:`FaceExpressions.classify`) and, per utterance, the frames chosen and the
speaker's face (:meth:`FaceExpressions.of_utterance`).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from .config import FaceConfig
from .faces import TOO_SMALL, crop, normalized_entropy, unreadable
from .types import (FACE_CLASSES, FACE_DISABLED, FACE_ERROR, FACE_NO_CAMERA, FACE_NOT_SEEN,
                    FACE_SEEN, FACE_UNCERTAIN)


class FaceExpressions:
    """``expert``: the face-expression expert (``labels`` == :data:`FACE_CLASSES`,
    ``predict(crops) -> (n, 7)`` probabilities), or None (every utterance's face_status is
    ``disabled``). ``on_time(stage, seconds)``: time spent classifying at close."""

    def __init__(self, config: FaceConfig, expert=None,
                 on_time: Optional[Callable[[str, float], None]] = None):
        if expert is not None and tuple(expert.labels) != FACE_CLASSES:
            raise ValueError(f"the face expert's classes {tuple(expert.labels)} are "
                             f"not {FACE_CLASSES}")
        self.config, self.expert = config, expert
        self._on_time = on_time or (lambda stage, seconds: None)
        self.counters = {"calls": 0, "crops": 0, "errors": 0,
                         "utterances": {},  # face_status -> utterances
                         # why utterances were "uncertain" (the quality gate)
                         "uncertain": {"small": 0, "blurred": 0, "undecided": 0}}
        self._ms: deque = deque(maxlen=500)  # ms per expert call

    def classify(self, frames) -> None:
        """The expert on every face box of ``frames`` not yet classified (one call); the
        probabilities are kept on each frame (``expressions``), with the quality gate's
        verdict on each box (``unreadable``). A failure is counted and logged (first one),
        and leaves the frames unclassified."""
        fc = self.config
        todo = [f for f in {id(f): f for f in frames}.values()
                if f.boxes is not None and f.expressions is None]
        crops = [crop(f.image, b, fc.size, fc.expression_margin) for f in todo
                 for b in f.boxes]
        if not crops:
            for f in todo:
                f.expressions = np.zeros((0, len(FACE_CLASSES)), np.float32)
            return
        t = time.perf_counter()
        try:
            probs = np.asarray(self.expert.predict(crops), np.float32)
        except Exception as e:  # the utterance still comes out, face_status "error"
            self.counters["errors"] += 1
            if self.counters["errors"] == 1:
                logging.getLogger("erc_ros.perception").error(
                    "face-expression expert failed (counted; utterances get face_status "
                    "'error'): %r", e)
            return
        self._ms.append(1000 * (time.perf_counter() - t))
        self.counters["calls"] += 1
        self.counters["crops"] += len(crops)
        i = 0
        for f in todo:
            f.expressions = probs[i:i + len(f.boxes)]
            f.unreadable = [unreadable(f.image, b, fc.expression_min_pixels,
                                       fc.expression_min_sharpness) for b in f.boxes]
            i += len(f.boxes)

    def of_utterance(self, chosen, sel) -> tuple[str, int, Optional[np.ndarray]]:
        """(face_status, crops averaged, mean probabilities or None) of an utterance whose
        frames were ``chosen`` and whose speaker's face is ``sel``. Faces detected while the
        person spoke were classified then; only those detected at close are classified
        here. The quality gate: only readable detections are averaged, and a face whose
        detections are unreadable at least half the time is "uncertain" (small or blurred),
        as is a mean too undecided (``faces.expression_max_entropy``)."""
        if self.expert is None:
            return FACE_DISABLED, 0, None
        if not chosen:
            return FACE_NO_CAMERA, 0, None
        if not sel.keys:
            return FACE_NOT_SEEN, 0, None
        t = time.perf_counter()
        self.classify([f for f, _ in sel.keys])
        self._on_time("expression_close", time.perf_counter() - t)
        rows, why = [], []
        for f, i in sel.keys:
            if f.expressions is None or i >= len(f.expressions):
                continue
            reason = f.unreadable[i] if f.unreadable is not None else ""
            if reason:
                why.append(reason)
            else:
                rows.append(f.expressions[i])
        gate = self.counters["uncertain"]
        if why and len(why) >= len(rows):  # a face, but mostly unreadable: not trusted
            gate["small" if why.count(TOO_SMALL) * 2 >= len(why) else "blurred"] += 1
            return FACE_UNCERTAIN, 0, None
        if not rows:
            return FACE_ERROR, 0, None
        mean = np.mean(rows, axis=0).astype(np.float32)
        if normalized_entropy(mean) > self.config.expression_max_entropy:
            gate["undecided"] += 1
            return FACE_UNCERTAIN, 0, None
        return FACE_SEEN, len(rows), mean

    def count(self, status: str) -> None:
        """One utterance came out with ``status``."""
        by_status = self.counters["utterances"]
        by_status[status] = by_status.get(status, 0) + 1

    def stats(self) -> dict:
        """Enabled, the expert's backend, calls, crops, errors, latency per call (ms
        p50/p95, over the last 500), utterances per face_status and why the "uncertain"
        ones were (small / blurred face, undecided distribution)."""
        c = self.counters
        out = {"enabled": self.expert is not None, "calls": c["calls"],
               "crops": c["crops"], "errors": c["errors"], "utterances": dict(c["utterances"]),
               "uncertain": dict(c["uncertain"])}
        if self.expert is not None:
            out["backend"] = getattr(self.expert, "backend", "")
        ms = np.asarray(self._ms) if self._ms else np.zeros(0)
        out["latency_p50_ms"] = float(np.percentile(ms, 50)) if ms.size else None
        out["latency_p95_ms"] = float(np.percentile(ms, 95)) if ms.size else None
        return out
