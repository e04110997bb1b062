"""ONNX export of every stage of an :class:`~erc_ros.models.erc_model.ErcModel`, checked
against PyTorch on real inputs.

Stages and their ONNX signatures (batch and sequence/turn axes dynamic)::

    text_encoder   input_ids, attention_mask int64 [B, L]            -> text_vec [B, Dt]
    audio_encoder  features float [B, F]  (prosody)                    -> audio_vec [B, Da]
                   input_values float, attention_mask int64 [B, N] (ssl)
    video_encoder  pixel_values float [B, F, C, S, S], frame_mask bool [B, F] -> video_vec [B, Dv]
    fusion         text/audio/video float [B, T, D*], modality_mask bool [B, T, 3],
                   speaker_ids int64 [B, T], padding_mask bool [B, T]
                                                   -> logits [B, T, C], modality_weights [B, T, 3]

The text encoder is exported with eager attention (the ORT transformer optimizer fuses its
Attention nodes; an SDPA export fuses none) and returns only the ``<mask>`` (or pooled)
vector. After each export, :func:`check_stage` runs PyTorch and ONNX Runtime on the same real
inputs and raises :class:`ExportMismatch` when the outputs differ beyond tolerance (or, for
the fusion head, when any label differs): a broken export never reaches a robot.

``python -m erc_ros export --model DIR`` writes ``DIR/onnx/<stage>.fp32.onnx`` and registers
each file in the model's manifest with its inputs, outputs and check results.
"""
from __future__ import annotations

import contextlib
import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
from tqdm import tqdm

from .backends import OrtBackend, TorchBackend
from .manifest import register_artefact
from .samples import sample_utterances, with_synthetic_media
from .stages import positional_names

log = logging.getLogger("erc_ros.runtime")

OPSET = 17
ONNX_DIR = "onnx"


class ExportMismatch(RuntimeError):
    """The exported ONNX disagrees with PyTorch on real inputs."""


@dataclass
class StageSpec:
    """What to export for one stage: a module called positionally with ``input_names``."""

    name: str
    module: object  # torch.nn.Module
    input_names: list[str]
    output_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]
    # Real inputs: the first is traced, all are used by the check.
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)
    # For the fusion head the first output is class logits: labels must agree.
    labels_output: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class CheckResult:
    stage: str
    samples: int
    max_abs_diff: dict[str, float]
    label_agreement: float | None
    passed: bool
    message: str = ""
    exporter: str = ""

    def as_dict(self) -> dict:
        return {"samples": self.samples, "max_abs_diff": self.max_abs_diff,
                "label_agreement": self.label_agreement, "passed": self.passed,
                "exporter": self.exporter}


def onnx_path(model_dir: str | Path, stage: str, precision: str = "fp32") -> Path:
    return Path(model_dir) / ONNX_DIR / f"{stage}.{precision}.onnx"


@contextlib.contextmanager
def eager_attention(module):
    """Switch every transformers backbone inside ``module`` to eager attention for the
    export (restored afterwards)."""
    changed = []
    for m in module.modules():
        cfg = getattr(m, "config", None)
        if cfg is None or not hasattr(cfg, "_attn_implementation") or \
                not hasattr(m, "set_attn_implementation"):
            continue
        old = cfg._attn_implementation
        if old != "eager":
            try:
                m.set_attn_implementation("eager")
            except Exception:  # older transformers: set the field directly
                cfg._attn_implementation = "eager"
            changed.append((m, cfg, old))
    try:
        yield
    finally:
        for m, cfg, old in changed:
            try:
                m.set_attn_implementation(old)
            except Exception:
                cfg._attn_implementation = old


def export_stage(spec: StageSpec, path: str | Path, opset: int = OPSET,
                 exporter: str = "torchscript") -> Path:
    """Export one stage to ONNX.

    ``torchscript`` (the default) gives the graph patterns the ORT transformer optimizer and
    TensorRT's parser know best. ``dynamo`` (torch.export) is the fallback for graphs the
    tracer freezes: torch 2.13's traced ``nn.MultiheadAttention`` bakes the query length
    into a Reshape, which the check catches (see :func:`export_and_check`).
    """
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    module = spec.module
    was_training = module.training
    module.eval()
    try:
        with eager_attention(module), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if exporter == "torchscript":
                sample = spec.samples[0]
                args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n]))
                             for n in spec.input_names)
                torch.onnx.export(module, args, str(path), input_names=spec.input_names,
                                  output_names=spec.output_names,
                                  dynamic_axes=spec.dynamic_axes, opset_version=opset,
                                  do_constant_folding=True, dynamo=False)
            elif exporter == "dynamo":
                _export_dynamo(spec, path)
            else:
                raise ValueError(f"unknown exporter {exporter!r}")
    finally:
        module.train(was_training)
    patch_ort_gaps(path)
    return path


def _export_dynamo(spec: StageSpec, path: Path) -> None:
    """torch.export-based export with named dynamic dims. Traced on the sample with the
    largest shapes: torch.export specialises dimensions that are 1 in the example."""

    import torch

    sample = max(spec.samples, key=lambda s: sum(a.size for a in s.values()))
    args = tuple(torch.from_numpy(np.ascontiguousarray(sample[n])) for n in spec.input_names)
    dims: dict[str, object] = {}
    shapes = {}
    for n in spec.input_names:
        axes = spec.dynamic_axes.get(n, {})
        shapes[n] = {i: dims.setdefault(name, torch.export.Dim(name, min=1, max=4096))
                     for i, name in axes.items()} or None
    level = logging.getLogger("torch.onnx").level
    logging.getLogger("torch.onnx").setLevel(logging.WARNING)
    try:
        torch.onnx.export(spec.module, args, str(path), input_names=spec.input_names,
                          output_names=spec.output_names, dynamic_shapes=shapes, dynamo=True,
                          opset_version=max(OPSET, 18), external_data=False, verbose=False)
    finally:
        logging.getLogger("torch.onnx").setLevel(level)


def patch_ort_gaps(path: str | Path) -> int:
    """Rewrite ops ONNX Runtime's CPU provider lacks into equivalents it has; returns the
    number of nodes rewritten. A bool ``EyeLike`` (``torch.eye(dtype=bool)``, used by
    attention masks) becomes ``Cast`` to float, a float ``EyeLike``, ``Cast`` to bool."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(path))
    inferred = onnx.shape_inference.infer_shapes(model)
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
    for node in model.graph.node:  # ConstantOfShape: its value fixes the type
        if node.op_type == "ConstantOfShape":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            types[node.output[0]] = value.data_type if value is not None else TensorProto.FLOAT
    changed = 0
    nodes = []
    for node in model.graph.node:
        dtype = next((a for a in node.attribute if a.name == "dtype"), None)
        out_type = dtype.i if dtype is not None else types.get(node.input[0] if node.input else "")
        if node.op_type == "EyeLike" and out_type == TensorProto.BOOL:
            if dtype is None:
                node.attribute.append(helper.make_attribute("dtype", TensorProto.FLOAT))
            else:
                dtype.i = TensorProto.FLOAT
            # ORT registers EyeLike by input type too (no bool): cast in and out.
            out, src = node.output[0], node.input[0]
            name = node.name or "EyeLike"
            node.input[0] = src + "_float_in"
            node.output[0] = out + "_float"
            nodes += [helper.make_node("Cast", [src], [src + "_float_in"], to=TensorProto.FLOAT,
                                       name=name + "_in_float"),
                      node, helper.make_node("Cast", [out + "_float"], [out], to=TensorProto.BOOL,
                                             name=name + "_to_bool")]
            changed += 1
        else:
            nodes.append(node)
    if changed:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.save(model, str(path))
    return changed


def check_stage(spec: StageSpec, path: str | Path, atol: float = 1e-3,
                min_label_agreement: float = 1.0, run_onnx: Callable | None = None
                ) -> CheckResult:
    """Run PyTorch and the ONNX file on every sample; compare outputs.

    Tolerance is relative to the output scale (``atol * max(1, max|torch output|)``): FP32
    exports agree to ~1e-6, a wrong graph (a baked-in shape, a dropped mask) by far more.
    """
    torch_be = TorchBackend(spec.module, spec.input_names, spec.output_names, threads=0)
    onnx_be = run_onnx or OrtBackend(path, providers=["CPUExecutionProvider"], threads=0).run
    diffs = {n: 0.0 for n in spec.output_names}
    agree = total = 0
    failures = []
    for s in spec.samples:
        ref = torch_be.run(s)
        got = onnx_be(s)
        for n in spec.output_names:
            if n not in ref:
                continue
            if ref[n].shape != got[n].shape:
                failures.append(f"{n}: shape {got[n].shape} != torch {ref[n].shape}")
                continue
            d = float(np.abs(ref[n].astype(np.float64) - got[n]).max()) if ref[n].size else 0.0
            diffs[n] = max(diffs[n], d)
            scale = max(1.0, float(np.abs(ref[n]).max()) if ref[n].size else 1.0)
            if d > atol * scale:
                failures.append(f"{n}: max abs diff {d:.3g} > {atol * scale:.3g}")
        if spec.labels_output and spec.labels_output in ref:
            a, b = ref[spec.labels_output].argmax(-1), got[spec.labels_output].argmax(-1)
            agree += int((a == b).sum())
            total += a.size
    agreement = agree / total if total else None
    if agreement is not None and agreement < min_label_agreement:
        failures.append(f"label agreement {agreement:.4f} < {min_label_agreement}")
    return CheckResult(spec.name, len(spec.samples), diffs, agreement, not failures,
                       "; ".join(sorted(set(failures))))


def export_and_check(spec: StageSpec, path: str | Path, exporter: str = "auto",
                     **check_kw) -> CheckResult:
    """Export then check against PyTorch. ``auto``: TorchScript first, torch.export when
    the TorchScript graph fails the check. A failed check deletes the file and raises
    :class:`ExportMismatch`."""
    tried = []
    for ex in (("torchscript", "dynamo") if exporter == "auto" else (exporter,)):
        try:
            export_stage(spec, path, exporter=ex)
            result = check_stage(spec, path, **check_kw)
        except ExportMismatch:
            raise
        except Exception as e:  # noqa: BLE001 - a graph ORT cannot run is a failed export
            result = CheckResult(spec.name, len(spec.samples), {}, None, False,
                                 f"{type(e).__name__}: {str(e)[:300]}")
        if result.passed:
            result.exporter = ex
            return result
        tried.append(f"{ex}: {result.message}")
        log.info("%s export of %s failed its check (%s)", ex, spec.name, result.message)
    Path(path).unlink(missing_ok=True)
    raise ExportMismatch(f"ONNX export of {spec.name} disagrees with PyTorch: "
                         + " | ".join(tried))


# ------------------------------------------------------------------ ErcModel stages

def stage_specs(model, dialogues=None, max_samples: int = 8) -> list[StageSpec]:
    """The exportable stages of ``model`` with real sample inputs built from ``dialogues``
    (lists of :class:`~erc_ros.core.types.Utterance`) by the model's own preprocessor."""
    dialogues = dialogues or sample_utterances()
    pre = model.preprocessor
    k = pre.config.prompt.past_context
    flat = [(d[i], d[max(0, i - k):i]) for d in dialogues for i in range(len(d))]
    step = max(1, len(flat) // max_samples)
    picked = flat[::step][:max_samples]
    specs = []

    # Text: batch of 1 and a padded batch of 2 (the mask must really be honoured).
    text_samples = [pre.text_inputs(u, c) for u, c in picked]
    if len(picked) >= 2:
        text_samples.append(pre.pad_text([pre.text_ids(u, c) for u, c in picked[:2]]))
    specs.append(StageSpec(
        "text_encoder", model.text_encoder, ["input_ids", "attention_mask"], ["text_vec"],
        {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
         "text_vec": {0: "batch"}}, text_samples,
        meta={"num_heads": int(model.text_encoder.backbone.config.num_attention_heads),
              "hidden_size": int(model.text_encoder.dim), "transformer": True,
              "pad_id": int(pre.pad_id)}))

    # Real speech and faces where the dialogues carry them, synthetic stand-ins otherwise.
    with_audio = [u if u.has_audio else with_synthetic_media(u, seed=i)
                  for i, (u, _) in enumerate(picked)]
    with_faces = [u if u.has_video else with_synthetic_media(u, seed=i)
                  for i, (u, _) in enumerate(picked)]
    # Encoders of modalities the head was not trained on are not run, so not exported.
    if model.uses("audio"):
        names = positional_names(model.audio_encoder)
        samples = [pre.audio_inputs(u) for u in with_audio]
        dyn = {n: {0: "batch"} for n in names}
        if "input_values" in names:  # raw waveform: the sample axis is dynamic too
            dyn = {n: {0: "batch", 1: "samples"} for n in names}
        dyn["audio_vec"] = {0: "batch"}
        specs.append(StageSpec("audio_encoder", model.audio_encoder, names, ["audio_vec"], dyn,
                               samples, meta={"encoder_kind": model.config.audio.kind,
                                              "transformer": model.config.audio.kind == "ssl",
                                              "matmul_only": True}))
    if model.uses("video"):
        names = positional_names(model.video_encoder)
        samples = [pre.video_inputs(u) for u in with_faces]
        dyn = {n: {0: "batch"} for n in names}
        dyn["video_vec"] = {0: "batch"}
        specs.append(StageSpec("video_encoder", model.video_encoder, names, ["video_vec"], dyn,
                               samples, meta={"encoder_kind": model.config.video.kind}))

    specs.append(StageSpec(
        "fusion", model.fusion,
        ["text", "audio", "video", "modality_mask", "speaker_ids", "padding_mask"],
        ["logits", "modality_weights"],
        {n: {0: "batch", 1: "turns"} for n in
         ("text", "audio", "video", "modality_mask", "speaker_ids", "padding_mask",
          "logits", "modality_weights")},
        fusion_samples(model, dialogues), labels_output="logits"))
    return specs


def fusion_samples(model, dialogues) -> list[dict[str, np.ndarray]]:
    """Fusion inputs from real encoder outputs over whole dialogues (and one padded batch)."""
    import torch

    model.eval()
    pre = model.preprocessor
    k = pre.config.prompt.past_context
    per = []
    with torch.inference_mode():
        for j, d in enumerate(dialogues[:4]):
            d = [with_synthetic_media(u, seed=100 * j + i) if i % 2 == 0 else u
                 for i, u in enumerate(d)]
            text, audio, video, mask = model.encode(d, [d[max(0, i - k):i] for i in range(len(d))])
            per.append({"text": text.numpy()[None], "audio": audio.numpy()[None],
                        "video": video.numpy()[None], "modality_mask": mask.numpy()[None],
                        "speaker_ids": pre.speaker_ids(d)[None],
                        "padding_mask": np.zeros((1, len(d)), bool)})
    samples = list(per)
    if len(per) >= 2:  # a padded batch of two dialogues
        t = max(p["text"].shape[1] for p in per[:2])
        batch = {}
        for n in per[0]:
            rows = []
            for p in per[:2]:
                a = p[n]
                widths = [(0, 0)] * a.ndim
                widths[1] = (0, t - a.shape[1])
                rows.append(np.pad(a, widths, constant_values=True if n == "padding_mask" else 0))
            batch[n] = np.concatenate(rows)
        samples.append(batch)
    return samples


def export_model(model, model_dir: str | Path, dialogues=None, register: bool = True,
                 stages: Sequence[str] | None = None, progress: bool = True) -> dict:
    """Export every stage of ``model`` into ``model_dir/onnx``, check each against PyTorch,
    and register the files in the manifest. Returns ``{stage: {path, check, seconds}}``."""

    specs = [s for s in stage_specs(model, dialogues) if not stages or s.name in stages]
    report = {}
    for spec in tqdm(specs, desc="export", unit="stage", disable=not progress):
        t0 = time.perf_counter()
        path = onnx_path(model_dir, spec.name, "fp32")
        res = export_and_check(spec, path)
        report[spec.name] = {"path": str(path), "check": res.as_dict(),
                             "seconds": round(time.perf_counter() - t0, 2)}
        if register:
            register_artefact(model_dir, path, kind="onnx", stage=spec.name, precision="fp32",
                              inputs=_io_specs(spec.samples[0], spec.input_names,
                                               spec.dynamic_axes),
                              outputs=list(spec.output_names), opset=OPSET,
                              check=res.as_dict(), **spec.meta)
    return report


def _io_specs(sample: Mapping[str, np.ndarray], names, dynamic_axes) -> list[dict]:
    out = []
    for n in names:
        a = sample[n]
        dims = [dynamic_axes.get(n, {}).get(i, int(s)) for i, s in enumerate(a.shape)]
        out.append({"name": n, "dtype": str(a.dtype), "shape": dims})
    return out
