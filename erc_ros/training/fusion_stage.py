"""Stage 2: train a fusion head over cached utterance vectors (the encoders stay frozen).

Stage 1 (unimodal encoders: :mod:`text_stage` for text) produces per-utterance vectors; they
are computed once per dialogue and cached (safetensors, keyed by model + data sha256), so
trying heads does not re-run the encoders. The head then sees whole dialogues (padded
batches) with speaker ids and modality masks, and learns with class-weighted CE, modality
dropout (a random present modality is hidden, never all of them), unimodal
self-distillation (each modality's auxiliary head learns from the fused prediction), and,
where audio/video are present, the text->audio/video Pearson response KD and relational
feature KD of MAGTKD.
"""
from __future__ import annotations

import copy
import hashlib
import json
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from erc_ros import process
from erc_ros.datasets.dialogues import Dialogue, class_weights
from erc_ros.models.erc_model import ErcModel
from erc_ros.models.fusion import build_fusion
from erc_ros.models.losses import (pearson_kd, relational_kd, self_distillation,
                                   unimodal_self_distillation, weighted_cross_entropy)
from erc_ros.training.deployed import selection_figure
from erc_ros.training.metrics import scores


@dataclass
class FusionStageConfig:
    epochs: int = 20
    batch_size: int = 8  # dialogues
    lr: float = 5e-4
    weight_decay: float = 0.01
    class_weight_power: float = 0.0
    modality_dropout: float = 0.3
    unimodal_self_distill: float = 0.5
    pearson_kd: float = 0.0
    relational_kd: float = 0.0
    tau: float = 2.0
    # Weight of KL(trained teacher || head) on the labelled utterances (with ``teacher``
    # logits): the loss is (1 - distill) * CE + distill * KD at ``distill_tau``.
    distill: float = 0.0
    distill_tau: float = 2.0
    seed: int = 13
    threads: int = 2

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CachedDialogue:
    text: torch.Tensor  # [T, Dt]
    audio: torch.Tensor  # [T, Da]
    video: torch.Tensor  # [T, Dv]
    modality: torch.Tensor  # [T, 3] bool
    speakers: torch.Tensor  # [T] long
    labels: torch.Tensor  # [T] long (-1 = unlabelled)


@torch.no_grad()
def encode_dialogues(model: ErcModel, dialogues: Sequence[Dialogue],
                     cache_file: Optional[str | Path] = None, progress: bool = True,
                     prefix_cache_dir: Optional[str | Path] = None,
                     cache_dir: Optional[str | Path] = None) -> list[CachedDialogue]:
    """Encode every utterance once (past context only, as live) and cache the vectors. The
    cache is keyed by the model's weights and config and the dialogues (:func:`cache_key`):
    a cache made from another model or other data is recomputed, never reused.
    ``cache_dir``: the cache is ``vectors-<key>.safetensors`` there, one file per model and
    data (refits of a head over the same encoder and data, with other seeds, reuse it).
    ``prefix_cache_dir``: with an encoder whose bottom layers are frozen, their states come
    from the training's prefix cache (:func:`text_stage.text_vectors`)."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    key = cache_key(model, dialogues) if cache_file is not None or cache_dir else ""
    if cache_dir:
        cache_file = Path(cache_dir) / f"vectors-{key[:16]}.safetensors"
    if cache_file is not None and Path(cache_file).is_file():
        with safe_open(str(cache_file), "pt") as f:
            stored = (f.metadata() or {}).get("key")
        if stored == key:
            flat = load_file(str(cache_file))
            n = int(flat["count"].item())
            return [CachedDialogue(*(flat[f"{i}.{k}"] for k in
                                     ("text", "audio", "video", "modality", "speakers", "labels")))
                    for i in range(n)]
        print(f"{cache_file}: made from another model or data; encoding again", file=sys.stderr)
    model.eval()
    k = model.config.preprocessing.prompt.past_context
    rows = None
    if prefix_cache_dir and model.text_encoder.config.freeze_layers > 0:
        from erc_ros.training.text_stage import text_vectors

        rows = text_vectors(model, dialogues, prefix_cache_dir, progress=progress)
    out = []
    for di, d in enumerate(tqdm(dialogues, desc="encoding dialogues", disable=not progress)):
        u = d.utterances
        text, audio, video, mask = model.encode(u, [u[max(0, i - k):i] for i in range(len(u))],
                                                text=None if rows is None else rows[di])
        out.append(CachedDialogue(text, audio, video, mask,
                                  torch.as_tensor(model.preprocessor.speaker_ids(u)),
                                  torch.as_tensor(d.labels, dtype=torch.long)))
    if cache_file is not None:
        flat = {"count": torch.tensor(len(out))}
        for i, c in enumerate(out):
            for field, v in asdict(c).items():
                flat[f"{i}.{field}"] = v.contiguous()
        Path(cache_file).parent.mkdir(parents=True, exist_ok=True)
        save_file(flat, str(cache_file), metadata={"key": key})
    return out


@torch.no_grad()
def dialogue_teacher_logits(teachers: Sequence[ErcModel], dialogues: Sequence[Dialogue],
                            progress: bool = True, prefix_cache_dir=None,
                            features: bool = False):
    """Log of the teachers' mean class probabilities for every labelled utterance of
    ``dialogues`` (:func:`text_stage.build_samples` order), each head run over whole
    dialogues, past only: exactly what ``evaluate`` scores and the robot runs (a stage-2 head
    learnt over dialogues). ``prefix_cache_dir``: see :func:`encode_dialogues`.
    ``features``: also return the teachers' text vectors of those utterances (what their
    heads read), side by side: ([N, C] logits, [N, sum of the teachers' widths] float32), for
    feature distillation (:func:`text_stage.train_text_stage`)."""
    probs, feats = [], []
    for t in teachers:
        t.eval()
        rows, vecs = [], []
        for c in encode_dialogues(t, dialogues, progress=progress,
                                  prefix_cache_dir=prefix_cache_dir):
            pad = torch.zeros(1, len(c.labels), dtype=torch.bool)
            logits, _ = t.fusion(c.text[None], c.audio[None], c.video[None], c.modality[None],
                                 c.speakers[None], pad)
            rows.append(torch.softmax(logits[0], -1)[c.labels >= 0].numpy())
            vecs.append(c.text[c.labels >= 0].float().numpy())
        probs.append(np.concatenate(rows) if rows else
                     np.zeros((0, len(t.label_names)), np.float32))
        feats.append(np.concatenate(vecs) if vecs else np.zeros((0, t.dims[0]), np.float32))
    logits = np.log(np.mean(probs, axis=0) + 1e-8).astype(np.float32)
    return (logits, np.concatenate(feats, axis=1).astype(np.float32)) if features else logits


def cache_key(model: ErcModel, dialogues: Sequence[Dialogue]) -> str:
    """sha256 of the model (config and every tensor) and of the dialogues (ids, texts,
    speakers, labels): what the cached vectors depend on."""

    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for d in dialogues:
        h.update(d.conversation_id.encode())
        for u, y in zip(d.utterances, d.labels):
            h.update(f"{u.speaker_id}\x00{u.text}\x00{y}\x01".encode())
    return h.hexdigest()


def collate(batch: Sequence[CachedDialogue]):
    t = max(len(c.labels) for c in batch)
    b = len(batch)

    def pad(x, fill=0):
        shape = (b, t) + tuple(x[0].shape[1:])
        out = torch.full(shape, fill, dtype=x[0].dtype)
        for i, v in enumerate(x):
            out[i, : len(v)] = v
        return out

    padding = torch.ones(b, t, dtype=torch.bool)
    for i, c in enumerate(batch):
        padding[i, : len(c.labels)] = False
    return (pad([c.text for c in batch]), pad([c.audio for c in batch]),
            pad([c.video for c in batch]), pad([c.modality for c in batch], False),
            pad([c.speakers for c in batch]), padding, pad([c.labels for c in batch], -1))


def modality_dropout(mask: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Hide each present modality with probability p, keeping at least one per utterance."""
    if p <= 0:
        return mask
    drop = (torch.rand(mask.shape, generator=gen) < p) & mask
    kept = mask & ~drop
    none_left = ~kept.any(-1, keepdim=True) & mask.any(-1, keepdim=True)
    # Where everything was dropped, restore the first present modality.
    first = torch.zeros_like(mask)
    idx = mask.to(torch.int64).argmax(-1, keepdim=True)
    first.scatter_(-1, idx, True)
    return torch.where(none_left, first & mask, kept)


@torch.no_grad()
def predict_cached(head: nn.Module, data: Sequence[CachedDialogue], batch_size: int = 16):
    head.eval()
    y_true, y_pred = [], []
    for s in range(0, len(data), batch_size):
        text, audio, video, mm, spk, pad, y = collate(data[s:s + batch_size])
        logits, _ = head(text, audio, video, mm, spk, pad)
        keep = y >= 0
        y_true += y[keep].tolist()
        y_pred += logits.argmax(-1)[keep].tolist()
    return y_true, y_pred


def per_dialogue(rows: np.ndarray, data: Sequence[CachedDialogue]) -> list[torch.Tensor]:
    """Rows over the labelled utterances of ``data`` in order (teacher logits, as
    :func:`dialogue_teacher_logits` returns them) -> one [T, C] tensor per dialogue (zeros on
    the unlabelled utterances)."""
    labelled = sum(int((c.labels >= 0).sum()) for c in data)
    if labelled != len(rows):
        raise ValueError(f"{len(rows)} teacher rows for {labelled} labelled utterances")
    out, i = [], 0
    for c in data:
        keep = c.labels >= 0
        t = torch.zeros(len(c.labels), rows.shape[1])
        n = int(keep.sum())
        t[keep] = torch.as_tensor(rows[i:i + n], dtype=torch.float32)
        out.append(t)
        i += n
    return out


def train_fusion_stage(head: nn.Module, train: Sequence[CachedDialogue],
                       dev: Sequence[CachedDialogue], label_names: Sequence[str],
                       cfg: FusionStageConfig, log=print, progress: bool = True,
                       teacher: Optional[Sequence[torch.Tensor]] = None,
                       dev_int8: Optional[Sequence[CachedDialogue]] = None,
                       select: str = "fp32") -> dict:
    """Train ``head`` over cached vectors; keep its best state by dev weighted F1.
    ``teacher``: one [T, C] tensor of a trained teacher's logits per training dialogue
    (:func:`per_dialogue`), distilled with weight ``cfg.distill``. ``dev_int8``: the dev
    dialogues with the text vectors of the encoder's ONNX Runtime INT8 copy
    (:mod:`erc_ros.training.deployed`): each epoch is scored on them too
    (``weighted_f1_int8``), and ``select`` (``fp32`` or ``fp32+int8``, the worse of the two)
    says which figure picks the best epoch."""

    if select == "fp32+int8" and not dev_int8:
        raise ValueError("select='fp32+int8' needs dev_int8 (the INT8 copy's dev vectors)")

    if teacher is not None and len(teacher) != len(train):
        raise ValueError(f"teacher logits for {len(teacher)} dialogues, {len(train)} given")

    process.configure(torch_threads=cfg.threads, by="fusion stage")  # no-op under the CLI
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    counts = np.bincount(torch.cat([c.labels[c.labels >= 0] for c in train]).numpy(),
                         minlength=len(label_names))
    cw = torch.as_tensor(class_weights(counts, cfg.class_weight_power))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, history = {}, None, []
    t0 = time.time()
    for epoch in range(cfg.epochs):
        head.train()
        order = list(range(len(train)))
        rng.shuffle(order)
        for s in tqdm(range(0, len(order), cfg.batch_size), desc=f"fusion epoch {epoch + 1}",
                      disable=not progress, leave=False):
            batch = order[s:s + cfg.batch_size]
            text, audio, video, mm, spk, pad, y = collate([train[i] for i in batch])
            mm = modality_dropout(mm, cfg.modality_dropout, gen)
            logits, _, aux = head.forward_with_aux(text, audio, video, mm, spk, pad)
            loss = weighted_cross_entropy(logits, y, cw)
            if teacher is not None and cfg.distill > 0:
                tl = torch.zeros(logits.shape)
                for j, i in enumerate(batch):
                    tl[j, : len(teacher[i])] = teacher[i]
                loss = (1 - cfg.distill) * loss + cfg.distill * self_distillation(
                    logits, tl, cfg.distill_tau, y >= 0)
            if aux and cfg.unimodal_self_distill > 0:
                loss = loss + cfg.unimodal_self_distill * unimodal_self_distillation(
                    aux, logits, mm & ~pad[..., None], cfg.tau)
            if aux and (cfg.pearson_kd > 0 or cfg.relational_kd > 0):
                for i, name in ((1, "audio"), (2, "video")):
                    rows = (mm[..., i] & mm[..., 0] & ~pad).reshape(-1)
                    if rows.sum() < 2:
                        continue
                    st = aux[name].reshape(-1, aux[name].shape[-1])[rows]
                    te = aux["text"].reshape(-1, aux["text"].shape[-1])[rows]
                    if cfg.pearson_kd > 0:
                        loss = loss + cfg.pearson_kd * pearson_kd(st, te, cfg.tau)
                    if cfg.relational_kd > 0:
                        loss = loss + cfg.relational_kd * relational_kd(st, te, cfg.tau, "kl+jsd")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(head.parameters(), 1.0)
            opt.step()
        if dev:
            rec = {"epoch": epoch + 1, **dev_figures(head, dev, label_names, dev_int8)}
            history.append(rec)
            if selection_figure(rec, select) > selection_figure(best, select):
                best = dict(rec)
                best_state = copy.deepcopy(head.state_dict())
    if best_state is not None:
        head.load_state_dict(best_state)
    log(f"fusion stage best {best} in {(time.time() - t0) / 60:.1f} min")
    return {"best": best or {"weighted_f1": -1.0}, "history": history,
            "config": dict(cfg.to_dict(), select=select)}


def dev_figures(head: nn.Module, dev: Sequence[CachedDialogue], label_names: Sequence[str],
                dev_int8: Optional[Sequence[CachedDialogue]] = None) -> dict:
    """``head``'s dev weighted F1 and accuracy over the cached vectors, and with ``dev_int8``
    its weighted F1 over the INT8 copy's vectors (``weighted_f1_int8``)."""
    sc = scores(*predict_cached(head, dev), label_names)
    rec = {"weighted_f1": sc["weighted_f1"], "accuracy": sc["accuracy"]}
    if dev_int8:
        rec["weighted_f1_int8"] = scores(*predict_cached(head, dev_int8),
                                         label_names)["weighted_f1"]
    return rec


#: The head settings of stage 2 over cached text vectors (ablation and the default recipe).
HEAD_DEFAULTS = dict(d_model=128, num_heads=4, num_layers=1, causal=True, dropout=0.2,
                     zero_init_av=True)


def fit_head(model: ErcModel, name: str, train: Sequence[CachedDialogue],
             dev: Sequence[CachedDialogue], cfg: FusionStageConfig, seed: int = 13,
             progress: bool = False, teacher: Optional[Sequence[torch.Tensor]] = None,
             dev_int8: Optional[Sequence[CachedDialogue]] = None, select: str = "fp32",
             **head_config) -> tuple[nn.Module, dict, dict]:
    """Train a fresh ``name`` head over ``model``'s cached vectors; returns (head, its config
    with the model's dims, the stage summary). Text-only features: no modality dropout.
    ``teacher``, ``dev_int8``, ``select``: see :func:`train_fusion_stage`."""

    dt, da, dv = model.dims
    hcfg = dict(HEAD_DEFAULTS, **head_config, text_dim=dt, audio_dim=da, video_dim=dv,
                num_classes=len(model.label_names),
                max_speakers=model.config.preprocessing.max_speakers)
    torch.manual_seed(seed)
    head = build_fusion(name, hcfg)
    summary = train_fusion_stage(head, train, dev, model.label_names, cfg, progress=progress,
                                 teacher=teacher, dev_int8=dev_int8, select=select)
    return head, hcfg, summary


def use_head(model: ErcModel, name: str, head: nn.Module, head_config: dict) -> None:
    """Make ``head`` the model's fusion head (saved and exported with it from now on)."""
    model.fusion = head
    model.config.fusion_head = name
    model.config.fusion = dict(head_config)

