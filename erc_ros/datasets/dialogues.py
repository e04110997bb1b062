"""A conversation corpus as a list of :class:`Dialogue`: core ``Utterance`` objects with an
integer label each (-1 = unlabelled, context only) and, where loaded, where each utterance's
media are (:class:`MediaRef`). Models never know which corpus they see: MELD, EmoryNLP,
IEMOCAP, GoEmotions (and bag ground truth) all become dialogues."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from erc_ros.core.types import Utterance


@dataclass(frozen=True)
class MediaRef:
    """Where one utterance's audio and video are: a clip (``video``: MELD.Raw's mp4, whole)
    and/or a WAV, or a span [start, end] s of a longer recording (IEMOCAP's dialogue AVI)."""

    video: Optional[Path] = None
    wav: Optional[Path] = None
    start: Optional[float] = None  # None: the whole file
    end: Optional[float] = None


@dataclass
class Dialogue:
    conversation_id: str
    utterances: list[Utterance]
    labels: list[int] = field(default_factory=list)
    media: list[Optional[MediaRef]] = field(default_factory=list)  # [] or one per utterance

    def __len__(self) -> int:
        return len(self.utterances)


def clean_text(text: str) -> str:
    """A corpus's utterance text with its whitespace collapsed and the mis-decoded characters
    of MELD's CSV (cp1252 read as latin-1) put right."""
    for a, b in (("\x92", "'"), ("\x93", '"'), ("\x94", '"'), ("\x97", "-"), ("\x85", "...")):
        text = text.replace(a, b)
    return " ".join(text.split())


def class_counts(dialogues: Sequence[Dialogue], num_classes: int) -> np.ndarray:
    c = Counter(l for d in dialogues for l in d.labels if l >= 0)
    return np.asarray([c.get(i, 0) for i in range(num_classes)], np.int64)


def class_weights(counts: np.ndarray, power: float) -> np.ndarray:
    """Inverse-frequency weights ``(n / n_c) ** power`` normalised to mean 1 over the
    training samples (power 0 = unweighted, 1 = fully balanced)."""
    counts = np.maximum(np.asarray(counts, np.float64), 1)
    w = (counts.sum() / counts) ** power
    return (w / (w * counts).sum() * counts.sum()).astype(np.float32)
