"""Scoring pipelines on MELD dev: accuracy of a variant, agreement between two backends.

Everything goes through :class:`~erc_ros.runtime.pipeline.EmotionPipeline` (the one
inference path): a dialogue is fed utterance by utterance, each prediction seeing only the
past, exactly as on the robot.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from erc_ros.core.types import SAMPLE_RATE, Utterance


def meld_dir() -> Path | None:
    """``$ERC_ROS_DATA/meld`` or ``<repo>/../shared/data/meld`` if it exists."""
    env = os.environ.get("ERC_ROS_DATA")
    root = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    d = root / "meld"
    return d if (d / "dev_sent_emo.csv").is_file() else None


def _seconds(stamp: str) -> float:
    try:
        h, m, rest = stamp.split(":")
        s, ms = rest.split(",")
        return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000
    except ValueError:
        return 0.0


def load_meld(split: str = "dev", limit: int = 0) -> list[tuple[list[Utterance], list[str]]]:
    """MELD dialogues as ``(utterances in order, emotion labels)``."""
    d = meld_dir()
    if d is None:
        raise FileNotFoundError("MELD not found: set ERC_ROS_DATA (see shared/data/README)")
    rows: dict[int, list[dict]] = {}
    with open(d / f"{split}_sent_emo.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            rows.setdefault(int(r["Dialogue_ID"]), []).append(r)
    out = []
    for did in sorted(rows):
        rs = sorted(rows[did], key=lambda r: int(r["Utterance_ID"]))
        utts = [Utterance(utterance_id=f"meld-{split}-{did}-{r['Utterance_ID']}",
                          conversation_id=f"meld-{split}-{did}", speaker_id=r["Speaker"],
                          start=_seconds(r["StartTime"]), end=_seconds(r["EndTime"]),
                          text=r["Utterance"].replace("\x92", "'"))
                for r in rs]
        out.append((utts, [r["Emotion"].strip().lower() for r in rs]))
        if limit and len(out) >= limit:
            break
    return out


def load_meld_dialogues(split: str = "dev", limit: int = 0) -> list[list[Utterance]]:
    return [u for u, _ in load_meld(split, limit)]


_BUILTIN = [("Ross", "Hi. I just wanted to say thank you for coming tonight."),
            ("Rachel", "Oh, of course! I would not have missed it for anything."),
            ("Ross", "Really? Because last time you left before dessert."),
            ("Rachel", "That was one time, and the fire alarm went off!"),
            ("Joey", "Wait, there was dessert? Nobody told me about dessert!"),
            ("Ross", "I cannot believe you are still upset about that cake.")]


def builtin_dialogues() -> list[list[Utterance]]:
    """A short conversation for when no data is present (tracing and smoke checks)."""
    utts = [Utterance(f"builtin-{i}", "builtin", spk, 2.0 * i, 2.0 * i + 1.8, text)
            for i, (spk, text) in enumerate(_BUILTIN)]
    return [utts, utts[::-1][:4]]


def with_synthetic_media(u: Utterance, seed: int = 0, seconds: float = 1.5,
                         face_size: int = 64, n_faces: int = 3) -> Utterance:
    """A copy of ``u`` with a voiced-like signal and face-sized image crops.

    Only for export checks (they compare two runtimes on the *same* input, so any input with
    realistic ranges and shapes will do); tests use espeak-ng speech and real photos.
    """
    from dataclasses import replace

    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    f0 = 110 + 60 * rng.random()
    wav = sum(np.sin(2 * np.pi * f0 * k * t) / k for k in range(1, 6))
    wav = wav * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t) ** 2) + 0.02 * rng.standard_normal(t.size)
    wav = (0.3 * wav / np.abs(wav).max()).astype(np.float32)
    yy, xx = np.mgrid[:face_size, :face_size] / face_size
    faces = []
    for _ in range(n_faces):
        base = 0.5 + 0.3 * np.exp(-((xx - 0.5) ** 2 + (yy - 0.45) ** 2) / 0.08)
        img = np.clip(base[..., None] * [220, 180, 150] + rng.normal(0, 8, (face_size,
                                                                       face_size, 3)), 0, 255)
        faces.append(img.astype(np.uint8))
    return replace(u, audio=wav, faces=faces, features=dict(u.features))


def weighted_f1(labels: Sequence[str], preds: Sequence[str]) -> float:
    from sklearn.metrics import f1_score

    return 100.0 * float(f1_score(list(labels), list(preds), average="weighted"))


def run_dialogues(pipe, dialogues, progress: str | None = None):
    """Feed each dialogue through ``pipe``; returns (probabilities [N, C], predicted labels,
    per-utterance latencies ms)."""
    from tqdm import tqdm

    probs, preds, lat = [], [], []
    total = sum(len(d) for d in dialogues)
    with tqdm(total=total, desc=progress or "predict", unit="utt",
              disable=progress is None) as bar:
        for d in dialogues:
            pipe.reset(d[0].conversation_id)
            for u in d:
                e = pipe.predict(u)
                probs.append(np.asarray(e.probabilities, np.float64))
                preds.append(e.label)
                lat.append(e.latency_ms)
                bar.update(1)
            pipe.reset(d[0].conversation_id)
    return np.stack(probs), preds, np.asarray(lat)


def evaluate_variant(model_dir, backend: str, precision: str, limit: int = 0,
                     threads: int = 2, progress: bool = True) -> dict:
    """Weighted F1 / accuracy of one backend+precision on MELD dev."""
    from .pipeline import EmotionPipeline

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
