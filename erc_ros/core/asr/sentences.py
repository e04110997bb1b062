"""Sentences in recognized text: where one ends, where a run of words is cut, whether text
holds a word at all. The one rule of the node's cuts and of the training data's views."""
from __future__ import annotations

from typing import Sequence

#: Closing quotes and brackets that may follow a sentence's last mark.
_CLOSERS = "\"')]}\u201d\u2019"


def ends_sentence(text: str) -> bool:
    """Whether recognized ``text`` ends a sentence: its last mark (past closing quotes and
    brackets) is ``.``, ``?`` or ``!``, and not an ellipsis (``...``, ``\u2026``: Whisper's
    mark for speech that trails off or was cut)."""
    t = text.rstrip().rstrip(_CLOSERS).rstrip()
    return bool(t) and t[-1] in ".?!" and not t.endswith("..")


def sentence_cuts(words: Sequence[str]) -> list[int]:
    """Where a run of recognized words is cut into sentences: each index ``i`` (1 to
    ``len(words) - 1``) whose word before ends a sentence (:func:`ends_sentence`), so that
    ``words[:i]`` ends one and more words follow. The one rule of the node's cuts
    (``segmentation.split_sentences``, the cut while the speech goes on) and of the
    training data's ``sentences`` view (``robot_view``)."""
    return [i for i in range(1, len(words)) if ends_sentence(words[i - 1])]


def has_words(text: str) -> bool:
    """Whether recognized ``text`` holds a word at all (not only marks: Whisper's ". . . ."
    over a tone)."""
    return any(c.isalnum() for c in text)
