"""Quantized and half-precision variants of exported ONNX stages.

Variants (file suffix -> what):
- ``int8``: ONNX Runtime transformer optimizer (fused Attention, SkipLayerNorm, ...), then
  dynamic INT8 (weights INT8 per channel, activations quantized at run time). Audio encoders
  quantize MatMul only: their convolutions as ConvInteger run slower than FP32 here
  (performance.md: wav2vec2 114 ms MatMul-only vs 382 ms with ConvInteger).
- ``woq8``: weight-only INT8 per output channel, the seed 004 pipeline:
  ``s_j = max_i |W_ij| / 127``, ``q = round(W / s)``, dequantized to float at run time; it
  saves size and memory, not FLOPs (activations, LayerNorm, bias stay float).
- ``fp16``: float16 weights and compute with float32 inputs/outputs, for GPUs.
- ``qdq``: explicit Q/DQ INT8 (static, symmetric, calibrated on real inputs), the form
  TensorRT prefers over its deprecated implicit calibrators (see ``engines.py``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .backends import OrtBackend
from .export import export_model, onnx_path, stage_specs
from .manifest import (artefact_path, find_stage_files, load_model, open_for_cli, read_manifest,
                       register_artefact)
from .stages import needed_stages

log = logging.getLogger("erc_ros.runtime")


@contextlib.contextmanager
def _working_directory(path: str | Path) -> Iterator[None]:
    """``contextlib.chdir`` of Python 3.11, here because erc_ros supports 3.10 (Humble's)."""
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)

#: Precision names of the variants this module makes, besides the exported ``fp32``.
VARIANTS = ("int8", "woq8", "fp16", "qdq")


class OnnxRuntimeChatter(logging.Filter):
    """Drops what ONNX Runtime's optimizer and quantizer log below WARNING (a line per
    tensor and per fusion, some on the root logger: about 100 for the default model) and
    its advice to pre-process before quantizing (every variant is checked against FP32 on
    real inputs instead); its other warnings and errors pass."""

    ADVICE = "Please consider to run pre-processing before quantization"

    def __init__(self) -> None:
        super().__init__()
        import onnxruntime
        self.prefix = os.path.dirname(onnxruntime.__file__) + os.sep

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.pathname.startswith(self.prefix):
            return True
        return record.levelno >= logging.WARNING and \
            not str(record.msg).startswith(self.ADVICE)


@contextlib.contextmanager
def _quiet_onnxruntime() -> Iterator[None]:
    """:class:`OnnxRuntimeChatter` on the root logger (ONNX Runtime logs with
    ``logging.info``) and on its handlers (its named loggers propagate to them)."""
    chatter = OnnxRuntimeChatter()
    root = logging.getLogger()
    targets = [root, *root.handlers]
    for t in targets:
        t.addFilter(chatter)
    try:
        yield
    finally:
        for t in targets:
            t.removeFilter(chatter)


def optimize_transformer(src: str | Path, dst: str | Path, num_heads: int, hidden_size: int,
                         model_type: str = "bert") -> dict:
    """ORT transformer optimizer (needs an eager-attention export to fuse Attention).

    Returns the fused-operator statistics, so callers can see whether fusion happened.
    """
    from onnxruntime.transformers.optimizer import optimize_model

    om = optimize_model(str(src), model_type=model_type, num_heads=int(num_heads),
                        hidden_size=int(hidden_size), opt_level=1)
    stats = {k: v for k, v in om.get_fused_operator_statistics().items() if v}
    om.save_model_to_file(str(dst))
    return stats


def quantize_dynamic_int8(src: str | Path, dst: str | Path, matmul_only: bool = False,
                          per_channel: bool = True, reduce_range: bool = False) -> None:
    """ORT dynamic INT8. ``matmul_only`` for audio encoders (no ConvInteger).
    ``reduce_range``: 7-bit weights, so that CPUs without VNNI do not saturate
    (:func:`quantize_qdq_int8`)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    ops = ["MatMul", "Attention", "Gather", "EmbedLayerNormalization"] if not matmul_only \
        else ["MatMul", "Attention"]
    quantize_dynamic(str(src), str(dst), op_types_to_quantize=ops, per_channel=per_channel,
                     weight_type=QuantType.QInt8, reduce_range=reduce_range,
                     # Outputs of fused contrib ops have no inferred type: they are float.
                     extra_options={"MatMulConstBOnly": True,
                                    "DefaultTensorType": 1})  # onnx.TensorProto.FLOAT


def quantize_weights_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric INT8 per channel along ``axis`` (seed 004 eq. for W_ij, channel j).

    Returns ``(q int8, scale float32)`` with ``w ~= q * scale`` broadcast along ``axis``.
    """
    w = np.asarray(w, np.float32)
    reduce_axes = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=reduce_axes)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


def quantize_weight_only_int8(src: str | Path, dst: str | Path, min_elements: int = 1024) -> int:
    """Weight-only INT8: each constant MatMul/Gemm weight and Gather table becomes
    ``DequantizeLinear(int8, scale per output channel)``. Returns the number of weights
    converted. Small tensors (biases, LayerNorm) stay float.
    """
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(src))
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    consumers: dict[str, list] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    converted = 0
    new_nodes = []
    for name, tensor in list(inits.items()):
        uses = consumers.get(name, [])
        if not uses or tensor.data_type != onnx.TensorProto.FLOAT:
            continue
        w = numpy_helper.to_array(tensor)
        if w.ndim != 2 or w.size < min_elements:
            continue
        # The output channel: MatMul B[K, N] -> N (axis 1); Gemm with transB -> axis 0;
        # Gather table [V, D] -> each row is one embedding (axis 0).
        axes = set()
        for node, i in uses:
            if node.op_type == "MatMul" and i == 1:
                axes.add(1)
            elif node.op_type == "Gemm" and i == 1:
                tb = next((a.i for a in node.attribute if a.name == "transB"), 0)
                axes.add(0 if tb else 1)
            elif node.op_type == "Gather" and i == 0:
                axes.add(0)
            else:
                axes.add(None)
        if len(axes) != 1 or None in axes:
            continue
        axis = axes.pop()
        q, scale = quantize_weights_per_channel(w, axis)
        qname, sname, zname = name + "_woq8", name + "_woq8_scale", name + "_woq8_zp"
        g.initializer.remove(tensor)
        g.initializer.extend([numpy_helper.from_array(q, qname),
                              numpy_helper.from_array(scale, sname),
                              numpy_helper.from_array(np.zeros_like(scale, np.int8), zname)])
        new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [name],
                                          name=name + "_woq8_dq", axis=axis))
        converted += 1
    # DequantizeLinear outputs replace the initializers: put them first (topological order).
    nodes = new_nodes + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    for vi in list(g.input):  # old opsets list initializers as inputs too
        if vi.name in inits and any(n.output[0] == vi.name for n in new_nodes):
            g.input.remove(vi)
    onnx.checker.check_model(model)
    onnx.save(model, str(dst))
    return converted


def convert_fp16(src: str | Path, dst: str | Path) -> None:
    """Float16 weights and compute, float32 inputs and outputs (for CUDA / TensorRT)."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                     disable_shape_infer=False)
    onnx.save(model, str(dst))


class _FeedReader:
    """CalibrationDataReader over a list of feeds (real inputs)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]], names: Sequence[str]):
        # Only the graph's inputs (an exporter drops inputs a head does not use).
        self._it = iter([{n: np.ascontiguousarray(f[n]) for n in names} for f in feeds])

    def get_next(self):
        return next(self._it, None)

    def rewind(self):  # pragma: no cover - ORT calls it only for some calibrators
        pass


def quantize_qdq_int8(src: str | Path, dst: str | Path,
                      calibration_feeds: Sequence[Mapping[str, np.ndarray]],
                      matmul_only: bool = False, reduce_range: bool = False) -> None:
    """Explicit Q/DQ INT8 (static, symmetric, per-channel weights) calibrated on real inputs.

    This is the form TensorRT 10 builds INT8 engines from (explicit quantization); ONNX
    Runtime CPU runs it too, which is how it is checked here. ``reduce_range``: 7-bit weights,
    for a model ONNX Runtime runs on x86 CPUs: without VNNI (AVX2 only: AMD Zen 1-3, older
    Xeons) its INT8 kernels add pairs of 8-bit products in 16 bits, which saturate with full
    8-bit weights (a face net's labels changed on 7.5 % of crops); 7-bit weights cannot.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as tmp:
        # Shape inference + constant folding first, as ORT recommends for static quantization.
        pre = Path(tmp) / "pre.onnx"
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            # On incomplete symbolic shape inference ORT dumps sym_shape_infer_temp.onnx
            # (+ external data) into the working directory: keep that in our temp dir.
            with _working_directory(tmp):
                quant_pre_process(str(Path(src).resolve()), str(pre), skip_optimization=False)
        except Exception as e:  # pre-processing is an optimisation, not a requirement
            log.info("quant_pre_process skipped (%s)", e)
            shutil.copy(src, pre)
        import onnx

        names = [i.name for i in onnx.load(str(pre), load_external_data=False).graph.input]
        quantize_static(str(pre), str(dst), _FeedReader(calibration_feeds, names),
                        quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["MatMul", "Gemm"] if matmul_only else
                        ["MatMul", "Gemm", "Conv"],
                        per_channel=True, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8, reduce_range=reduce_range,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True})


def make_variant(precision: str, fp32_path: str | Path, dst: str | Path, *,
                 transformer: dict | None = None, matmul_only: bool = False,
                 calibration_feeds: Sequence[Mapping[str, np.ndarray]] | None = None) -> dict:
    """Make one variant of an FP32 ONNX stage. ``transformer`` = ``{num_heads, hidden_size}``
    for transformer encoders (runs the ORT optimizer first). Returns metadata for the
    manifest."""
    with _quiet_onnxruntime():
        return _make_variant(precision, fp32_path, dst, transformer, matmul_only,
                             calibration_feeds)


def _make_variant(precision, fp32_path, dst, transformer, matmul_only,
                  calibration_feeds) -> dict:
    meta: dict = {"precision": precision, "source": Path(fp32_path).name}
    if precision == "int8":
        with tempfile.TemporaryDirectory() as tmp:
            src = fp32_path
            if transformer:
                src = Path(tmp) / "opt.onnx"
                meta["fused"] = optimize_transformer(fp32_path, src, **transformer)
            quantize_dynamic_int8(src, dst, matmul_only=matmul_only)
        meta["method"] = "ort-optimizer+dynamic-int8" + ("-matmul-only" if matmul_only else "")
    elif precision == "woq8":
        meta["converted_weights"] = quantize_weight_only_int8(fp32_path, dst)
        meta["method"] = "weight-only-int8-per-output-channel"
    elif precision == "fp16":
        convert_fp16(fp32_path, dst)
        meta["method"] = "fp16-keep-io-fp32"
    elif precision == "qdq":
        if not calibration_feeds:
            raise ValueError("qdq needs calibration feeds (real inputs)")
        quantize_qdq_int8(fp32_path, dst, calibration_feeds, matmul_only=matmul_only)
        meta["method"] = "static-qdq-int8-symmetric"
        meta["calibration_samples"] = len(calibration_feeds)
    else:
        raise ValueError(f"unknown precision {precision!r}; one of {VARIANTS}")
    return meta


# ------------------------------------------------------------------ model directories

#: Below this mean cosine between a quantized encoder's output vectors and the FP32 ones on
#: real inputs, the variant is rejected for ``precision: auto``. Measured (34 prompts):
#: MiniLM-L6 dynamic INT8 0.983 (min 0.969), all-mpnet-base-v2 dynamic INT8 0.106 (its MELD
#: dev weighted F1 falls from 60.8 to 27.8): nothing in between.
MIN_COSINE = 0.9
#: Below this label agreement with the FP32 stage (a head), the variant is rejected too.
MIN_LABEL_AGREEMENT = 0.9


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` [B, D] with the same row of ``b``."""
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.maximum(den, 1e-30), 1.0)


def rejection(check: dict) -> str:
    """Why a quantized variant with this ``check_vs_fp32`` must not be picked automatically
    ("" when it is fine)."""
    cos, agree = check.get("mean_cosine"), check.get("label_agreement")
    if cos is not None and cos < MIN_COSINE:
        return f"its outputs' mean cosine to FP32 is {cos:.3f} (< {MIN_COSINE})"
    if agree is not None and agree < MIN_LABEL_AGREEMENT:
        return f"its labels agree with FP32 on {100 * agree:.0f}% (< {100 * MIN_LABEL_AGREEMENT:.0f}%)"
    return ""


def quantize_model_dir(model_dir: str | Path, precisions: Sequence[str] = ("int8", "woq8"),
                       model=None, progress: bool = True) -> dict:
    """Make each variant of every exported stage, check it against the FP32 ONNX on real
    inputs and register it in the manifest. Returns ``{stage: {precision: meta}}``."""

    model_dir = Path(model_dir)
    model = model if model is not None else load_model(model_dir)
    arts = read_manifest(model_dir)["artefacts"]
    fp32 = find_stage_files(model_dir, "onnx", "fp32")
    specs = {s.name: s for s in stage_specs(model)}
    report: dict = {}
    jobs = [(st, p) for st in fp32 for p in precisions]
    for stage, precision in tqdm(jobs, desc="quantize", unit="variant", disable=not progress):
        src_meta = arts[fp32[stage]]
        spec = specs[stage]
        dst = onnx_path(model_dir, stage, precision)
        transformer = ({"num_heads": src_meta["num_heads"], "hidden_size": src_meta["hidden_size"]}
                       if src_meta.get("transformer") and "num_heads" in src_meta else None)
        src = artefact_path(model_dir, fp32[stage])
        meta = make_variant(precision, src, dst, transformer=transformer,
                            matmul_only=bool(src_meta.get("matmul_only")),
                            calibration_feeds=spec.samples if precision == "qdq" else None)
        # Check against the FP32 export on the same real inputs.
        a = OrtBackend(src, providers=["CPUExecutionProvider"], threads=0)
        b = OrtBackend(dst, providers=["CPUExecutionProvider"], threads=0)
        diff, agree, total, cosines = 0.0, 0, 0, []
        for s in spec.samples:
            ra, rb = a.run(s), b.run(s)
            for n in ra:
                diff = max(diff, float(np.abs(ra[n] - rb[n]).max()))
            if spec.labels_output:
                la, lb = ra[spec.labels_output].argmax(-1), rb[spec.labels_output].argmax(-1)
                agree += int((la == lb).sum())
                total += la.size
            else:  # an encoder: its output vectors' direction is what the head reads
                cosines += list(row_cosines(ra[spec.output_names[0]], rb[spec.output_names[0]]))
        meta["check_vs_fp32"] = {"max_abs_diff": diff,
                                 "label_agreement": agree / total if total else None,
                                 "mean_cosine": float(np.mean(cosines)) if cosines else None}
        why = rejection(meta["check_vs_fp32"])
        if why:
            meta["rejected"] = why
            log.warning("%s %s: %s; `precision: auto` runs this stage in fp32 (an explicit "
                        "precision still runs it)", stage, precision, why)
        keep = {k: v for k, v in src_meta.items()
                if k in ("inputs", "outputs", "opset", "num_heads", "hidden_size", "pad_id",
                         "transformer", "matmul_only", "encoder_kind")}
        register_artefact(model_dir, dst, kind="onnx", stage=stage, **keep, **meta)
        report.setdefault(stage, {})[precision] = meta
    return report


def ensure_variants(model_dir: str | Path, model=None, precisions: Sequence[str] = (),
                    progress: bool = False) -> None:
    """Export (if the FP32 ONNX files are missing) and make any missing variants; cached in
    the model directory and registered in its manifest."""
    model = model if model is not None else load_model(model_dir)

    if not needed_stages(model) <= set(find_stage_files(model_dir, "onnx", "fp32")):
        log.info("exporting %s to ONNX (first use)", model_dir)
        export_model(model, model_dir, progress=progress)
    missing = [p for p in precisions if p != "fp32" and
               not needed_stages(model) <= set(find_stage_files(model_dir, "onnx", p))]
    if missing:
        quantize_model_dir(model_dir, missing, model=model, progress=progress)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--precisions", default="int8,woq8,fp16",
                   help="variants to make: " + ",".join(VARIANTS))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--in-place", action="store_true",
                   help="write into DIR even if it is versioned in git (default: its overlay)")


def run(args) -> int:
    model, out_dir = open_for_cli(args)
    precisions = [p for p in args.precisions.split(",") if p]
    ensure_variants(out_dir, model, progress=True)  # the FP32 export first, if not done yet
    report = quantize_model_dir(out_dir, precisions, model=model)
    arts = read_manifest(out_dir)["artefacts"]
    fp32 = find_stage_files(out_dir, "onnx", "fp32")
    print(f"{'stage':<15} {'variant':<8} {'MB':>8} {'x fp32':>7} {'max abs diff':>13} "
          f"{'labels':>7}  method")
    for stage, variants in report.items():
        base = arts[fp32[stage]]["bytes"]
        print(f"{stage:<15} {'fp32':<8} {base / 1e6:>8.2f} {1.0:>7.2f}")
        for prec, meta in variants.items():
            rel = find_stage_files(out_dir, "onnx", prec)[stage]
            size = arts[rel]["bytes"]
            chk = meta["check_vs_fp32"]
            la = "-" if chk["label_agreement"] is None else f"{100 * chk['label_agreement']:.0f}%"
            print(f"{stage:<15} {prec:<8} {size / 1e6:>8.2f} {size / base:>7.2f} "
                  f"{chk['max_abs_diff']:>13.2e} {la:>7}  {meta['method']}")
    print("Latency and MELD dev accuracy of each variant: python -m erc_ros bench "
          f"--model {args.model} --json OUT.json")
    return 0
