"""What a trained model directory records of how it was made: the command, the models it
was trained from or distilled from (named by id, dev figures and manifest sha256, never by a
path of the training machine) and the run's own fields."""
from __future__ import annotations

from pathlib import Path

from erc_ros.models.artefact import read_manifest, sha256_file


def model_reference(model_dir: str | Path) -> dict:
    """A trained model named by id, dev metrics and manifest sha256, not by path: provenance
    travels with the model, a path on the training machine means nothing elsewhere."""
    m = read_manifest(model_dir)
    return {"model_id": m.get("model_id", ""),
            "dev_metrics": m.get("provenance", {}).get("dev_metrics", {}),
            "manifest_sha256": sha256_file(Path(model_dir) / "manifest.json")}


def lineage(model_dir: str | Path) -> dict:
    """How the ``--init`` model was made, for the provenance of a model trained from it: its
    id, when, by which command (portable: no machine paths) at which commit, its dev figure,
    its training minutes, and its own ``init_provenance`` in turn: the whole chain back to a
    model trained from scratch."""
    ref = model_reference(model_dir)
    p = read_manifest(model_dir).get("provenance", {})
    return {"model_id": ref["model_id"],
            **{k: p[k] for k in ("created", "command", "git_commit", "git_modified",
                                 "dev_metrics", "train_minutes", "init_provenance") if k in p},
            "manifest_sha256": ref["manifest_sha256"]}


def provenance(args, init=None, **fields) -> dict:
    """The provenance a trained model directory records: the command as given (portable),
    the lineage of the model it was trained from (``init``, else ``--init``; none from
    scratch), and ``fields``."""
    prov = dict(fields)
    if getattr(args, "command_line", None):
        prov["command"] = args.command_line
    init = init or getattr(args, "init", None)
    if init:
        prov["init_provenance"] = lineage(init)
    return prov
