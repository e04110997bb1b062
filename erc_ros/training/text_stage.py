"""Stage 1 for text: fine-tune the prompt text encoder (+ the concat head) end to end.

Each training sample is one utterance with its past context rendered by the model's own
prompt builder (so inference preprocessing is identical). Batches are length-bucketed with
dynamic padding (the context prompts vary from ~15 to ``max_length`` tokens), AdamW with
linear warm-up/decay, class-weighted CE, optional EMA self-distillation, and an EMA copy of
the weights that is evaluated next to the raw weights after every epoch; the best of them on
dev (weighted F1) is kept. Runs unchanged under ``torchrun`` (DDP, gradients averaged).

With ``cache_frozen`` and an encoder whose first ``freeze_layers`` layers are frozen, the
frozen bottom runs once per prompt (:class:`FrozenPrefix`, float16 hidden states in memory)
and each step runs only the layers above it: how a 110M-parameter teacher trains on 2 cores.
"""
from __future__ import annotations

import copy
import hashlib
import math
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from erc_ros import process
from erc_ros.datasets.dialogues import Dialogue, class_counts, class_weights
from erc_ros.models.erc_model import ErcModel
from erc_ros.models.losses import (EmaTeacher, feature_distillation, self_distillation,
                                   weighted_cross_entropy)
from erc_ros.training.metrics import scores


@dataclass
class TextStageConfig:
    epochs: int = 3
    batch_size: int = 16
    lr: float = 4e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: float = 0.06
    class_weight_power: float = 0.0
    label_smoothing: float = 0.0
    ema_decay: float = 0.0  # 0 = no EMA weights
    self_distill: float = 0.0  # weight of the EMA-teacher KD term (needs ema_decay > 0)
    self_distill_tau: float = 2.0
    distill: float = 0.0  # weight of the KD term toward teacher_logits (trained teachers)
    distill_tau: float = 2.0
    # weight of the feature term toward teacher_features (losses.feature_distillation, through
    # a linear map to the teacher's width that trains with the head and is then dropped)
    feature_distill: float = 0.0
    feature_distill_tau: float = 0.1
    grad_clip: float = 1.0
    seed: int = 13
    max_steps: int = 0  # 0 = all (tests use a few)
    max_minutes: float = 0.0  # stop early (then evaluate and keep the best) after this long
    eval_every_epoch: bool = True
    threads: int = 2
    cache_frozen: bool = False  # run the frozen bottom once per prompt (FrozenPrefix)
    prefix_cache_dir: str = ""  # keep those states on disk too ("" = memory only)

    def __post_init__(self):
        # A weight outside its range would train something else than asked, silently (a
        # negative feature weight read as "off", a KD weight above 1 flips the CE's sign).
        for k in ("self_distill", "distill", "ema_decay", "warmup", "label_smoothing"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"TextStageConfig.{k} = {getattr(self, k)}: must be in [0, 1]")
        for k in ("feature_distill", "class_weight_power", "max_minutes", "grad_clip"):
            if not getattr(self, k) >= 0.0:
                raise ValueError(f"TextStageConfig.{k} = {getattr(self, k)}: must be >= 0")
        for k in ("epochs", "batch_size", "threads"):
            if getattr(self, k) < 1:
                raise ValueError(f"TextStageConfig.{k} = {getattr(self, k)}: must be >= 1")

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def build_samples(model: ErcModel, dialogues: Sequence[Dialogue], future: bool = False,
                  unlabelled: bool = False):
    """(token ids, label) per labelled utterance (every utterance with ``unlabelled``, label
    -1 then), prompts built by the model's preprocessor."""
    pre = model.preprocessor
    k = pre.config.prompt.past_context
    out = []
    for d in dialogues:
        for i, (u, y) in enumerate(zip(d.utterances, d.labels)):
            if y < 0 and not unlabelled:
                continue
            ids = pre.text_ids(u, d.utterances[max(0, i - k):i] if k else [],
                               d.utterances[i + 1:] if future else [])
            out.append((ids, int(y)))
    return out


def bucketed_batches(samples, batch_size: int, rng: random.Random, shuffle: bool = True):
    """Index batches of similar length: shuffle, sort within chunks of 50 batches, shuffle the
    batches (dynamic padding then wastes little)."""
    idx = list(range(len(samples)))
    if not shuffle:
        idx.sort(key=lambda i: len(samples[i][0]))
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]
    rng.shuffle(idx)
    chunk = batch_size * 50
    batches = []
    for s in range(0, len(idx), chunk):
        part = sorted(idx[s:s + chunk], key=lambda i: len(samples[i][0]))
        batches += [part[i:i + batch_size] for i in range(0, len(part), batch_size)]
    rng.shuffle(batches)
    return batches


class TextClassifier(nn.Module):
    """text encoder -> fusion head with T = 1 and only the text modality present."""

    def __init__(self, model: ErcModel):
        super().__init__()
        self.text_encoder = model.text_encoder
        self.fusion = model.fusion
        _, self.da, self.dv = model.dims

    def forward(self, input_ids, attention_mask, hidden=None, return_vector: bool = False):
        """``hidden``: the encoder's frozen-bottom output for these ids (FrozenPrefix);
        ``return_vector``: also return the text vectors the head reads ([B, Dt]), mapped by
        ``feature_proj`` where training set one (feature distillation: the map is part of
        the trained module, so DDP averages its gradients too, but not of the model)."""
        enc = self.text_encoder
        t = (enc(input_ids, attention_mask) if hidden is None else
             enc.top(hidden, input_ids, attention_mask))[:, None]
        b = t.shape[0]
        z = t.new_zeros
        mask = torch.zeros(b, 1, 3, dtype=torch.bool, device=t.device)
        mask[..., 0] = True
        logits, _ = self.fusion(t, z(b, 1, self.da), z(b, 1, self.dv), mask,
                                torch.zeros(b, 1, dtype=torch.long, device=t.device),
                                torch.zeros(b, 1, dtype=torch.bool, device=t.device))
        if not return_vector:
            return logits[:, 0]
        proj = getattr(self, "feature_proj", None)
        return logits[:, 0], (t[:, 0] if proj is None else proj(t[:, 0]))


def _tensors(model: ErcModel, samples, batch):
    t = model.preprocessor.pad_text([samples[i][0] for i in batch])
    y = torch.tensor([samples[i][1] for i in batch])
    return torch.as_tensor(t["input_ids"]), torch.as_tensor(t["attention_mask"]), y


class FrozenPrefix:
    """The frozen bottom's hidden states (:meth:`TextEncoder.bottom`) of every sample,
    computed once in eval mode and kept as float16 (the trained layers see them as float32)."""

    def __init__(self, model: ErcModel, samples, batch_size: int = 32, progress: bool = True,
                 desc: str = "frozen layers", cache_dir=None):
        """``cache_dir``: keep the states on disk too, keyed by the frozen weights and the
        prompts (a second run on the same data, e.g. an ablation, reads them back)."""

        enc = model.text_encoder
        path = Path(cache_dir) / f"prefix-{self.key(model, samples)}.pt" if cache_dir else None
        if path is not None and path.is_file():
            self.hidden = torch.load(path)
            return
        was_training = enc.training
        enc.eval()
        self.hidden: list[Optional[torch.Tensor]] = [None] * len(samples)
        batches = bucketed_batches(samples, batch_size, random.Random(0), shuffle=False)
        with torch.no_grad():
            for b in tqdm(batches, desc=f"{desc} ({len(samples)} prompts, once)",
                          disable=not progress):
                ids, mask, _ = _tensors(model, samples, b)
                h = enc.bottom(ids, mask)
                for j, i in enumerate(b):
                    self.hidden[i] = h[j, : len(samples[i][0])].to(torch.float16).clone()
        enc.train(was_training)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            torch.save(self.hidden, tmp)
            os.replace(tmp, path)

    @staticmethod
    def key(model: ErcModel, samples) -> str:
        """Digest of the frozen bottom's weights, its depth and every sample's token ids."""
        enc = model.text_encoder
        h = hashlib.sha256(f"{enc.config.freeze_layers}".encode())
        parts = [enc.backbone.embeddings, *enc.backbone.encoder.layer[: enc.config.freeze_layers]]
        for part in parts:
            for name, t in part.state_dict().items():
                h.update(name.encode())
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
        for ids, _ in samples:
            h.update(np.asarray(ids, np.int32).tobytes() + b"|")
        return h.hexdigest()[:20]

    def batch(self, batch, length: int) -> torch.Tensor:
        """[B, length, D] float32, zero past each sample's end (padding, masked anyway)."""
        hs = [self.hidden[i] for i in batch]
        out = torch.zeros(len(hs), length, hs[0].shape[-1])
        for j, h in enumerate(hs):
            out[j, : h.shape[0]] = h.float()
        return out


def frozen_prefix(model: ErcModel, samples, enabled: bool, **kw) -> Optional[FrozenPrefix]:
    """A :class:`FrozenPrefix` when ``enabled`` and the encoder freezes some layers."""
    if not enabled or not samples or model.text_encoder.config.freeze_layers <= 0:
        return None
    return FrozenPrefix(model, samples, **kw)


@torch.no_grad()
def text_vectors(model: ErcModel, dialogues: Sequence[Dialogue], cache_dir,
                 batch_size: int = 64, progress: bool = True) -> list[torch.Tensor]:
    """Every utterance's text vector (past context only, as :meth:`ErcModel.encode` gives it),
    one [T, D] tensor per dialogue, the frozen bottom read from (or added to) the prefix
    cache in ``cache_dir``: a stage-2 head over a 110M teacher then costs only its top."""

    samples = build_samples(model, dialogues, unlabelled=True)
    prefix = FrozenPrefix(model, samples, progress=progress, cache_dir=cache_dir)
    enc = model.text_encoder
    was_training = enc.training
    enc.eval()
    out: list[Optional[torch.Tensor]] = [None] * len(samples)
    batches = bucketed_batches(samples, batch_size, random.Random(0), shuffle=False)
    for b in tqdm(batches, desc="trained layers", disable=not progress):
        ids, mask, _ = _tensors(model, samples, b)
        v = enc.top(prefix.batch(b, ids.shape[1]), ids, mask)
        for j, i in enumerate(b):
            out[i] = v[j]
    enc.train(was_training)
    rows, s = [], 0
    for d in dialogues:
        rows.append(torch.stack(out[s:s + len(d.utterances)]))
        s += len(d.utterances)
    return rows


@torch.no_grad()
def predict_samples(net: nn.Module, model: ErcModel, samples, batch_size: int = 64,
                    progress: bool = False, prefix: Optional[FrozenPrefix] = None) -> np.ndarray:

    net.eval()
    batches = bucketed_batches(samples, batch_size, random.Random(0), shuffle=False)
    out = np.zeros((len(samples), len(model.label_names)), np.float32)
    for b in tqdm(batches, desc="eval", leave=False, disable=not progress):
        ids, mask, _ = _tensors(model, samples, b)
        hidden = prefix.batch(b, ids.shape[1]) if prefix is not None else None
        out[b] = torch.softmax(net(ids, mask, hidden), -1).numpy()
    return out


def teacher_logits(teachers: Sequence[ErcModel], dialogues: Sequence[Dialogue],
                   progress: bool = True, prefix_cache_dir=None) -> np.ndarray:
    """Log of the teachers' mean class probabilities for every labelled utterance of
    ``dialogues``, in :func:`build_samples` order (each teacher builds its own prompts), each
    utterance alone, as stage 1 trains (:func:`fusion_stage.dialogue_teacher_logits` runs
    the heads over whole dialogues). ``prefix_cache_dir``: a teacher with frozen layers reads
    their states from the cache its training left there (:class:`FrozenPrefix`), so only its
    trained top runs."""
    probs, labels = [], None
    for t in teachers:
        samples = build_samples(t, dialogues)
        y = [l for _, l in samples]
        if labels is not None and y != labels:
            raise ValueError("teachers disagree on the labelled utterances (label maps differ?)")
        labels = y
        prefix = frozen_prefix(t, samples, bool(prefix_cache_dir), progress=progress,
                               cache_dir=prefix_cache_dir)
        probs.append(predict_samples(TextClassifier(t), t, samples, progress=progress,
                                     prefix=prefix))
    return np.log(np.mean(probs, axis=0) + 1e-8).astype(np.float32)


def train_text_stage(model: ErcModel, train: Sequence[Dialogue], dev: Sequence[Dialogue],
                     cfg: TextStageConfig, log=print, progress: bool = True,
                     teacher: Optional[np.ndarray] = None,
                     teacher_features: Optional[np.ndarray] = None) -> dict:
    """Fine-tune in place; returns a summary with the per-epoch dev metrics. The model ends
    holding the best weights (raw or EMA) by dev weighted F1. ``teacher``: logits of
    trained teachers for the train samples (:func:`teacher_logits`); with ``cfg.distill``
    the loss is (1 - distill) * CE + distill * KL(teacher || student) at ``distill_tau``.
    ``teacher_features``: the teachers' text vectors of the same samples [N, Dt']; with
    ``cfg.feature_distill`` the loss adds feature_distill * :func:`feature_distillation` of
    the student's vectors, mapped to Dt' by a linear layer that trains with the head and is
    not part of the model (the seeds' feature and relational distillation)."""

    from erc_ros.training.distributed import DistContext

    dist = DistContext.from_env()
    process.configure(torch_threads=cfg.threads, by="text stage")  # no-op under the CLI
    seed_everything(cfg.seed)
    dist.broadcast_module(model)
    net = TextClassifier(model)
    tr = build_samples(model, train)
    dv = build_samples(model, dev) if dev else []
    if teacher is not None and len(teacher) != len(tr):
        raise ValueError(f"{len(teacher)} teacher rows for {len(tr)} training samples")
    feature_kd = teacher_features is not None and cfg.feature_distill > 0
    if feature_kd:
        if len(teacher_features) != len(tr):
            raise ValueError(f"{len(teacher_features)} teacher vectors for {len(tr)} "
                             "training samples")
        net.feature_proj = nn.Linear(model.dims[0], teacher_features.shape[1])
    kw = dict(progress=progress and not dist.rank, cache_dir=cfg.prefix_cache_dir or None)
    ptr = frozen_prefix(model, tr, cfg.cache_frozen, **kw)
    pdv = frozen_prefix(model, dv, cfg.cache_frozen, **kw)
    counts = class_counts(train, len(model.label_names))
    cw = torch.as_tensor(class_weights(counts, cfg.class_weight_power))
    log(f"text stage: {len(tr)} train / {len(dv)} dev samples, class weights "
        f"{np.round(cw.numpy(), 2).tolist()}, world size {dist.world_size}")

    head = [p for n, p in net.named_parameters()
            if n.startswith(("fusion", "feature_proj")) and p.requires_grad]
    enc = [p for n, p in net.named_parameters() if n.startswith("text_encoder") and p.requires_grad]
    no_decay = lambda p: p.ndim < 2  # noqa: E731 - biases and LayerNorm weights
    groups = [
        {"params": [p for p in enc if not no_decay(p)], "lr": cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": [p for p in enc if no_decay(p)], "lr": cfg.lr, "weight_decay": 0.0},
        {"params": head, "lr": cfg.head_lr, "weight_decay": cfg.weight_decay},
    ]
    opt = torch.optim.AdamW([g for g in groups if g["params"]])
    rng = random.Random(cfg.seed)
    per_epoch = math.ceil(len(bucketed_batches(tr, cfg.batch_size, random.Random(0))) / dist.world_size)
    total = per_epoch * cfg.epochs if not cfg.max_steps else min(cfg.max_steps, per_epoch * cfg.epochs)
    warm = max(1, int(cfg.warmup * total))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
    ddp_net = dist.wrap(net)
    ema = EmaTeacher(net, cfg.ema_decay) if cfg.ema_decay > 0 else None

    history, best = [], {"weighted_f1": -1.0}
    best_state = None
    step = 0
    stopped = False
    t0 = time.time()
    for epoch in range(cfg.epochs):
        net.train()
        batches = bucketed_batches(tr, cfg.batch_size, rng)
        batches = batches[dist.rank::dist.world_size][:per_epoch]
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=not progress or dist.rank)
        run_loss = 0.0
        for b in bar:
            ids, mask, y = _tensors(model, tr, b)
            hidden = ptr.batch(b, ids.shape[1]) if ptr is not None else None
            if feature_kd:
                logits, vec = ddp_net(ids, mask, hidden, return_vector=True)
            else:
                logits = ddp_net(ids, mask, hidden)
            loss = weighted_cross_entropy(logits, y, cw, cfg.label_smoothing)
            if teacher is not None and cfg.distill > 0:
                loss = (1 - cfg.distill) * loss + cfg.distill * self_distillation(
                    logits, torch.from_numpy(teacher[b]), cfg.distill_tau)
            if feature_kd:
                loss = loss + cfg.feature_distill * feature_distillation(
                    vec, torch.from_numpy(teacher_features[b]), cfg.feature_distill_tau)
            if ema is not None and cfg.self_distill > 0:
                with torch.no_grad():
                    t_logits = ema(ids, mask, hidden)
                ramp = min(1.0, step / max(1, per_epoch))  # teacher is poor early on
                loss = loss + ramp * cfg.self_distill * self_distillation(
                    logits, t_logits, cfg.self_distill_tau)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip:
                nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            if ema is not None:
                # Early on the average would be dominated by the initial weights.
                ema.update(net, min(cfg.ema_decay, (1 + step) / (10 + step)))
            step += 1
            run_loss = 0.98 * run_loss + 0.02 * loss.item() if step > 1 else loss.item()
            bar.set_postfix(loss=f"{run_loss:.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
            if (cfg.max_steps and step >= cfg.max_steps) or \
                    (cfg.max_minutes and time.time() - t0 > 60 * cfg.max_minutes):
                stopped = True
                break
        if dv and cfg.eval_every_epoch:  # every rank, so all keep the same best
            candidates = [("raw", net)] + ([("ema", ema.module)] if ema is not None else [])
            for name, m in candidates:
                probs = predict_samples(m, model, dv, progress=progress, prefix=pdv)
                s = scores([y for _, y in dv], probs.argmax(1), model.label_names)
                rec = {"epoch": epoch + 1, "weights": name, "weighted_f1": s["weighted_f1"],
                       "accuracy": s["accuracy"], "minutes": round((time.time() - t0) / 60, 1)}
                history.append(rec)
                if dist.rank == 0:
                    log(f"dev {rec}")
                if s["weighted_f1"] > best["weighted_f1"]:
                    best = dict(rec, scores=s)
                    best_state = copy.deepcopy({k: v.detach().clone() for k, v in m.state_dict().items()})
        if stopped:
            break
    if best_state is not None:
        net.load_state_dict(best_state)
    elif ema is not None:
        net.load_state_dict(ema.module.state_dict())
    dist.barrier()
    return {"history": history, "best": {k: v for k, v in best.items() if k != "scores"},
            "best_scores": best.get("scores"), "steps": step,
            "minutes": round((time.time() - t0) / 60, 1), "config": cfg.to_dict()}
