"""Continuous per-face expressions: which face crop to classify when, and what a class
distribution says.

The ROS4HRI face-expression node (:mod:`erc_ros.ros.face_expression_node`) receives every
tracked face's crops at camera rate but classifies each face at most ``rate`` times a
second. :class:`FaceSchedule` keeps only the newest crop of each face (an older one not yet
classified is replaced, never queued: no backlog whatever the camera rate) and hands out the
faces that are due. :func:`summarize` turns the face expert's distribution into what an
``hri_msgs/Expression`` carries. No rclpy here: times are float seconds of whatever clock the
caller uses (the node's ROS clock, so ``use_sim_time`` applies).
"""
from __future__ import annotations

import threading
from typing import Any, Sequence

import numpy as np


class FaceSchedule:
    """The newest pending crop of each known face, and when each face is next due.

    A face is due when it has a pending crop and was last handed out at least ``1 / rate``
    seconds ago (or never, or the clock went backwards: a bag replayed again). Only faces
    :meth:`add`-ed are kept, so a late crop of a face that was just forgotten is ignored.
    Thread-safe: subscription callbacks :meth:`offer`, one worker :meth:`take_due`."""

    def __init__(self, rate: float):
        if not rate > 0:
            raise ValueError(f"rate {rate!r}: classifications per second must be > 0")
        self.period = 1.0 / float(rate)
        self._lock = threading.Lock()
        self._pending: dict[str, Any] = {}
        self._last: dict[str, float] = {}  # face -> when its last crop was handed out
        self._known: set[str] = set()
        self.superseded = 0  # pending crops replaced by a newer one before their turn

    def add(self, face: str) -> None:
        with self._lock:
            self._known.add(face)

    def forget(self, face: str) -> None:
        with self._lock:
            self._known.discard(face)
            self._pending.pop(face, None)
            self._last.pop(face, None)

    def clear(self) -> None:
        with self._lock:
            self._known.clear()
            self._pending.clear()
            self._last.clear()

    def _due(self, face: str, now: float) -> bool:
        last = self._last.get(face)
        return last is None or now - last >= self.period or now < last

    def offer(self, face: str, item: Any, now: float) -> bool:
        """Keep ``item`` as ``face``'s newest crop; True when the face is due at ``now`` (the
        caller may wake the worker), False when it must wait or is unknown."""
        with self._lock:
            if face not in self._known:
                return False
            if face in self._pending:
                self.superseded += 1
            self._pending[face] = item
            return self._due(face, now)

    def take_due(self, now: float) -> list[tuple[str, Any]]:
        """``(face, newest crop)`` of every due face, removed from the pending ones; each
        face's next turn starts at ``now``."""
        with self._lock:
            out = [(f, item) for f, item in self._pending.items() if self._due(f, now)]
            for f, _ in out:
                del self._pending[f]
                self._last[f] = now
            return out

    def pending(self) -> int:
        with self._lock:
            return len(self._pending)


def summarize(probabilities: Sequence[float], labels: Sequence[str],
              valence_arousal: np.ndarray) -> tuple[str, float, float, float]:
    """``(label, confidence, valence, arousal)`` of one class distribution: the most probable
    label, its probability, and the distribution's expected valence and arousal under the
    per-class table ``valence_arousal`` ([C, 2], rows in ``labels`` order), as the pipeline
    computes an estimate's ``face_valence`` / ``face_arousal``."""
    p = np.asarray(probabilities, np.float64)
    k = int(np.argmax(p))
    valence, arousal = (p @ np.asarray(valence_arousal, np.float64)).tolist()
    return str(labels[k]), float(p[k]), float(valence), float(arousal)
