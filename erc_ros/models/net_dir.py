"""The model directory of a small single-network expert (the face and voice experts):
``weights.safetensors`` (float32) and a ``manifest.json`` with its ``kind``, label names,
config, what its input is, provenance and every file's sha256 (:mod:`erc_ros.models.artefact`).
:func:`save_net_dir` writes one; :func:`load_net_state` verifies one and returns its state
dict and manifest for the network's own module to rebuild it."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from erc_ros.models.artefact import (FORMAT_VERSION, WEIGHTS_FILE, ArtefactError, add_artefact,
                                     artefact_file, check_model_id, git_commit, git_modified,
                                     verify_model_dir, versions, write_manifest)


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def save_net_dir(net: nn.Module, model_dir: str | Path, *, kind: str, model_id: str,
                 label_names, config: dict, fields: dict,
                 provenance: Optional[dict] = None) -> Path:
    """Write ``net`` as a self-describing model directory of ``kind``; ``fields`` are the
    manifest's own entries (what the input is, calibration, ...). Files this function wrote
    before are replaced; others in the folder (a training checkpoint) are left alone and not
    listed."""
    from safetensors.torch import save_file

    check_model_id(model_id)
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    manifest = {
        "format_version": FORMAT_VERSION, "kind": kind, "model_id": model_id,
        "label_names": list(label_names), "config": config, **fields,
        "parameters": count_parameters(net),
        "provenance": {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                       "git_commit": git_commit(),
                       **({"git_modified": m} if (m := git_modified()) else {}),
                       **(provenance or {})},
        "versions": versions(), "external": {}, "artefacts": {},
    }
    write_manifest(model_dir, manifest)
    state = {k: v.detach().cpu().float().contiguous() if v.is_floating_point()
             else v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(model_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    add_artefact(model_dir, WEIGHTS_FILE, "weights", dtype="float32", tensors=len(state))
    return model_dir


def load_net_state(model_dir: str | Path, kind: str, what: str) -> tuple[dict, dict]:
    """(state dict, manifest) of a ``kind`` model directory after every listed file's sha256
    is checked; :class:`ArtefactError` when it is not one (``what`` names the kind to a
    person)."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    m = verify_model_dir(model_dir)
    if m.get("kind") != kind:
        raise ArtefactError(f"{model_dir}: not a {what} model directory (kind "
                            f"{m.get('kind')!r}, expected {kind!r})", "malformed")
    weights = [r for r, e in m["artefacts"].items() if e.get("kind") == "weights"]
    if len(weights) != 1:
        raise ArtefactError(f"{model_dir}: expected one weights file, the manifest lists "
                            f"{len(weights)}", "malformed")
    return load_file(str(artefact_file(model_dir, weights[0]))), m


def load_into(net: nn.Module, state: dict, model_dir: str | Path) -> nn.Module:
    """``net`` with ``state`` loaded strictly, in eval mode; a mismatch is an ArtefactError."""
    expected = net.state_dict()
    if set(state) != set(expected):
        raise ArtefactError(f"{model_dir}: weights do not match the config (missing "
                            f"{sorted(set(expected) - set(state))[:5]}, unexpected "
                            f"{sorted(set(state) - set(expected))[:5]})", "malformed")
    net.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()}, strict=True)
    return net.eval()
