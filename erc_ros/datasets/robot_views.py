"""Dialogues as a robot could at best have them: speakers as diarization tags them, the text
as a recognizer writes it, each turn cut into sentences as the node cuts it (docs/spoken.md);
views for evaluation, copies for training."""
from __future__ import annotations

import dataclasses
import random
import re
from typing import Sequence

import numpy as np

from erc_ros.core.asr import sentence_cuts
from erc_ros.core.types import Utterance
from erc_ros.datasets.dialogues import Dialogue

#: What a script has and a robot does not (:func:`robot_view`; ``--robot-view all``).
ROBOT_VIEWS = ("speakers", "exclamations")
#: How a robot cuts what it hears (:func:`robot_view`), beside the views above.
CUT_VIEWS = ("sentences",)
#: :func:`robot_view`'s ``labelled``: which pieces of a turn cut into sentences keep its label.
PIECE_LABELS = ("every", "longest")


def split_sentences(text: str) -> list[str]:
    """``text`` cut after every sentence as the node cuts a recognized turn
    (``segmentation.split_sentences``: :func:`erc_ros.core.asr.sentence_cuts` over its
    words); one piece where it holds one sentence."""
    words = text.split()
    edges = [0, *sentence_cuts(words), len(words)]
    return [" ".join(words[a:b]) for a, b in zip(edges[:-1], edges[1:])] or [text]


def no_exclamations(text: str) -> str:
    """``text`` with every ``!`` read as ``.`` (``?!`` and ``!?`` as ``?``): what a recognizer
    writes of a voice that does not carry them."""
    text = re.sub(r"\?+!+[?!]*", "?", text)
    text = re.sub(r"!+\?+[?!]*", "?", text)
    return re.sub(r"!+", ".", text)


def _pieces(u: Utterance, text: str) -> list[tuple[str, float, float]]:
    """``text`` (``u``'s, as a view reads it) cut into sentences (:func:`split_sentences`),
    each with its share of ``u``'s time by characters."""
    pieces = split_sentences(text)
    if len(pieces) == 1:
        return [(text, u.start, u.end)]
    edges = np.cumsum([0, *map(len, pieces)]) / sum(map(len, pieces))
    return [(p, u.start + (u.end - u.start) * float(edges[k]),
             u.start + (u.end - u.start) * float(edges[k + 1])) for k, p in enumerate(pieces)]


def robot_view(dialogues: Sequence[Dialogue], views: Sequence[str] = ROBOT_VIEWS,
               suffix: str = "", labelled: str = "every") -> list[Dialogue]:
    """The dialogues' text as a robot could at best have it, as copies (labels and media
    kept): ``speakers``: each dialogue's speakers renamed ``speaker_0``, ``speaker_1``, ...
    in order of first turn, as diarization tags them (a robot does not know their names);
    ``exclamations``: every ``!`` read as ``.`` (``?!`` as ``?``), as a recognizer writes
    a voice that does not carry them (docs/spoken.md: synthetic voices); ``sentences``: each
    turn cut after every sentence (:func:`split_sentences`), one utterance a sentence, as
    the node cuts a recognized turn (``segmentation.split_sentences``), its time shared by
    characters. ``labelled``: which pieces of a cut turn keep its label, ``every`` (training)
    or ``longest`` (the others unlabelled: each turn is scored once, on the piece that holds
    most of it, as ``bench-spoken`` scores a turn on the estimate that overlaps it most).
    ``suffix`` is added to the conversation and utterance ids (a copy trained beside its
    original)."""
    bad = set(views) - set(ROBOT_VIEWS + CUT_VIEWS)
    if bad:
        raise ValueError(f"robot views are {', '.join(ROBOT_VIEWS + CUT_VIEWS)}; got "
                         f"{', '.join(sorted(bad))}")
    if labelled not in PIECE_LABELS:
        raise ValueError(f"labelled is one of {', '.join(PIECE_LABELS)}; got {labelled!r}")
    out = []
    for d in dialogues:
        tags: dict[str, str] = {}
        utts, labels, media = [], [], []
        for i, u in enumerate(d.utterances):
            spk = tags.setdefault(u.speaker_id, f"speaker_{len(tags)}") \
                if "speakers" in views else u.speaker_id
            text = no_exclamations(u.text) if "exclamations" in views else u.text
            pieces = _pieces(u, text) if "sentences" in views else [(text, u.start, u.end)]
            keep = max(range(len(pieces)), key=lambda k: len(pieces[k][0]))
            for k, (piece, start, end) in enumerate(pieces):
                uid = u.utterance_id + (f".{k}" if len(pieces) > 1 else "") + suffix
                utts.append(dataclasses.replace(u, utterance_id=uid,
                                                conversation_id=d.conversation_id + suffix,
                                                speaker_id=spk, text=piece, start=start,
                                                end=end))
                if d.labels:  # [] where the dialogue carries none
                    labels.append(d.labels[i] if labelled == "every" or k == keep else -1)
                if d.media:
                    media.append(d.media[i])
        out.append(Dialogue(d.conversation_id + suffix, utts, labels, media))
    return out


def robot_copy(dialogues: Sequence[Dialogue], names_share: float = 0.0, seed: int = 0,
               suffix: str = "-robot", cuts: Sequence[str] = ()) -> list[Dialogue]:
    """One copy of each dialogue as a robot could at best have it (:func:`robot_view`), to
    train beside the originals: every ``!`` read as ``.``; the speakers tagged ``speaker_N``
    (strangers), except in a share ``names_share`` of the dialogues, drawn with ``seed``,
    which keep their names (a household the robot knows by voice: docs/spoken.md);
    ``cuts``: :data:`CUT_VIEWS` too (``sentences``: each turn one utterance a sentence, every
    piece with its turn's label)."""
    if not 0.0 <= names_share <= 1.0:
        raise ValueError(f"names_share is a share of the dialogues, 0 to 1; got {names_share}")
    bad = set(cuts) - set(CUT_VIEWS)
    if bad:
        raise ValueError(f"cuts are {', '.join(CUT_VIEWS)}; got {', '.join(sorted(bad))}")
    named = set(random.Random(seed).sample(range(len(dialogues)),
                                           round(names_share * len(dialogues))))
    return [robot_view([d], ("exclamations", *cuts) if i in named else (*ROBOT_VIEWS, *cuts),
                       suffix)[0]
            for i, d in enumerate(dialogues)]
