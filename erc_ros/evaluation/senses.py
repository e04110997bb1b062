"""Each sense of an estimate scored on its own, beside the published label: the text model
alone (``text_label``), the voice expert (``voice_label``), the face expert (``face_label``)
and the fused, published ``label``. A sense that did not read (an empty label) and a turn
without an estimate are a wrong answer, :data:`NONE`. Used by eval-bag, bench-spoken and
bench-senses, each with its own scorer."""
from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

NONE = "<none>"  #: the "prediction" of a lost turn, or of a sense that did not read

#: The senses scored, and the estimate's label each one is read from.
SENSES = {"text": "text_label", "voice": "voice_label", "face": "face_label", "fused": "label"}

#: The figures the benches print of each sense (:func:`sense_scores`'s ``keep``).
SENSE_FIGURES = ("weighted_f1", "uar", "accuracy", "read")


def sense_labels(estimate: Any) -> dict[str, str]:
    """Each sense's label of ``estimate`` in lower case, :data:`NONE` where it has none (the
    sense did not read) or there is no estimate (None: a lost turn)."""
    out = {}
    for sense, attr in SENSES.items():
        v = getattr(estimate, attr) if estimate is not None else ""
        out[sense] = v.lower() if v else NONE
    return out


def sense_scores(y_true: list[str], preds: dict[str, list[str]], class_names: Sequence[str],
                 scorer: Callable[[list[str], list[str], Sequence[str]], dict],
                 keep: Optional[Sequence[str]] = None) -> dict[str, dict]:
    """Each sense's figures on the same turns: ``scorer(y_true, preds[sense], class_names)``
    and ``read`` (on how many turns the sense gave a label), only ``keep`` of them if given."""
    out = {}
    for sense, pred in preds.items():
        m = {**scorer(y_true, pred, class_names), "read": int(sum(p != NONE for p in pred))}
        out[sense] = {k: m[k] for k in keep} if keep else m
    return out
