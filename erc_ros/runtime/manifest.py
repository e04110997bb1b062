"""The runtime's side of the model manifest (engineer B's ``erc_ros.models.artefact``).

ONNX files, quantized variants and TensorRT engines live inside the model directory and are
listed in its ``manifest.json`` like the weights: sha256, bytes, kind (``onnx`` / ``engine``),
stage, precision, input specs, how they were made and checked. Loading verifies the hashes:
a tampered or missing file is refused with an error naming it.
"""
from __future__ import annotations

from pathlib import Path

from erc_ros.models.artefact import (ArtefactError, add_artefact, load_model_dir,  # noqa: F401
                                     read_manifest, remove_artefact, sha256_file,
                                     verify_model_dir)


def register_artefact(model_dir: str | Path, path: str | Path, kind: str, **meta) -> dict:
    """Register ``path`` (inside ``model_dir``) in the manifest under its relative path."""
    rel = Path(path).resolve().relative_to(Path(model_dir).resolve()).as_posix()
    return add_artefact(model_dir, rel, kind, **meta)


def runtime_artefacts(model_dir: str | Path, kind: str | None = None) -> dict[str, dict]:
    """``relpath -> entry`` of the ONNX/engine artefacts (optionally one kind)."""
    arts = read_manifest(model_dir).get("artefacts", {})
    return {r: e for r, e in arts.items()
            if e.get("kind") in (("onnx", "engine") if kind is None else (kind,))}


def find_stage_files(model_dir: str | Path, kind: str, precision: str) -> dict[str, str]:
    """``stage -> relpath`` of the artefacts of one kind and precision."""
    return {e["stage"]: r for r, e in runtime_artefacts(model_dir, kind).items()
            if e.get("precision") == precision and "stage" in e}


def verify_files(model_dir: str | Path, relpaths) -> None:
    """Check the sha256 of just these listed files (the runtime's artefacts)."""
    model_dir = Path(model_dir)
    arts = read_manifest(model_dir).get("artefacts", {})
    for rel in relpaths:
        f = model_dir / rel
        e = arts.get(rel)
        if e is None:
            raise ArtefactError(f"{f}: not listed in the manifest")
        if not f.is_file():
            raise ArtefactError(f"{f}: listed in the manifest but missing")
        if f.stat().st_size != e.get("bytes", f.stat().st_size) or sha256_file(f) != e["sha256"]:
            raise ArtefactError(f"{f}: sha256 mismatch (file modified or corrupted)")


def load_model(model_dir: str | Path):
    """The :class:`ErcModel` of a directory (every listed file verified first)."""
    return load_model_dir(model_dir)
