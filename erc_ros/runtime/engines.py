"""TensorRT engines for Jetson / CUDA machines: bucketed profiles, build, cache, runtime.

Engines are device-specific, so they are built on the target (``python -m erc_ros
build-engines --model DIR``) from the exported ONNX and cached under
``<model>/engines/``, keyed by device name + compute capability, TensorRT version, source
ONNX sha256, precision and profiles: a changed model, a TensorRT upgrade or another GPU all
give another key, never a stale engine.

The text encoder's dynamic sequence axis is what stopped seed 004 from building an INT8
engine. Here each bucket (128/256/512 tokens) gets its own optimization profile with the
sequence length *fixed* at the bucket (batch 1..max_batch): inputs are right-padded to the
bucket (:func:`pad_to_bucket`; the attention mask zeroes the padding) and the runtime picks
the profile with :func:`select_profile`. INT8 uses explicit Q/DQ (``quantize.quantize_qdq_int8``),
not the implicit calibrators deprecated since TensorRT 10.1.

Everything above the ``tensorrt`` import line is pure Python and unit-tested everywhere;
``tensorrt`` (and torch.cuda for device buffers) are imported only when building or running.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .backends import Backend, BackendUnavailable
from .manifest import (artefact_path, find_stage_files, read_manifest, register_artefact,
                       sha256_file, writable_dir)
from .quantize import ensure_variants

log = logging.getLogger("erc_ros.runtime")

#: Token buckets of the text encoder profiles.
DEFAULT_BUCKETS = (128, 256, 512)

Shape = tuple[int, ...]


@dataclass(frozen=True)
class ProfileShapes:
    """min/opt/max shape of every dynamic input for one optimization profile."""

    shapes: tuple[tuple[str, Shape, Shape, Shape], ...]

    def as_dict(self) -> dict[str, dict[str, list[int]]]:
        return {n: {"min": list(a), "opt": list(o), "max": list(b)} for n, a, o, b in self.shapes}

    def accepts(self, shapes: Mapping[str, Sequence[int]]) -> bool:
        for name, lo, _, hi in self.shapes:
            s = tuple(shapes[name])
            if len(s) != len(lo) or any(not (a <= x <= b) for a, x, b in zip(lo, s, hi)):
                return False
        return True


def bucket_for(seq_len: int, buckets: Sequence[int] = DEFAULT_BUCKETS) -> int:
    """The smallest bucket holding ``seq_len`` tokens (the largest if none does: the caller
    truncates, as the tokenizer already does at the model's max length)."""
    if seq_len < 1:
        raise ValueError("sequence length must be >= 1")
    for b in sorted(buckets):
        if seq_len <= b:
            return b
    return max(buckets)


def pad_to_bucket(inputs: Mapping[str, np.ndarray], buckets: Sequence[int] = DEFAULT_BUCKETS,
                  pad_values: Mapping[str, int] | None = None,
                  seq_axis: int = 1) -> tuple[dict[str, np.ndarray], int]:
    """Right-pad every input along ``seq_axis`` to the bucket of its current length.

    Token ids pad with ``pad_values['input_ids']`` (the tokenizer's pad id), the attention
    mask with 0, so the padded positions are ignored. Inputs longer than the largest bucket
    are truncated, keeping the head — the prompt builder puts the ``<mask>`` inside it.
    Returns ``(padded inputs, bucket)``.
    """
    pad_values = dict(pad_values or {})
    lengths = {a.shape[seq_axis] for a in inputs.values()}
    if len(lengths) != 1:
        raise ValueError(f"inputs disagree on sequence length: {sorted(lengths)}")
    n = lengths.pop()
    b = bucket_for(n, buckets)
    out = {}
    for name, a in inputs.items():
        if n >= b:
            out[name] = np.take(a, np.arange(b), axis=seq_axis)
            continue
        widths = [(0, 0)] * a.ndim
        widths[seq_axis] = (0, b - n)
        out[name] = np.pad(a, widths, constant_values=pad_values.get(name, 0))
    return out, b


def sequence_profiles(input_names: Sequence[str], buckets: Sequence[int] = DEFAULT_BUCKETS,
                      max_batch: int = 8) -> list[ProfileShapes]:
    """One profile per bucket for [batch, seq] inputs: seq fixed at the bucket, batch
    1..max_batch (opt 1: a robot encodes one utterance at a time)."""
    return [ProfileShapes(tuple((n, (1, b), (1, b), (max_batch, b)) for n in input_names))
            for b in sorted(buckets)]


def fusion_profiles(input_ranks: Mapping[str, int], max_turns: int = 64, opt_turns: int = 16,
                    max_batch: int = 8, feature_dims: Mapping[str, int] | None = None
                    ) -> list[ProfileShapes]:
    """A single profile for the fusion head: batch 1..max_batch, turns 1..max_turns; the
    trailing feature dimension of rank-3 inputs is fixed (``feature_dims``)."""
    feature_dims = dict(feature_dims or {})
    shapes = []
    for name, rank in input_ranks.items():
        tail_lo = tail_hi = ()
        if rank == 3:
            d = feature_dims[name]
            tail_lo = tail_hi = (d,)
        shapes.append((name, (1, 1) + tail_lo, (1, opt_turns) + tail_lo,
                       (max_batch, max_turns) + tail_hi))
    return [ProfileShapes(tuple(shapes))]


def select_profile(profiles: Sequence[ProfileShapes],
                   shapes: Mapping[str, Sequence[int]]) -> int:
    """Index of the first profile whose ranges hold ``shapes``; ``ValueError`` if none."""
    for i, p in enumerate(profiles):
        if p.accepts(shapes):
            return i
    raise ValueError(f"no optimization profile accepts shapes {dict(shapes)}")


def engine_cache_key(device_name: str, compute_capability: Sequence[int], trt_version: str,
                     source_sha256: str, precision: str,
                     profiles: Sequence[ProfileShapes]) -> str:
    """Stable key of an engine: any change of device, TensorRT, source ONNX, precision or
    profiles changes it."""
    doc = {"device": device_name, "sm": list(compute_capability), "trt": trt_version,
           "onnx_sha256": source_sha256, "precision": precision,
           "profiles": [p.as_dict() for p in profiles]}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:20]


class EngineCache:
    """``<root>/<stage>.<precision>.<key>.engine`` plus a JSON sidecar saying what it is."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, stage: str, precision: str, key: str) -> Path:
        return self.root / f"{stage}.{precision}.{key}.engine"

    def lookup(self, stage: str, precision: str, key: str) -> Path | None:
        p = self.path(stage, precision, key)
        return p if p.is_file() and p.stat().st_size > 0 else None

    def store(self, stage: str, precision: str, key: str, blob: bytes, meta: dict) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        p = self.path(stage, precision, key)
        tmp = p.with_suffix(".tmp")
        tmp.write_bytes(blob)
        tmp.replace(p)
        p.with_suffix(".json").write_text(json.dumps(meta, indent=2, sort_keys=True))
        return p

    def load_meta(self, engine_path: str | Path) -> dict:
        return json.loads(Path(engine_path).with_suffix(".json").read_text())

    def stale(self, stage: str, precision: str, keep_key: str) -> list[Path]:
        """Engines of this stage and precision built for another key (other device/version)."""
        return [p for p in self.root.glob(f"{stage}.{precision}.*.engine")
                if p.name != self.path(stage, precision, keep_key).name]


# --- below: needs tensorrt + CUDA ------------------------------------------------------

def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable("the tensorrt package is not installed") from e
    return trt


def current_device() -> tuple[str, tuple[int, int]]:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailable("no CUDA device")
    return torch.cuda.get_device_name(0), tuple(torch.cuda.get_device_capability(0))


def build_engine(onnx_path: str | Path, precision: str, profiles: Sequence[ProfileShapes],
                 workspace_mb: int = 2048) -> bytes:
    """Parse the ONNX and build a serialized engine (TensorRT 10 API).

    ``precision``: ``fp32``, ``fp16`` or ``int8`` (the ONNX must then carry explicit Q/DQ
    nodes; FP16 is enabled too so non-quantized layers are not left in FP32).
    """
    trt = _trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(Path(onnx_path).read_bytes()):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: " + "; ".join(errors))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        config.set_flag(trt.BuilderFlag.INT8)
    for p in profiles:
        prof = builder.create_optimization_profile()
        for name, lo, opt, hi in p.shapes:
            prof.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(prof)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path} ({precision})")
    return bytes(blob)


def build_cached(onnx_path: str | Path, stage: str, precision: str,
                 profiles: Sequence[ProfileShapes], cache: EngineCache,
                 force: bool = False) -> tuple[Path, dict, bool]:
    """Build (or reuse) the engine of one stage. Returns ``(path, meta, built_now)``."""
    trt = _trt()
    device, sm = current_device()
    src_sha = sha256_file(onnx_path)
    key = engine_cache_key(device, sm, trt.__version__, src_sha, precision, profiles)
    meta = {"stage": stage, "precision": precision, "device": device, "sm": list(sm),
            "trt_version": trt.__version__, "source": Path(onnx_path).name,
            "source_sha256": src_sha, "cache_key": key,
            "profiles": [p.as_dict() for p in profiles]}
    hit = None if force else cache.lookup(stage, precision, key)
    if hit is not None:
        return hit, meta, False
    blob = build_engine(onnx_path, precision, profiles)
    return cache.store(stage, precision, key, blob, meta), meta, True


class TensorRTBackend(Backend):
    """Runs a serialized engine with named-tensor bindings (TensorRT 10 ``execute_async_v3``).

    Device buffers are torch CUDA tensors, allocated once per (tensor, shape) and reused;
    ``sequence_buckets`` (when set) pads [batch, seq] inputs to the bucket profiles the
    engine was built with and selects the matching optimization profile.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, precision: str = "fp16",
                 sequence_buckets: Sequence[int] | None = None,
                 pad_values: Mapping[str, int] | None = None):
        trt = _trt()
        import torch

        if not torch.cuda.is_available():
            raise BackendUnavailable("no CUDA device")
        self._trt, self._torch = trt, torch
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(Path(engine_path).read_bytes())
        if self.engine is None:
            raise RuntimeError(f"cannot deserialize TensorRT engine {engine_path} "
                               "(built for another device or TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        ins = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        super().__init__(ins, outs, precision)
        self.profiles = [
            ProfileShapes(tuple((n, *map(tuple, self.engine.get_tensor_profile_shape(n, k)))
                                for n in ins))
            for k in range(self.engine.num_optimization_profiles)]
        self.buckets = tuple(sequence_buckets) if sequence_buckets else None
        self.pad_values = dict(pad_values or {})
        self._stream = torch.cuda.Stream()
        self._buffers: dict[str, "torch.Tensor"] = {}
        self._profile = -1

    @property
    def device(self) -> str:
        return "cuda:" + self._torch.cuda.get_device_name(0)

    def _dtype(self, name):
        return self._torch.from_numpy(
            np.zeros(0, self._trt.nptype(self.engine.get_tensor_dtype(name)))).dtype

    def _buffer(self, name, shape):
        buf = self._buffers.get(name)
        if buf is None or tuple(buf.shape) != tuple(shape):
            buf = self._torch.empty(tuple(shape), dtype=self._dtype(name), device="cuda")
            self._buffers[name] = buf
        return buf

    def run(self, inputs):
        torch = self._torch
        feeds = {n: np.ascontiguousarray(inputs[n]) for n in self.input_names}
        if self.buckets:
            # Outputs are pooled vectors, so padding to the bucket does not change their shape.
            feeds, _ = pad_to_bucket(feeds, self.buckets, self.pad_values)
        k = select_profile(self.profiles, {n: a.shape for n, a in feeds.items()})
        if k != self._profile:
            self.context.set_optimization_profile_async(k, self._stream.cuda_stream)
            self._profile = k
        with torch.cuda.stream(self._stream):
            for n, a in feeds.items():
                buf = self._buffer(n, a.shape)
                buf.copy_(torch.from_numpy(a).to(buf.dtype), non_blocking=False)
                self.context.set_input_shape(n, tuple(a.shape))
                self.context.set_tensor_address(n, buf.data_ptr())
            outs = {}
            for n in self.output_names:
                shape = tuple(self.context.get_tensor_shape(n))
                buf = self._buffer(n, shape)
                self.context.set_tensor_address(n, buf.data_ptr())
                outs[n] = buf
            if not self.context.execute_async_v3(self._stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
        self._stream.synchronize()
        result = {n: b.float().cpu().numpy() if b.is_floating_point() else b.cpu().numpy()
                  for n, b in outs.items()}
        return result

    def close(self):
        self._buffers.clear()
        self.context = None
        self.engine = None


def stage_profiles(inputs: Sequence[Mapping], buckets: Sequence[int] = DEFAULT_BUCKETS,
                   max_batch: int = 8, max_turns: int = 64, opt_turns: int = 16,
                   max_samples: int = 16000 * 8) -> list[ProfileShapes]:
    """Optimization profiles of a stage from its input specs in the manifest
    (``[{"name", "dtype", "shape"}]`` where dynamic axes are named: ``batch``, ``seq``,
    ``turns``, ``samples``). A ``seq`` axis gets one profile per bucket (fixed length);
    every other dynamic axis one range."""
    def dims(spec, seq_len=None, which="min"):
        out = []
        for d in spec["shape"]:
            if isinstance(d, int):
                out.append(d)
            elif d == "batch":
                out.append({"min": 1, "opt": 1, "max": max_batch}[which])
            elif d == "seq":
                out.append(seq_len)
            elif d == "turns":
                out.append({"min": 1, "opt": opt_turns, "max": max_turns}[which])
            elif d == "samples":
                out.append({"min": 1600, "opt": 16000 * 3, "max": max_samples}[which])
            else:
                raise ValueError(f"unknown dynamic axis {d!r} of {spec['name']}")
        return tuple(out)

    has_seq = any("seq" in s["shape"] for s in inputs)
    lengths = sorted(buckets) if has_seq else [None]
    return [ProfileShapes(tuple((s["name"], dims(s, n, "min"), dims(s, n, "opt"),
                                 dims(s, n, "max")) for s in inputs)) for n in lengths]


def build_model_engines(model_dir: str | Path, precisions: Sequence[str] = ("fp16", "int8"),
                        buckets: Sequence[int] = DEFAULT_BUCKETS, max_batch: int = 8,
                        force: bool = False, progress: bool = True) -> list[dict]:
    """Build (or reuse) an engine per stage and precision on this device; register each in
    the manifest (kind ``engine``). INT8 engines are built from the explicit Q/DQ ONNX."""

    model_dir = Path(model_dir)
    _trt()
    current_device()  # refuse early, before making any variant, where engines cannot build
    ensure_variants(model_dir, precisions=["qdq"] if "int8" in precisions else [],
                    progress=progress)
    arts = read_manifest(model_dir)["artefacts"]
    fp32 = find_stage_files(model_dir, "onnx", "fp32")
    qdq = find_stage_files(model_dir, "onnx", "qdq")
    cache = EngineCache(model_dir / "engines")
    out = []
    jobs = [(s, p) for s in fp32 for p in precisions]
    for stage, precision in tqdm(jobs, desc="build-engines", unit="engine",
                                 disable=not progress):
        src_rel = qdq.get(stage) if precision == "int8" else fp32[stage]
        if src_rel is None:
            log.warning("no Q/DQ ONNX of %s: skipping its int8 engine", stage)
            continue
        profiles = stage_profiles(arts[fp32[stage]]["inputs"], buckets, max_batch)
        t0 = time.perf_counter()
        path, meta, built = build_cached(artefact_path(model_dir, src_rel), stage, precision,
                                         profiles, cache, force=force)
        meta.update(buckets=list(buckets) if any(
            "seq" in s["shape"] for s in arts[fp32[stage]]["inputs"]) else None,
            build_seconds=round(time.perf_counter() - t0, 1), reused=not built)
        register_artefact(model_dir, path, kind="engine", **{k: v for k, v in meta.items()
                                                            if k != "reused"})
        out.append(meta)
    return out


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model directory (exported first if needed)")
    p.add_argument("--precisions", default="fp16,int8", help="fp32, fp16, int8 (explicit Q/DQ)")
    p.add_argument("--buckets", default=",".join(map(str, DEFAULT_BUCKETS)),
                   help="text encoder sequence buckets (one profile each)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--force", action="store_true", help="rebuild even if cached")
    p.add_argument("--in-place", action="store_true",
                   help="write into DIR even if it is versioned in git (default: its overlay)")


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _trt()
        current_device()
        out_dir = writable_dir(args.model, args.in_place)
        built = build_model_engines(out_dir, [p for p in args.precisions.split(",") if p],
                                    [int(b) for b in args.buckets.split(",") if b],
                                    args.max_batch, args.force)
    except BackendUnavailable as e:
        print(f"build-engines: {e}. Engines are device-specific: run this on the target "
              "(Jetson / CUDA machine with the tensorrt package).")
        return 2
    for m in built:
        print(f"{m['stage']:<15} {m['precision']:<5} {m['device']} TRT {m['trt_version']} "
              f"key {m['cache_key']} {'reused' if m['reused'] else 'built'} "
              f"({m['build_seconds']} s)")
    return 0
