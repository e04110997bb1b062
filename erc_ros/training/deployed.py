"""What the robot runs, measured while training: the text vectors of a model's ONNX Runtime
INT8 copy.

On a CPU the nodes run the text encoder as ONNX Runtime dynamic INT8 (``backend: auto``,
:mod:`erc_ros.runtime.quantize`), so a model selected on its PyTorch FP32 dev figure alone
can lose its edge there: a round kept at 61.78 FP32 scored 60.84 in INT8 (docs/results.md).
:func:`int8_text_vectors` exports the text encoder exactly as ``prepare`` does (the checked
ONNX export, the ORT transformer optimizer, dynamic INT8), runs it one prompt at a time with
the past context the pipeline gives it, and returns the vectors per dialogue, so that a head
can be scored on them. A recipe with ``select: "fp32+int8"`` selects by the worse of the two
figures (:func:`selection_figure`).
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
from tqdm import tqdm

from erc_ros.runtime.backends import OrtBackend
from erc_ros.runtime.export import export_and_check, onnx_path, stage_specs
from erc_ros.runtime.quantize import make_variant

#: The selection rules a recipe's ``select`` may name (the command-line choices too: this
#: module imports torch only where a function needs it, so parsers can read this).
SELECT_RULES = ("fp32", "fp32+int8")


def int8_text_encoder(model, directory: str | Path) -> Path:
    """Write ``model``'s text encoder as ``prepare`` makes it for a CPU (the checked ONNX
    export, the ORT transformer optimizer, dynamic INT8) into ``directory``; returns the
    INT8 file."""

    was_training = model.training
    model.eval()
    try:
        spec = next(s for s in stage_specs(model) if s.name == "text_encoder")
        fp32, int8 = (onnx_path(directory, "text_encoder", p) for p in ("fp32", "int8"))
        export_and_check(spec, fp32)
        make_variant("int8", fp32, int8, transformer={"num_heads": spec.meta["num_heads"],
                                                      "hidden_size": spec.meta["hidden_size"]})
    finally:
        model.train(was_training)
    return int8


def int8_text_vectors(model, dialogues: Sequence, threads: int = 2,
                      progress: bool = True) -> list[torch.Tensor]:
    """[T, D] float32 text vectors of each dialogue's utterances from ``model``'s ONNX Runtime
    INT8 text encoder (:func:`int8_text_encoder`), each prompt alone with its past context, as
    :class:`~erc_ros.runtime.pipeline.EmotionPipeline` feeds it."""
    import torch

    pre = model.preprocessor
    k = pre.config.prompt.past_context
    out = []
    with tempfile.TemporaryDirectory(prefix="erc-int8-") as tmp:
        ort = OrtBackend(int8_text_encoder(model, tmp), providers=["CPUExecutionProvider"],
                         threads=threads, precision="int8")
        try:
            for d in tqdm(dialogues, desc="INT8 text vectors", disable=not progress):
                u = d.utterances
                rows = [ort.run(pre.text_inputs(u[i], u[max(0, i - k):i] if k else []))
                        ["text_vec"][0] for i in range(len(u))]
                out.append(torch.as_tensor(np.stack(rows).astype(np.float32)))
        finally:
            ort.close()
    return out


def with_text(cached: Sequence, vectors: Sequence["torch.Tensor"]) -> list:
    """``cached`` dialogues (:class:`~erc_ros.training.fusion_stage.CachedDialogue`) with
    their text vectors replaced by ``vectors`` (the same utterances, another copy of the
    encoder)."""

    if len(cached) != len(vectors):
        raise ValueError(f"{len(vectors)} vector sets for {len(cached)} dialogues")
    out = []
    for c, v in zip(cached, vectors):
        if tuple(v.shape) != tuple(c.text.shape):
            raise ValueError(f"text vectors {tuple(v.shape)} for a dialogue of "
                             f"{tuple(c.text.shape)}")
        out.append(dataclasses.replace(c, text=v.to(c.text.dtype)))
    return out


def selection_figure(record: dict, rule: str = "fp32") -> float:
    """The dev figure a model or head is selected by: its FP32 weighted F1 (``fp32``), or the
    worse of that and its INT8 copy's (``fp32+int8``; a record without an INT8 figure counts
    by FP32 alone). -1 for an empty record."""
    if rule not in SELECT_RULES:
        raise ValueError(f"unknown selection rule {rule!r}; one of {SELECT_RULES}")
    f = record.get("weighted_f1", -1.0)
    if rule == "fp32+int8" and record.get("weighted_f1_int8") is not None:
        return min(f, record["weighted_f1_int8"])
    return f
