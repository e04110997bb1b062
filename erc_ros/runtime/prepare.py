"""`python -m erc_ros prepare --model DIR`: make the files the runtime runs, before it runs.

Loading never builds (:meth:`erc_ros.runtime.pipeline.EmotionPipeline.from_model_dir` only
verifies and loads what is there). This is the one step that builds: it exports the model's
stages to ONNX (checked against PyTorch) and makes the quantized variants, into the model's
overlay in the cache (``$ERC_ROS_CACHE``, default ``~/.cache/erc_ros``; keyed by the
manifest's sha256, not the model's path, see :func:`erc_ros.runtime.manifest.overlay_dir`)
— never into the model directory, which may be installed, tracked or read-only.
Idempotent: what exists is verified and kept. Run by set-up for ``models/default``, by the
CLI, or at configure by the emotion node's opt-in ``prepare`` parameter.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Sequence

from .manifest import default_model_dir, find_stage_files, load_model, runtime_dir
from .quantize import ensure_variants
from .stages import needed_stages

log = logging.getLogger(__name__)

#: What a CPU machine runs: ONNX Runtime INT8 (4x faster than torch FP32, same labels).
DEFAULT_PRECISIONS = ("int8",)


def missing(model_dir: str | Path, model, precisions: Sequence[str]) -> list[str]:
    """The precisions (``fp32`` included) whose ONNX files are not yet prepared."""

    needed = needed_stages(model)
    rdir = runtime_dir(model_dir, needed, "fp32")
    if rdir is None:
        return ["fp32", *[p for p in precisions if p != "fp32"]]
    return [p for p in precisions if not needed <= set(find_stage_files(rdir, "onnx", p))]


def prepare(model_dir: str | Path, precisions: Sequence[str] = DEFAULT_PRECISIONS,
            model=None, progress: bool = False) -> Path:
    """Make the FP32 ONNX files and ``precisions`` of ``model_dir``; returns the directory
    holding them (the model directory when it ships them, else its cache overlay)."""

    model = model if model is not None else load_model(model_dir)
    todo = missing(model_dir, model, precisions)
    rdir = runtime_dir(model_dir, needed_stages(model), "fp32", create=bool(todo))
    if todo:
        t0 = time.perf_counter()
        log.warning("preparing %s: %s ONNX files into %s (once; later starts load them)",
                    model_dir, ", ".join(todo), rdir)
        ensure_variants(rdir, model, list(precisions), progress=progress)
        log.warning("prepared %s in %.1f s", rdir, time.perf_counter() - t0)
    return rdir


def add_arguments(p) -> None:
    p.add_argument("--model", default="", help="model directory (default: models/default)")
    p.add_argument("--precisions", default=",".join(DEFAULT_PRECISIONS),
                   help="quantized variants to make besides FP32 (int8, woq8, fp16, qdq)")
    p.add_argument("--threads", type=int, default=2)


def run(args) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model_dir = args.model or default_model_dir()
    precisions = [p for p in args.precisions.split(",") if p]
    rdir = prepare(model_dir, precisions, progress=True)
    print(f"prepare: {model_dir}: fp32 + {', '.join(precisions) or 'nothing else'} in {rdir}")
    return 0
