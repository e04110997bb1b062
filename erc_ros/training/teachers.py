"""The teachers a text recipe distils from: which model directories (``--teacher`` or the
recipe's ``distill_from`` for the corpus), and their logits and text vectors over the
training dialogues, computed once and kept in the cache."""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import numpy as np

from erc_ros.models.artefact import load_model_dir, sha256_file
from erc_ros.paths import cache_root, share_path
from erc_ros.training.fusion_stage import dialogue_teacher_logits
from erc_ros.training.provenance import model_reference


def resolve_teachers(names) -> list[str]:
    """Teacher model directories from ``--teacher`` values (or a recipe's ``distill_from``):
    a path, ``large`` (the shipped ``models/large``) or ``none`` (no teacher at all)."""
    if "none" in names:
        return []
    out = []
    for n in names:
        if n == "large":
            d = share_path("models", "large")
            if d is None:
                raise SystemExit("error: --teacher large: no models/large in this checkout or "
                                 "install")
            n = str(d)
        out.append(n)
    return out


def cached_teacher_logits(teacher_dirs, parts, labels, features: bool = False):
    """The teachers' logits over the training dialogues (``parts``: lists of dialogues, e.g.
    MELD and GoEmotions, concatenated in order), computed once and kept in the cache, keyed by
    the teachers' manifest sha256s and the training utterances (ids, texts, labels). Each
    teacher runs over whole dialogues, past only, as ``evaluate`` scores it. The same pass
    caches the teachers' text vectors (float16); ``features`` returns (logits, vectors)."""
    h = hashlib.sha256(b"whole-dialogues")
    for d in teacher_dirs:
        h.update(sha256_file(Path(d) / "manifest.json").encode())
    for dlg in (d for part in parts for d in part):
        for u, y in zip(dlg.utterances, dlg.labels):
            h.update(f"{u.utterance_id}\t{u.speaker_id}\t{u.text}\t{y}\n".encode())
    path = cache_root() / "train" / f"teacher-logits-{h.hexdigest()[:20]}.npy"
    fpath = path.with_name(path.name.replace("teacher-logits-", "teacher-vectors-"))
    if path.is_file() and (fpath.is_file() or not features):
        print(f"teacher logits from the cache: {path}", file=sys.stderr)
        out = np.load(path)
        return (out, np.load(fpath).astype(np.float32)) if features else out
    teachers = [load_model_dir(d).eval() for d in teacher_dirs]
    for d, t in zip(teacher_dirs, teachers):
        if list(t.label_names) != list(labels):
            raise SystemExit(f"teacher {d} has labels {list(t.label_names)}, the data {list(labels)}")
    got = [dialogue_teacher_logits(teachers, part, prefix_cache_dir=path.parent, features=True)
           for part in parts if part]
    out = np.concatenate([g[0] for g in got])
    # The vectors are kept in float16, so that this run trains on the same rounded values as
    # every later run that reads them back from the cache.
    vecs = np.concatenate([g[1] for g in got]).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(fpath, vecs)
    np.save(path, out)  # last: its presence says both files are whole
    return (out, vecs.astype(np.float32)) if features else out


def recipe_teachers(args, r: dict, parts, labels) -> tuple:
    """(logits, text vectors) of the run's teachers over ``parts`` (None where there are
    none or the recipe has no feature distillation), recording them in ``r`` (``teachers``,
    ``distill``, ``feature_distill``). A recipe names its teachers per corpus (their labels
    must be the corpus's): where it names none for this one, the recipe trains without
    distillation, and says so."""
    teacher = teacher_vectors = None
    recipe_names = (r.get("distill_from") or {}).get(args.format, [])
    teacher_dirs = resolve_teachers(args.teacher or recipe_names)
    if r.get("feature_distill") and not teacher_dirs:
        if args.feature_distill:
            raise SystemExit("error: --feature-distill needs a --teacher")
        print(f"recipe {args.recipe}: no teacher for --format {args.format} (or --teacher "
              "none): training without distillation (--teacher DIR distils from one)",
              file=sys.stderr)
        r["feature_distill"] = 0.0
    if teacher_dirs:
        if r.get("feature_distill"):
            teacher, teacher_vectors = cached_teacher_logits(teacher_dirs, parts, labels,
                                                             features=True)
        else:
            teacher = cached_teacher_logits(teacher_dirs, parts, labels)
        r.setdefault("distill", 0.5)
        r["teachers"] = [model_reference(d) for d in teacher_dirs]
    return teacher, teacher_vectors
