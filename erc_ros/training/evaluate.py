"""`python -m erc_ros evaluate`: score a model directory on a MELD-format CSV.

    python -m erc_ros evaluate --format meld --csv FILE --model DIR --json OUT

Writes OUT (JSON: ``accuracy``, ``weighted_f1``, ``macro_f1`` in %, ``per_class_f1``,
``confusion`` (rows = true, columns = predicted), ``support``, model id, CSV sha256) and a
confusion-matrix PNG beside it, and prints a summary. Each dialogue is scored utterance by
utterance with past context only, as the robot sees it (``--future-context`` for offline
scoring). ``--backend torch`` (default) runs the model's stages directly in PyTorch; any other
value (``auto``, ``onnxruntime``, ...) goes through ``erc_ros.runtime.pipeline.EmotionPipeline``,
the path the robot runs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="meld", choices=["meld", "emorynlp"])
    p.add_argument("--csv", required=True, help="MELD-format CSV (Utterance, Speaker, Emotion, "
                   "Dialogue_ID, Utterance_ID, ...)")
    p.add_argument("--model", required=True, help="model directory (e.g. models/default)")
    p.add_argument("--json", required=True, help="where to write the metrics JSON")
    p.add_argument("--png", help="confusion-matrix PNG (default: the JSON path with .png)")
    p.add_argument("--backend", default="torch",
                   help="'torch' (stages in PyTorch) or an EmotionPipeline backend name")
    p.add_argument("--future-context", action="store_true",
                   help="also show the following utterances (offline scoring, not live)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-dialogues", type=int, default=0)


def evaluate_dialogues(model, dialogues, future_context: bool = False, progress: bool = True):
    """(true labels, predicted labels, probabilities) over the labelled utterances."""
    import numpy as np
    from tqdm import tqdm

    y_true, y_pred, probs = [], [], []
    for d in tqdm(dialogues, desc="dialogues", disable=not progress):
        p = model.predict_dialogue(d.utterances, future_context=future_context)
        for y, row in zip(d.labels, p):
            if y >= 0:
                y_true.append(y)
                y_pred.append(int(np.argmax(row)))
                probs.append(row)
    return y_true, y_pred, probs


def _pipeline_predictions(model_dir, backend, threads, dialogues, label_names):
    from tqdm import tqdm

    from erc_ros.runtime.pipeline import EmotionPipeline

    pipe = EmotionPipeline.from_model_dir(model_dir, backend=backend, threads=threads,
                                          prepare=True)  # a CLI: it may build
    index = {k: i for i, k in enumerate(pipe.class_names)}
    y_true, y_pred = [], []
    for d in tqdm(dialogues, desc=f"dialogues ({pipe.backend_name})"):
        pipe.reset(d.conversation_id)
        for u, y in zip(d.utterances, d.labels):
            est = pipe.predict(u)
            if y >= 0:
                y_true.append(y)
                y_pred.append(index[est.label])
    return y_true, y_pred, pipe.model_id


def run(args) -> int:
    from erc_ros.models.artefact import load_model_dir, read_manifest, sha256_file
    from erc_ros.training import data
    from erc_ros.training.metrics import plot_confusion, scores

    manifest = read_manifest(args.model)
    labels = manifest["label_names"]
    loader = data.load_meld if args.format == "meld" else data.load_emorynlp
    dialogues = loader(args.csv, labels=labels)
    if args.limit_dialogues:
        dialogues = dialogues[: args.limit_dialogues]
    t0 = time.time()
    if args.backend == "torch":
        model = load_model_dir(args.model)
        y_true, y_pred, _ = evaluate_dialogues(model, dialogues, args.future_context)
        model_id = model.config.model_id
    else:
        y_true, y_pred, model_id = _pipeline_predictions(args.model, args.backend, args.threads,
                                                         dialogues, labels)
    s = scores(y_true, y_pred, labels)
    s.update(model_id=model_id, model_dir=str(args.model), csv=str(args.csv),
             csv_sha256=sha256_file(args.csv), backend=args.backend,
             future_context=bool(args.future_context), seconds=round(time.time() - t0, 1))
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(s, indent=2) + "\n")
    png = Path(args.png) if args.png else out.with_suffix(".png")
    plot_confusion(s["confusion"], labels, png,
                   f"{model_id} on {Path(args.csv).name}: wF1 {s['weighted_f1']} acc {s['accuracy']}")
    print(f"{model_id} on {args.csv} ({s['n']} utterances, {args.backend}): weighted F1 "
          f"{s['weighted_f1']}  accuracy {s['accuracy']}  macro F1 {s['macro_f1']}")
    print("per-class F1: " + ", ".join(f"{k} {v}" for k, v in s["per_class_f1"].items()))
    print(f"wrote {out} and {png}", file=sys.stderr)
    return 0
