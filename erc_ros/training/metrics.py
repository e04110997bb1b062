"""Classification metrics for ERC (weighted F1 is MELD's headline figure) and plots."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def confusion(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    m = np.zeros((num_classes, num_classes), np.int64)
    for t, p in zip(y_true, y_pred):
        m[int(t), int(p)] += 1
    return m


#: A prediction of :func:`scores` that is no class (an estimate without a label): wrong
#: for its true class, no class's prediction.
NO_PREDICTION = -1


def scores(y_true: Sequence[int], y_pred: Sequence[int], label_names: Sequence[str]) -> dict:
    """accuracy, weighted_f1, macro_f1, uar (unweighted average recall: the mean of the
    classes' recalls, over the classes present) in %, per_class_f1 (name -> %), confusion
    (rows = true, columns = predicted; one more column, last, where some prediction is
    :data:`NO_PREDICTION`), support."""
    c = len(label_names)
    none = [int(p) == NO_PREDICTION for p in y_pred]
    cm = confusion(y_true, [c if n else p for p, n in zip(y_pred, none)], c + 1)[:c]
    if not any(none):
        cm = cm[:, :c]
    tp = np.diag(cm[:, :c]).astype(np.float64)
    support = cm.sum(1)
    prec = tp / np.maximum(cm[:, :c].sum(0), 1)
    rec = tp / np.maximum(support, 1)
    f1 = np.where(prec + rec > 0, 2 * prec * rec / np.maximum(prec + rec, 1e-12), 0.0)
    n = max(int(support.sum()), 1)
    return {
        "n": int(support.sum()),
        "accuracy": round(float(100.0 * tp.sum() / n), 2),
        "weighted_f1": round(100.0 * float((f1 * support).sum() / n), 2),
        "macro_f1": round(100.0 * float(f1.mean()), 2),
        "uar": round(100.0 * float(rec[support > 0].mean()), 2) if support.any() else 0.0,
        "per_class_f1": {k: round(100.0 * float(v), 2) for k, v in zip(label_names, f1)},
        "support": {k: int(v) for k, v in zip(label_names, support)},
        "confusion": cm.tolist(),
        "label_names": list(label_names),
    }


def plot_confusion(cm, label_names: Sequence[str], path: str | Path, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm, np.float64)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    im = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    columns = list(label_names) + ["(no label)"] * (cm.shape[1] - len(label_names))
    ax.set_xticks(range(len(columns)), columns, rotation=45, ha="right")
    ax.set_yticks(range(len(label_names)), label_names)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", fontsize=8,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion (row-normalised colour, counts)")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
