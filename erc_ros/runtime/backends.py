"""One `Backend` interface for every way a model stage can run.

A stage (text encoder, audio encoder, video encoder, fusion head) is a function from named
numpy arrays to named numpy arrays. A backend runs it in PyTorch, in ONNX Runtime (CPU, CUDA
or its TensorRT provider) or as a native TensorRT engine (``engines.TensorRTBackend``). The
pipeline picks one per stage through :func:`resolve_backend` (fallback order
``tensorrt -> onnxruntime -> torch``) and logs what runs where; nothing outside
``erc_ros.runtime`` knows which one it got.

torch, onnxruntime and tensorrt are imported lazily: a robot running ONNX needs no training
dependency, and a machine without TensorRT never imports it.
"""
from __future__ import annotations

import logging
import os
import platform
from abc import ABC, abstractmethod
from typing import Mapping, Sequence

import numpy as np

log = logging.getLogger("erc_ros.runtime")

#: Backend names, in the order `auto` tries them.
BACKEND_ORDER = ("tensorrt", "onnxruntime", "torch")

#: ONNX Runtime execution providers, best first. Only those the installed build offers are
#: used; CPU always closes the list so a session can always be created.
ORT_PROVIDER_ORDER = ("TensorrtExecutionProvider", "CUDAExecutionProvider",
                      "CPUExecutionProvider")


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here (package missing, no GPU, no artefact)."""


class Backend(ABC):
    """Runs one model stage: ``run({input name: array}) -> {output name: array}``."""

    #: "torch", "onnxruntime" or "tensorrt"
    name: str = ""

    def __init__(self, input_names: Sequence[str], output_names: Sequence[str],
                 precision: str = "fp32"):
        self.input_names = list(input_names)
        self.output_names = list(output_names)
        self.precision = precision

    @abstractmethod
    def run(self, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the stage on numpy inputs and return numpy outputs (float32 for floats)."""

    @property
    def device(self) -> str:
        return "cpu"

    def describe(self) -> str:
        """One line saying what runs where, for the log and /diagnostics."""
        return f"{self.name}/{self.precision} on {self.device}"

    def close(self) -> None:
        """Free what the backend holds (sessions, device buffers)."""


def _as_float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype in (np.float16, np.float64) else a


class TorchBackend(Backend):
    """Runs an ``nn.Module`` under ``torch.inference_mode``.

    The module takes its inputs positionally in ``input_names`` order and returns a tensor or
    a tuple of tensors in ``output_names`` order (missing trailing outputs are allowed: a
    fusion head without modality weights returns only logits).
    """

    name = "torch"

    def __init__(self, module, input_names, output_names, precision="fp32", threads=2,
                 device="cpu"):
        super().__init__(input_names, output_names, precision)
        import torch

        # ``threads`` is informational here: torch has one intra-op pool per process, sized
        # by the entry point (erc_ros.process.configure), not by a backend.
        self.threads = int(threads or torch.get_num_threads())
        self._torch = torch
        self._device = device
        self.module = module.eval().to(device)

    @property
    def device(self) -> str:
        return str(self._device)

    def run(self, inputs):
        torch = self._torch
        args = [torch.from_numpy(np.ascontiguousarray(inputs[n])).to(self._device)
                for n in self.input_names]
        with torch.inference_mode():
            out = self.module(*args)
        if not isinstance(out, (tuple, list)):
            out = (out,)
        return {n: _as_float32(t.detach().float().cpu().numpy()) if t.is_floating_point()
                else t.detach().cpu().numpy()
                for n, t in zip(self.output_names, out) if t is not None}


def available_ort_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def choose_ort_providers(prefer: Sequence[str] | None = None,
                         available: Sequence[str] | None = None) -> list[str]:
    """The providers to ask ONNX Runtime for, best first, restricted to what is installed.

    ``prefer`` narrows the list (e.g. ``["CPUExecutionProvider"]``); CPU is always appended
    last so a session can always be created (ORT falls back node by node).
    """
    available = list(available) if available is not None else available_ort_providers()
    wanted = list(prefer) if prefer else list(ORT_PROVIDER_ORDER)
    chosen = [p for p in wanted if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


class OrtBackend(Backend):
    """ONNX Runtime session on the best available provider.

    On CPU it calls ``session.run`` directly (numpy in, numpy out: no copies to save). On CUDA
    and the TensorRT provider it uses IO binding so inputs are copied once and outputs stay
    on the device until fetched.
    """

    name = "onnxruntime"

    def __init__(self, path, providers: Sequence[str] | None = None, threads: int = 2,
                 precision: str = "fp32", trt_cache_dir: str | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        if threads:
            so.intra_op_num_threads = int(threads)
            so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # No busy-waiting between runs: several sessions (one per stage, and the other
        # variants of a benchmark) share 2 cores with torch; spinning threads starve them.
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        so.log_severity_level = 3
        chosen = choose_ort_providers(providers)
        provider_args = []
        for p in chosen:
            if p == "TensorrtExecutionProvider":
                opts = {"trt_fp16_enable": precision in ("fp16", "int8"),
                        "trt_int8_enable": precision == "int8",
                        "trt_engine_cache_enable": trt_cache_dir is not None}
                if trt_cache_dir:
                    opts["trt_engine_cache_path"] = str(trt_cache_dir)
                provider_args.append((p, opts))
            else:
                provider_args.append(p)
        self.path = str(path)
        self.session = ort.InferenceSession(self.path, so, providers=provider_args)
        super().__init__([i.name for i in self.session.get_inputs()],
                         [o.name for o in self.session.get_outputs()], precision)
        self.providers = self.session.get_providers()
        self._input_types = {i.name: i.type for i in self.session.get_inputs()}
        self._use_binding = self.providers[0] != "CPUExecutionProvider"
        self._binding = self.session.io_binding() if self._use_binding else None

    @property
    def device(self) -> str:
        return self.providers[0].replace("ExecutionProvider", "")

    def _feed(self, inputs):
        feeds = {}
        for n in self.input_names:
            a = np.ascontiguousarray(inputs[n])
            t = self._input_types[n]
            # The exported graph fixes the dtypes (int64 ids, bool masks, float/half
            # features): cast here so callers need not know the variant.
            if t == "tensor(int64)" and a.dtype != np.int64:
                a = a.astype(np.int64)
            elif t == "tensor(bool)" and a.dtype != np.bool_:
                a = a.astype(np.bool_)
            elif t == "tensor(float)" and a.dtype != np.float32:
                a = a.astype(np.float32)
            elif t == "tensor(float16)" and a.dtype != np.float16:
                a = a.astype(np.float16)
            feeds[n] = a
        return feeds

    def run(self, inputs):
        feeds = self._feed(inputs)
        if not self._use_binding:
            outs = self.session.run(self.output_names, feeds)
        else:
            b = self._binding
            b.clear_binding_inputs()
            b.clear_binding_outputs()
            for n, a in feeds.items():
                b.bind_cpu_input(n, a)
            for n in self.output_names:
                b.bind_output(n, "cuda")
            self.session.run_with_iobinding(b)
            outs = b.copy_outputs_to_cpu()
        return {n: _as_float32(o) for n, o in zip(self.output_names, outs)}

    def close(self):
        self._binding = None
        self.session = None


def tensorrt_available() -> bool:
    """True when the ``tensorrt`` package imports and a CUDA device is visible."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_backend(requested: str, have_onnx: bool, have_engine: bool,
                    trt_ok: bool | None = None, ort_ok: bool | None = None) -> tuple[str, str]:
    """Pick the backend to run: returns ``(name, why)``.

    ``auto`` tries :data:`BACKEND_ORDER` and takes the first that can run here with the
    artefacts present; an explicit name is honoured or refused with
    :class:`BackendUnavailable` (never silently replaced: a robot configured for TensorRT
    that quietly runs torch would miss its latency budget without anyone knowing).
    """
    trt_ok = tensorrt_available() if trt_ok is None else trt_ok
    ort_ok = onnxruntime_available() if ort_ok is None else ort_ok
    reasons = {
        "tensorrt": None if (trt_ok and have_engine) else
        ("no tensorrt package / CUDA device" if not trt_ok else "no engine built for this device"),
        "onnxruntime": None if (ort_ok and have_onnx) else
        ("onnxruntime not installed" if not ort_ok else "no ONNX artefacts"),
        "torch": None,
    }
    if requested == "auto":
        skipped = []
        for name in BACKEND_ORDER:
            if reasons[name] is None:
                why = "auto: " + ("; ".join(skipped) + "; " if skipped else "") + f"{name} available"
                return name, why
            skipped.append(f"{name} skipped ({reasons[name]})")
    if requested not in reasons:
        raise ValueError(f"unknown backend {requested!r}; choose auto or one of {BACKEND_ORDER}")
    if reasons[requested] is not None:
        raise BackendUnavailable(f"backend {requested!r} cannot run here: {reasons[requested]}")
    return requested, "requested"


def cpu_flags() -> set[str]:
    """This CPU's feature flags (``/proc/cpuinfo``; empty where there is none)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


#: x86 flags whose integer dot products make ONNX Runtime's dynamic INT8 pay: VNNI's
#: ``vpdpbusd`` (AVX-512 or AVX) and AMX. Without them MLAS multiplies u8 x s8 with AVX2's
#: ``vpmaddubsw``, which saturates its 16-bit pair sums.
INT8_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_int8(flags: set[str] | None = None, arch: str | None = None) -> tuple[bool, str]:
    """Whether ``precision: auto`` runs dynamic INT8 on this CPU, and why (for the log and
    /diagnostics).

    On x86 without VNNI (the AVX2-only AMD EPYC machines) the shipped model's INT8 text
    encoder ran no faster than its FP32 export (p50 47.2 vs 47.3 ms, 123 tokens, 2 threads)
    and read MELD dev 0.7 weighted F1 lower (61.29 against 62.00; on a VNNI Xeon 61.90 at
    about a third of FP32's time): there FP32 is both faster and right (docs/deployment.md).
    Other architectures keep INT8 (not measured here).
    """
    arch = (arch or platform.machine()).lower()
    if arch not in ("x86_64", "amd64", "i686", "x86"):
        return True, f"int8 ({arch}: dynamic INT8 kept, not measured against fp32 here)"
    flags = cpu_flags() if flags is None else flags
    have = [f for f in INT8_DOT_FLAGS if f in flags]
    if have:
        return True, f"int8 (this CPU has {have[0]})"
    return False, ("fp32 (this CPU has no VNNI: dynamic INT8 runs no faster than fp32 on "
                   "AVX2 alone and reads MELD dev 0.7 lower)")


def default_threads() -> int:
    """Threads per session: at most 2 (the machines are shared), overridable by env."""
    return int(os.environ.get("ERC_ROS_THREADS", "2"))
