"""Conversation context: a bounded window of past utterances per conversation id.

The emotion side (``erc_ros.runtime.pipeline``) keeps one :class:`ConversationHistory` and
asks it for the context of each new utterance; the perception core keeps one too (its
``stats()`` report what it holds). Bounded twice: ``max_utterances`` per conversation and
``max_conversations`` in all (least recently used conversations are forgotten first), so
a robot running for days holds constant memory.
"""
from __future__ import annotations

from collections import OrderedDict, deque
from typing import Optional

from .types import Utterance


class ConversationHistory:
    def __init__(self, max_utterances: int = 20, max_conversations: int = 16):
        if max_utterances < 0:
            raise ValueError("max_utterances must be >= 0")
        self.max_utterances = int(max_utterances)
        self.max_conversations = max(1, int(max_conversations))
        self._conv: "OrderedDict[str, deque]" = OrderedDict()

    def add(self, utt: Utterance) -> None:
        """Append ``utt`` to its conversation's window (the oldest falls out when full)."""
        cid = utt.conversation_id
        window = self._conv.get(cid)
        if window is None:
            window = self._conv[cid] = deque(maxlen=self.max_utterances)
            while len(self._conv) > self.max_conversations:
                self._conv.popitem(last=False)
        else:
            self._conv.move_to_end(cid)
        window.append(utt)

    def context(self, conversation_id: str) -> list[Utterance]:
        """Past utterances of the conversation, oldest first (at most ``max_utterances``)."""
        return list(self._conv.get(conversation_id, ()))

    def speakers(self, conversation_id: str) -> list[str]:
        """Speaker ids in the window, in order of first appearance."""
        seen: dict[str, None] = {}
        for u in self._conv.get(conversation_id, ()):
            seen.setdefault(u.speaker_id, None)
        return list(seen)

    def reset(self, conversation_id: Optional[str] = None) -> None:
        """Forget one conversation, or all of them (``None``)."""
        if conversation_id is None:
            self._conv.clear()
        else:
            self._conv.pop(conversation_id, None)

    def __len__(self) -> int:
        return sum(len(w) for w in self._conv.values())

    @property
    def conversation_ids(self) -> list[str]:
        return list(self._conv)
