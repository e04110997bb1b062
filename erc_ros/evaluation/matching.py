"""Turn matching and scoring of estimates against labelled turns: which estimate answers
which turn (overlap in time), how the recognizer heard each turn, the conversation's text
in time order (for WER), classification figures and percentiles. Used by bench-spoken,
heard-set and bench-e2e."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np

from erc_ros.evaluation.eval_bag import read_labels
from erc_ros.evaluation.senses import NONE
from erc_ros.evaluation.wer import normalize
from erc_ros.training.metrics import scores


def overlap(a0: float, a1: float, b0: np.ndarray, b1: np.ndarray) -> np.ndarray:
    return np.minimum(a1, b1) - np.maximum(a0, b0)


def overlap_seconds(lab: list[dict], estimates: list) -> np.ndarray:
    """Seconds of overlap of each labelled turn (rows) with each estimate (columns)."""
    es = np.asarray([e.start for e in estimates], float)
    ee = np.asarray([e.end for e in estimates], float)
    return np.stack([overlap(t["start"], t["end"], es, ee) for t in lab]) if lab else \
        np.zeros((0, len(estimates)))


def owners(lab: list[dict], estimates: list) -> tuple[np.ndarray, list[list[int]]]:
    """The labelled turn each estimate belongs to (the one it overlaps most; -1: none) and,
    per estimate, every labelled turn it overlaps."""
    ov = overlap_seconds(lab, estimates)
    if not lab or not estimates:
        return np.full(len(estimates), -1), [[] for _ in estimates]
    owner = np.where(ov.max(axis=0) > 0, ov.argmax(axis=0), -1)
    return owner, [np.flatnonzero(ov[:, k] > 0).tolist() for k in range(len(estimates))]


def assign(turns: list[dict], estimates: list) -> tuple[list[tuple[str, Any]], int]:
    """Each labelled turn -> (``matched`` | ``merged`` | ``lost``, estimate or None), and the
    number of estimates that overlap no labelled turn (module doc)."""
    lab = [t for t in turns if t["label"]]
    if not estimates:
        return [("lost", None) for _ in lab], 0
    ov = overlap_seconds(lab, estimates)
    owner, _ = owners(lab, estimates)
    out = []
    for i in range(len(lab)):
        own = np.flatnonzero(owner == i)
        if own.size:
            out.append(("matched", estimates[int(own[np.argmax(ov[i, own])])]))
        elif ov[i].max() > 0:
            out.append(("merged", estimates[int(np.argmax(ov[i]))]))
        else:
            out.append(("lost", None))
    return out, int(np.sum(owner < 0))


#: How a labelled turn's words came out in the estimate it is scored with (:func:`heard_as`),
#: in the order the summary lists them.
HEARD_AS = ("exact", "joined", "piece", "misheard", "no_text", "lost")


def heard_as(said: str, heard: Optional[str]) -> str:
    """How the words of a turn (``said``) came out in the text of the estimate it is scored
    with (``heard``; None: the turn has none), word for word as the WER compares them
    (:func:`erc_ros.evaluation.wer.normalize`: case and punctuation aside): ``exact``, the
    same words; ``joined``, all of them in order with other words around them (another
    turn's: the segmentation joined the turns); ``piece``, some of them in order and nothing
    else (the turn was heard in pieces; this one overlaps it most); ``misheard``, any other
    text; ``no_text``, an estimate without words; ``lost``, no estimate."""

    if heard is None:
        return "lost"
    h = normalize(heard)
    if not h:
        return "no_text"
    g = normalize(said)
    if h == g:
        return "exact"
    if f" {g} " in f" {h} ":
        return "joined"
    if f" {h} " in f" {g} ":
        return "piece"
    return "misheard"


def conversation_text(turns: list[dict], estimates: list) -> tuple[str, str]:
    """(reference, hypothesis) of one conversation for the WER: every gold turn's text
    (back-channels too) and every estimate's text, each in order of start. Whole
    conversations, so the WER does not depend on where the segmentation cut (a turn heard
    in two pieces, two turns heard as one); the estimates' own pairing is in the CSVs."""
    ref = " ".join(t["text"] for t in sorted(turns, key=lambda t: (t["start"], t["end"])))
    hyp = " ".join(e.text for e in sorted(estimates, key=lambda e: (e.start, e.end)) if e.text)
    return ref, hyp


def classification(y_true: list[str], y_pred: list[str], class_names) -> dict:
    """Weighted/macro F1, accuracy (%) and per-class F1 over every labelled turn, by the
    project's one scorer (:func:`erc_ros.training.metrics.scores`); a lost turn's prediction
    :data:`NONE` is a class of its own, always wrong, left out of the macro mean."""

    names = [c.lower() for c in class_names]
    index = {c: i for i, c in enumerate(names + [NONE])}
    unknown = sorted(set(y_true) - set(names))
    if unknown:
        raise ValueError(f"labels {unknown} are not the model's classes {names}")
    m = scores([index[y] for y in y_true], [index[y] for y in y_pred], names + [NONE])
    f1 = m["per_class_f1"]
    del f1[NONE], m["support"][NONE]
    m["macro_f1"] = round(float(np.mean(list(f1.values()))), 2)
    return m


def percentiles(v) -> dict:
    v = np.asarray([x for x in v if np.isfinite(x)], float)
    if not v.size:
        return {"p50": None, "p95": None, "n": 0}
    return {"p50": round(float(np.percentile(v, 50)), 1),
            "p95": round(float(np.percentile(v, 95)), 1),
            "mean": round(float(v.mean()), 1), "n": int(v.size)}


def segment_ends(estimates) -> list[bool]:
    """Whether each estimate ends a recognized segment: no other estimate starts where it
    ends. The sentences of one segment tile it (``segmentation.split_sentences``), as do the
    pieces cut while the speech goes on (``asr.stream_seconds``); the estimates that do not
    end one answer speech that others followed without a pause."""
    starts = {round(e.start, 6) for e in estimates}
    return [round(e.end, 6) not in starts for e in estimates]


def gold_turns(bag: Path) -> list[dict]:
    return read_labels(bag / "labels.csv")
