"""Scoring pipelines on MELD dev: accuracy of a variant, agreement between two backends.

Everything goes through :class:`~erc_ros.runtime.pipeline.EmotionPipeline` (the one
inference path): a dialogue is fed utterance by utterance, each prediction seeing only the
past, exactly as on the robot.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from tqdm import tqdm

from .pipeline import EmotionPipeline
from .samples import load_meld


def weighted_f1(labels: Sequence[str], preds: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    return 100.0 * float(f1_score(list(labels), list(preds), average="weighted"))


def run_dialogues(pipe, dialogues, progress: str | None = None):
    """Feed each dialogue through ``pipe``; returns (probabilities [N, C], predicted labels,
    per-utterance latencies ms)."""

    probs, preds, lat = [], [], []
    total = sum(len(d) for d in dialogues)
    with tqdm(total=total, desc=progress or "predict", unit="utt",
              disable=progress is None) as bar:
        for d in dialogues:
            pipe.reset(d[0].conversation_id)
            for u in d:
                e = pipe.predict(u)
                # an estimate without a label (nothing the model reads): a row of NaN
                probs.append(np.asarray(e.probabilities, np.float64) if len(e.probabilities)
                             else np.full(len(e.class_names), np.nan))
                preds.append(e.label)
                lat.append(e.latency_ms)
                bar.update(1)
            pipe.reset(d[0].conversation_id)
    return np.stack(probs), preds, np.asarray(lat)


def evaluate_variant(model_dir, backend: str, precision: str, limit: int = 0,
                     threads: int = 2, progress: bool = True) -> dict:
    """Weighted F1 / accuracy of one backend+precision on MELD dev."""
    data = load_meld("dev", limit)
    pipe = EmotionPipeline.from_model_dir(model_dir, backend=backend, precision=precision,
                                          threads=threads, prepare=True)
    probs, preds, lat = run_dialogues(pipe, [u for u, _ in data],
                                      f"{backend}/{precision}" if progress else None)
    labels = [l for _, ls in data for l in ls]
    return {"n": len(labels), "weighted_f1": weighted_f1(labels, preds),
            "accuracy": 100.0 * float(np.mean([a == b for a, b in zip(labels, preds)])),
            "probs": probs, "preds": preds, "labels": labels}


def compare_backends(model_dir, a=("torch", "fp32"), b=("onnxruntime", "fp32"), limit: int = 0,
                     threads: int = 2) -> dict:
    """Label agreement and max abs diff of probabilities between two variants on MELD dev."""
    ra = evaluate_variant(model_dir, *a, limit=limit, threads=threads)
    rb = evaluate_variant(model_dir, *b, limit=limit, threads=threads)
    agree = float(np.mean([x == y for x, y in zip(ra["preds"], rb["preds"])]))
    return {"n": ra["n"], "label_agreement": agree,
            "max_abs_diff_prob": float(np.abs(ra["probs"] - rb["probs"]).max()),
            "weighted_f1": {"/".join(a): ra["weighted_f1"], "/".join(b): rb["weighted_f1"]}}
