"""The runtime's side of the model manifest (engineer B's ``erc_ros.models.artefact``).

ONNX files, quantized variants and TensorRT engines live inside the model directory and are
listed in its ``manifest.json`` like the weights: sha256, bytes, kind (``onnx`` / ``engine``),
stage, precision, input specs, how they were made and checked. Loading verifies the hashes:
a tampered or missing file is refused with an error naming it.

Every path taken from a manifest goes through :func:`artefact_path` (or :func:`verify_files`,
which checks the file too): the path rules of ``erc_ros.models.artefact`` (plain relative
paths that resolve inside the directory), with one exception, decided here: the files of a
cache overlay (:func:`overlay_dir`) are links into a model with its manifest, and may
resolve inside that model only when the overlay is a directory of :func:`cache_root` named
after that model's current manifest (:func:`overlay_source`). Every directory made in the
cache goes through :func:`cache_path`, which refuses a name that would land outside it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
from pathlib import Path

from erc_ros import paths
from erc_ros.models.artefact import (  # noqa: F401
    ArtefactError,
    add_artefact,
    artefact_file,
    check_model_id,
    check_relpath,
    load_model_dir,
    read_manifest,
    remove_artefact,
    sha256_file,
    verify_file,
    verify_model_dir,
)
from erc_ros.paths import CHECKOUT, share_path


def default_model_dir() -> str:
    """The embedded default model: ``models/default`` of the source checkout that is running,
    else ``share/erc_ros/models/default`` of a colcon install (:func:`erc_ros.paths.share_path`)."""
    found = share_path("models", "default")
    return str(found or CHECKOUT / "models" / "default")


def register_artefact(model_dir: str | Path, path: str | Path, kind: str, **meta) -> dict:
    """Register ``path`` (inside ``model_dir``) in the manifest under its relative path."""
    try:
        rel = Path(path).resolve().relative_to(Path(model_dir).resolve()).as_posix()
    except ValueError:
        raise ArtefactError(f"{path}: not inside the model directory {model_dir}: cannot "
                            "register it", "unsafe_path") from None
    return add_artefact(model_dir, rel, kind, **meta)


def artefact_path(model_dir: str | Path, rel: str) -> Path:
    """The file of the listed path ``rel`` of ``model_dir`` (a model directory or its cache
    overlay), refused if it leaves the directory (see the module docstring)."""
    return artefact_file(model_dir, rel, overlay_source(model_dir))


def runtime_artefacts(model_dir: str | Path, kind: str | None = None) -> dict[str, dict]:
    """``relpath -> entry`` of the ONNX/engine artefacts (optionally one kind)."""
    arts = read_manifest(model_dir).get("artefacts", {})
    return {r: e for r, e in arts.items()
            if e.get("kind") in (("onnx", "engine") if kind is None else (kind,))}


def find_stage_files(model_dir: str | Path, kind: str, precision: str) -> dict[str, str]:
    """``stage -> relpath`` of the artefacts of one kind and precision."""
    return {e["stage"]: r for r, e in runtime_artefacts(model_dir, kind).items()
            if e.get("precision") == precision and "stage" in e}


def verify_files(model_dir: str | Path, relpaths) -> list[Path]:
    """Check the sha256 of just these listed files (the runtime's artefacts); their paths."""
    model_dir = Path(model_dir)
    arts = read_manifest(model_dir).get("artefacts", {})
    source = overlay_source(model_dir)
    out = []
    for rel in relpaths:
        e = arts.get(rel)
        if e is None:
            raise ArtefactError(f"{rel!r}: not listed in the manifest of {model_dir}",
                                "missing")
        out.append(verify_file(model_dir, rel, e, source))
    return out


def load_model(model_dir: str | Path):
    """The :class:`ErcModel` of a directory or of its overlay (every listed file verified
    first)."""
    return load_model_dir(model_dir, source=overlay_source(model_dir))


def cache_root() -> Path:
    """Where on-demand ONNX files of versioned models go: the cache
    (:func:`erc_ros.paths.cache_root`)."""
    return paths.cache_root()


def cache_path(name: str) -> Path:
    """``cache_root() / name`` for a plain name (a model id, then ``-`` and a hash), refused
    with :class:`ArtefactError` where it would not be a directory right inside the cache."""
    root = cache_root().resolve()
    check_model_id(name)
    d = root / name
    if d.resolve().parent != root:
        raise ArtefactError(f"cache entry {name!r} refused: it would land outside {root}",
                            "unsafe_path")
    return d


def _overlay_path(model_dir: Path) -> tuple[Path, bytes, dict]:
    """Where the overlay of ``model_dir`` (resolved) goes, its manifest's bytes and content.
    The name hashes the manifest alone, which holds the sha256 of every file of the model:
    the same model at another path (a colcon install's ``share/erc_ros/models/default``
    and the source tree's ``models/default``) finds the files prepared once, and a changed
    file (a new manifest) gets another overlay."""
    raw = (model_dir / "manifest.json").read_bytes()
    m = read_manifest(model_dir)
    name = f"{m.get('model_id', 'model')}-{hashlib.sha256(raw).hexdigest()[:16]}"
    return cache_path(name), raw, m


def overlay_source(model_dir: str | Path) -> Path | None:
    """The model directory that ``model_dir`` is the cache overlay of, or ``None``: it must be
    a directory of :func:`cache_root` whose ``SOURCE`` names a model directory whose current
    manifest gives exactly this overlay's name (so a stale or planted overlay vouches for
    nothing)."""
    d = Path(model_dir).resolve()
    try:
        if d.parent != cache_root().resolve() or not (d / "SOURCE").is_file():
            return None
        src = Path((d / "SOURCE").read_text().strip())
        if not src.is_absolute():
            return None
        src = src.resolve()
        return src if _overlay_path(src)[0] == d else None
    except (OSError, ArtefactError):
        return None


def _links_lead_into_source(d: Path, m: dict) -> bool:
    """Whether overlay ``d`` has a valid source (:func:`overlay_source`) and every link to
    the model's files (``m``: the model's manifest) resolves inside it."""
    source = overlay_source(d)
    if source is None:
        return False
    for rel in m.get("artefacts", {}):
        try:
            real = (d / check_relpath(rel)).resolve(strict=True)
        except (OSError, RuntimeError):
            return False
        if real != source and source not in real.parents:
            return False
    return True


def _relink(d: Path, model_dir: Path, m: dict) -> None:
    """Point the links of overlay ``d`` at ``model_dir``, a model with the same manifest
    (the same files by their sha256): each link replaced at once, ``SOURCE`` last."""
    for rel in m.get("artefacts", {}):
        link = d / check_relpath(rel)
        tmp = link.with_name(link.name + ".relink")
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(artefact_file(model_dir, rel))
        os.replace(tmp, link)
    tmp = d / "SOURCE.relink"
    tmp.write_text(str(model_dir) + "\n")
    os.replace(tmp, d / "SOURCE")


def overlay_dir(model_dir: str | Path, create: bool = True) -> Path | None:
    """A writable overlay of ``model_dir`` for artefacts made on demand.

    A model shipped in the repository (``models/default``) must stay as committed: its
    manifest may only list files that are committed. So the runtime's implicit exports go
    to ``<cache>/<model_id>-<sha256 of the manifest, [:16]>/``: a copy of the manifest plus
    links to the listed files, in which the ONNX files are then registered and verified
    like any other. The key is the model's content, not its place: a copy of the model
    elsewhere uses the same overlay, whose links are moved to it when the copy they lead
    into is gone or changed (``create`` or not: the prepared files stay). A changed model
    has another key, so a stale overlay is never used.
    """

    model_dir = Path(model_dir).resolve()
    d, raw, m = _overlay_path(model_dir)
    if (d / "manifest.json").is_file():
        if _links_lead_into_source(d, m):
            return d
        try:
            _relink(d, model_dir, m)
        except OSError:
            if not create:
                return None
            raise
        return d
    if not create:
        return None
    tmp = d.with_name(d.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for rel in m.get("artefacts", {}):
        dst = artefact_file(tmp, rel)
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.symlink_to(artefact_file(model_dir, rel))
    (tmp / "manifest.json").write_bytes(raw)
    (tmp / "SOURCE").write_text(str(model_dir) + "\n")
    try:
        tmp.rename(d)
    except OSError:  # another process made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return d


def runtime_dir(model_dir: str | Path, stages: set[str], precision: str = "fp32",
                create: bool = False) -> Path | None:
    """The directory holding ``stages`` as ONNX of ``precision``: the model directory itself,
    else its overlay in the cache; with ``create``, where to make them: always the overlay
    (a model directory may be installed, tracked or read-only: nothing made at run time is
    written into it). ``None`` when nothing is there to use."""
    if stages <= set(find_stage_files(model_dir, "onnx", precision)):
        return Path(model_dir)
    ov = overlay_dir(model_dir, create=False)
    if ov is not None and stages <= set(find_stage_files(ov, "onnx", precision)):
        return ov
    ov = overlay_dir(model_dir, create=create)
    if ov is not None and (create or stages <= set(find_stage_files(ov, "onnx", precision))):
        return ov
    return None


def is_versioned(model_dir: str | Path) -> bool:
    """True when the directory's manifest is tracked by git (a shipped model)."""

    try:
        r = subprocess.run(["git", "-C", str(model_dir), "ls-files", "--error-unmatch",
                            "manifest.json"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def writable_dir(model_dir: str | Path, in_place: bool = False) -> Path:
    """Where the export/quantize/build-engines commands write: the model directory itself,
    unless it is versioned in git (then its cache overlay, so the committed manifest never
    lists files that are not committed) — ``in_place`` forces the directory itself."""
    if in_place or not is_versioned(model_dir):
        return Path(model_dir)
    d = overlay_dir(model_dir)
    print(f"{model_dir} is versioned: writing its runtime artefacts to {d} "
          "(use --in-place to write into it)")
    return d


def open_for_cli(args):
    """The shared start of the `export` / `quantize` commands: logging, the model
    (every file verified) and where its runtime artefacts may be written."""

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return load_model(args.model), writable_dir(args.model, args.in_place)
