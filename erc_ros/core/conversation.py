"""Conversation context: a bounded window of past utterances per conversation id.

The emotion side (``erc_ros.runtime.pipeline``) keeps one :class:`ConversationHistory` and
asks it for the context of each new utterance; the perception core keeps one too (its
``stats()`` report what it holds).

It keeps only what a model reads of a past utterance: :meth:`Utterance.for_context
<erc_ros.core.types.Utterance.for_context>` (ids, speaker, span, text...), never its audio,
face crops or features, which can be hundreds of MB an utterance and which no model reads
again (the pipeline caches its encodings as vectors). Bounded three ways, so a robot running
for days holds constant memory whatever it is sent: ``max_utterances`` per conversation,
``max_conversations`` in all, and ``max_bytes`` for everything it holds (:attr:`nbytes`, as
:func:`utterance_bytes` counts it). Over a bound, the least recently used conversation goes
first, a conversation's oldest utterance first; the utterance just added always stays.
"""
from __future__ import annotations

import sys
from collections import OrderedDict, deque
from typing import Optional

import numpy as np

from .types import Utterance

#: Default ``max_bytes``: about 2,000 utterances of a few sentences each, or 50 of the
#: longest text the emotion node accepts, far above the usual 64 x 16 windows.
DEFAULT_MAX_BYTES = 4 * 2**20


def _sizeof(obj) -> int:
    """Bytes of ``obj`` and of what it holds (numpy data, list, tuple and dict items)."""
    if isinstance(obj, np.ndarray):
        return sys.getsizeof(obj) + (obj.nbytes if obj.base is not None else 0)
    if isinstance(obj, (list, tuple)):
        return sys.getsizeof(obj) + sum(_sizeof(x) for x in obj)
    if isinstance(obj, dict):
        return sys.getsizeof(obj) + sum(_sizeof(k) + _sizeof(v) for k, v in obj.items())
    return sys.getsizeof(obj)


def utterance_bytes(utt: Utterance) -> int:
    """Bytes an utterance holds: the object, its fields' values, their arrays and crops (the
    field names are shared by every utterance)."""
    fields = vars(utt)
    return sys.getsizeof(utt) + sys.getsizeof(fields) + sum(_sizeof(v) for v in fields.values())


class ConversationHistory:
    def __init__(self, max_utterances: int = 20, max_conversations: int = 16,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        if max_utterances < 0:
            raise ValueError("max_utterances must be >= 0")
        if max_bytes < 0:
            raise ValueError("max_bytes must be >= 0")
        self.max_utterances = int(max_utterances)
        self.max_conversations = max(1, int(max_conversations))
        self.max_bytes = int(max_bytes)
        # conversation id -> window of (utterance as kept, its bytes), oldest first
        self._conv: "OrderedDict[str, deque]" = OrderedDict()
        self._bytes: dict[str, int] = {}  # conversation id -> bytes of its window
        self.nbytes = 0  #: bytes of every utterance held (:func:`utterance_bytes`)

    def add(self, utt: Utterance) -> None:
        """Append what a model reads of ``utt`` (:meth:`~Utterance.for_context`) to its
        conversation's window, then drop the oldest over the bounds."""
        cid = utt.conversation_id
        window = self._conv.get(cid)
        if window is None:
            window = self._conv[cid] = deque()
            self._bytes[cid] = 0
            while len(self._conv) > self.max_conversations:
                self._forget(next(iter(self._conv)))
        else:
            self._conv.move_to_end(cid)
        if self.max_utterances == 0:
            return
        kept = utt.for_context()
        size = utterance_bytes(kept)
        window.append((kept, size))
        self._bytes[cid] += size
        self.nbytes += size
        if len(window) > self.max_utterances:
            self._drop_oldest(cid)
        while self.nbytes > self.max_bytes:
            oldest = next(iter(self._conv))  # least recently used; cid is the most recent
            if oldest == cid and len(window) <= 1:
                break  # the utterance just added stays, even alone over max_bytes
            self._drop_oldest(oldest)

    def _drop_oldest(self, cid: str) -> None:
        _, size = self._conv[cid].popleft()
        self._bytes[cid] -= size
        self.nbytes -= size
        if not self._conv[cid]:
            self._forget(cid)

    def _forget(self, cid: str) -> None:
        self._conv.pop(cid, None)
        self.nbytes -= self._bytes.pop(cid, 0)

    def context(self, conversation_id: str) -> list[Utterance]:
        """Past utterances of the conversation as kept (:meth:`~Utterance.for_context`),
        oldest first (at most ``max_utterances``)."""
        return [u for u, _ in self._conv.get(conversation_id, ())]

    def count(self, conversation_id: str) -> int:
        """How many utterances of the conversation are held."""
        return len(self._conv.get(conversation_id, ()))

    def speakers(self, conversation_id: str) -> list[str]:
        """Speaker ids in the window, in order of first appearance."""
        seen: dict[str, None] = {}
        for u, _ in self._conv.get(conversation_id, ()):
            seen.setdefault(u.speaker_id, None)
        return list(seen)

    def reset(self, conversation_id: Optional[str] = None) -> None:
        """Forget one conversation, or all of them (``None``)."""
        if conversation_id is None:
            self._conv.clear()
            self._bytes.clear()
            self.nbytes = 0
        else:
            self._forget(conversation_id)

    def __len__(self) -> int:
        return sum(len(w) for w in self._conv.values())

    @property
    def conversation_ids(self) -> list[str]:
        return list(self._conv)
