"""`python -m erc_ros train --recipe face`: a face-expression expert trained here.

    python -m erc_ros train --recipe face --out models/face          # FER2013 train, public_test as dev

Trains :class:`~erc_ros.models.face_net.FaceNet` (VGG-style, 48x48 grey) on a face corpus
(:mod:`erc_ros.datasets.fer2013`: FER2013's npz or CSV, or a folder per class) with
augmentation for a robot's camera (:class:`~erc_ros.training.face_augment.FaceAugment`, made
one batch ahead in a loader thread), label smoothing, SGD with Nesterov momentum and weight
decay under a linear warm-up then cosine schedule (per step). SGD + Nesterov is the
optimiser that read FER2013 best with a VGG net in Khaireddin & Chen's comparison (2021,
73.28 % single-network); the cosine schedule fits a fixed budget of epochs, which a plateau
rule does not.

Every epoch ends with the dev set scored with test-time flip (the mean of the probabilities
of a face and its mirror): accuracy, UAR (unweighted average recall), per-class F1 and the
confusion matrix (:func:`erc_ros.training.metrics.scores`), and a checkpoint
(``train_state.pt`` in the output folder: weights, optimiser, schedule, torch RNG, history,
the best weights so far). Running the same command again resumes after the last finished
epoch; a larger ``--epochs`` continues the run (the cosine then spans the new total). The
weights kept are those of the epoch with the best dev accuracy: dev chose among that many
epochs, and the manifest says so. ``--init DIR`` starts a new run from a face model
directory's weights (the recipe's network: the shipped expert trained on, on FER2013 or on
one's own faces); the manifest then records the model it came from.

Training runs in float32 by default; ``--precision bf16`` runs the forward pass under
bfloat16 autocast (weights and optimiser stay float32) and ``--precision auto`` picks bf16
where the CPU has AMX or AVX512-BF16. On the 2-core AMX Xeon this was written on, bf16
autocast made a step slower, not faster (docs/faces.md). The kept model is scored again in
float32 at the end, the precision it is stored in and deployed with.
"""
from __future__ import annotations

import argparse
import copy
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Literal, Optional, get_args

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from erc_ros.datasets.dialogues import class_weights
from erc_ros.datasets.fer2013 import (FaceDataError, FaceSet, corpus_terms, default_dev,
                                      held_out_split, read_faces)
from erc_ros.models.artefact import ArtefactError, add_artefact, check_model_id
from erc_ros.models.face_expert import normalise
from erc_ros.models.face_net import FaceNet, FaceNetConfig, load_face_model, save_face_model
from erc_ros.models.net_dir import count_parameters
from erc_ros.paths import data_root
from erc_ros.runtime.backends import cpu_flags
from erc_ros.training.face_augment import AugmentConfig, FaceAugment
from erc_ros.training.metrics import plot_confusion, scores
from erc_ros.training.provenance import model_reference

CHECKPOINT = "train_state.pt"
CHECKPOINT_FORMAT = 1
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS = get_args(Precision)
#: CPU flags under which bfloat16 autocast runs natively (AMX tiles, or AVX-512's bf16 dot
#: products); elsewhere it is emulated and slower than float32.
BF16_FLAGS = ("amx_bf16", "avx512_bf16")
#: Share of the training faces held out as dev when no dev set is given or found.
HELD_OUT_SHARE = 0.1


@dataclass
class FaceStageConfig:
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.1
    class_weight_power: float = 0.0   # (n / n_c) ** power; 0: unweighted
    precision: Precision = "fp32"
    channels_last: bool = True
    prefetch: bool = True              # augment the next batch in a thread while one trains
    tta: bool = True                   # dev scored with test-time flip
    seed: int = 13
    max_steps: int = 0                 # stop after this many steps (smoke runs)
    max_minutes: float = 0.0
    init: str = ""                     # the model the run starts from (--init): id@manifest sha
    net: FaceNetConfig = field(default_factory=FaceNetConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["net"], d["augment"] = self.net.to_dict(), self.augment.to_dict()
        return d

    @classmethod
    def from_recipe(cls, r: dict) -> "FaceStageConfig":
        kw = {k: v for k, v in r.items() if k in cls.__dataclass_fields__ and
              k not in ("net", "augment")}
        return cls(**kw, net=FaceNetConfig.from_dict(r.get("net", {})),
                   augment=AugmentConfig(**r.get("augment", {})))


def resolve_precision(requested: Precision, flags: Optional[set[str]] = None
                      ) -> tuple[Literal["fp32", "bf16"], str]:
    """(``fp32`` or ``bf16``, why) for ``--precision``."""
    if requested not in PRECISIONS:
        raise ValueError(f"precision {requested!r}: one of {', '.join(PRECISIONS)}")
    if requested != "auto":
        return requested, "requested"
    flags = cpu_flags() if flags is None else flags
    have = [f for f in BF16_FLAGS if f in flags]
    if have:
        return "bf16", f"auto: this CPU has {have[0]}"
    return "fp32", "auto: this CPU has no AMX / AVX512-BF16 (bf16 would be emulated)"


def autocast(precision: str, device: str = "cpu"):
    """The forward pass's context: bfloat16 autocast, or nothing for float32."""
    if precision == "bf16":
        return torch.autocast(device_type=device, dtype=torch.bfloat16)
    return nullcontext()


def cpu_name() -> str:
    """The CPU's model name and x86 family/model (for the record of a timing)."""
    info = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                info.setdefault(k.strip(), v.strip())
    except OSError:
        return platform.processor() or platform.machine()
    name = info.get("model name", platform.machine())
    if "cpu family" in info and "model" in info:
        name += f" (family {info['cpu family']} model {info['model']})"
    return name


def _tensor(pixels: np.ndarray, channels_last: bool, device: str) -> torch.Tensor:
    x = torch.from_numpy(normalise(pixels)[:, None]).to(device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def predict_faces(net: FaceNet, images: np.ndarray, batch_size: int = 256,
                  precision: str = "fp32", tta: bool = True, channels_last: bool = True,
                  device: str = "cpu") -> np.ndarray:
    """(n, classes) probabilities of ``net`` for uint8 faces (n, 48, 48); with ``tta`` the
    mean of each face's and its mirror's."""
    was_training = net.training
    net.eval()
    out = []
    with torch.inference_mode():
        for s in range(0, len(images), batch_size):
            x = _tensor(images[s:s + batch_size], channels_last, device)
            with autocast(precision, device):
                p = F.softmax(net(x).float(), dim=1)
                if tta:
                    p = 0.5 * (p + F.softmax(net(torch.flip(x, dims=[3])).float(), dim=1))
            out.append(p.cpu().numpy())
    net.train(was_training)
    n = len(net.label_names)
    return np.concatenate(out) if out else np.zeros((0, n), np.float32)


def dev_figures(probs: np.ndarray, faces: FaceSet) -> dict:
    """accuracy, UAR, weighted / macro F1, per-class F1, confusion, support (in %)."""
    return scores(faces.labels.tolist(), probs.argmax(1).tolist(), faces.classes)


def _schedule(warm: int, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / max(1, total - warm))))
    return factor


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    order = rng.permutation(n)
    # the last, short batch is dropped: a batch of a few faces gives BatchNorm poor statistics
    return [order[s:s + batch_size] for s in range(0, n - batch_size + 1, batch_size)] or \
        [order]


def _settings(cfg: FaceStageConfig) -> dict:
    """What a resumed run must share with the checkpoint (all but the epoch budget and the
    smoke-run limits)."""
    d = cfg.to_dict()
    for k in ("epochs", "max_steps", "max_minutes", "prefetch"):
        d.pop(k)
    return d


def _save_checkpoint(path: Path, state: dict) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def train_face_stage(train: FaceSet, dev: FaceSet, cfg: FaceStageConfig, out_dir: str | Path,
                     log: Callable[[str], None] = print, progress: bool = True,
                     device: str = "cpu", init_state: Optional[dict] = None) -> dict:
    """Train (or resume, from ``out_dir/train_state.pt``) and return the summary: the net
    holding the best weights by dev accuracy, ``history`` (one record per epoch), ``best``
    (that epoch's record and dev figures), ``precision`` and why, ``resumed_at``.
    ``init_state``: the weights a new run starts from (``cfg.init`` names them)."""

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = out_dir / CHECKPOINT
    precision, why = resolve_precision(cfg.precision)
    torch.manual_seed(cfg.seed)
    net = FaceNet(cfg.net)
    if init_state is not None:
        net.load_state_dict(init_state)
    net = net.to(device)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]  # biases, BatchNorm
    opt = torch.optim.SGD([{"params": decay, "weight_decay": cfg.weight_decay},
                           {"params": no_decay, "weight_decay": 0.0}],
                          lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov)
    per_epoch = len(_batches(len(train), cfg.batch_size, np.random.default_rng(0)))
    total = per_epoch * cfg.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, _schedule(max(1, int(round(cfg.warmup_epochs * per_epoch))), total))
    cw = None
    if cfg.class_weight_power:
        cw = torch.as_tensor(class_weights(np.bincount(train.labels, minlength=len(
            train.classes)), cfg.class_weight_power), device=device)
    augment = FaceAugment(cfg.augment)
    settings = _settings(cfg)
    data = {"train": train.sha256, "dev": dev.sha256, "train_faces": len(train),
            "dev_faces": len(dev)}
    history: list[dict] = []
    best: dict = {"accuracy": -1.0}
    best_state = None
    start, step, resumed_at = 0, 0, None
    if ckpt_path.is_file():
        ck = torch.load(ckpt_path, map_location=device, weights_only=True)
        if ck.get("format") != CHECKPOINT_FORMAT or ck.get("settings") != settings or \
                ck.get("data") != data:
            diff = sorted(k for k in set(settings) | set(ck.get("settings", {}))
                          if settings.get(k) != ck.get("settings", {}).get(k))
            what = f"settings {', '.join(diff)}" if diff else "data"
            raise SystemExit(f"error: {ckpt_path} is a run with other {what}: use another "
                             f"--out, or delete it to start again")
        net.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["torch_rng"].cpu())
        history, best, best_state = ck["history"], ck["best"], ck["best_state"]
        start, step = int(ck["epoch"]), int(ck["step"])
        if ck["epochs"] != cfg.epochs and start < cfg.epochs:
            log(f"schedule: the checkpoint's run planned {ck['epochs']} epochs, now "
                f"{cfg.epochs}: the cosine continues over the new total from step {step}")
        resumed_at = start + 1
        if start >= cfg.epochs:
            log(f"{ckpt_path}: {start} epochs done already (asked {cfg.epochs}): nothing to "
                "train")
        else:
            log(f"resumed at epoch {resumed_at} from {ckpt_path} (best so far: dev accuracy "
                f"{best.get('accuracy')} at epoch {best.get('epoch')})")
    log(f"face stage: {len(train)} train / {len(dev)} dev faces, {count_parameters(net):,} "
        f"parameters, precision {precision} ({why}), batch {cfg.batch_size}, {per_epoch} "
        f"steps an epoch, lr {cfg.lr}, {cfg.epochs} epochs, torch threads "
        f"{torch.get_num_threads()}, {cpu_name()}")
    loader = ThreadPoolExecutor(1, thread_name_prefix="face-augment") if cfg.prefetch else None

    def make(epoch: int, i: int, index: np.ndarray):
        # each batch's randomness from (seed, epoch, batch): the same faces whatever the
        # order batches are made in, and nothing to carry across a resume
        rng = np.random.default_rng([cfg.seed, epoch, i])
        x = _tensor(augment(train.images[index], rng), cfg.channels_last, device)
        return x, torch.from_numpy(train.labels[index]).to(device)

    t_run = time.time()
    stopped = False
    try:
        for epoch in range(start, cfg.epochs):
            net.train()
            batches = _batches(len(train), cfg.batch_size,
                               np.random.default_rng([cfg.seed, epoch]))
            t0 = time.time()
            waited = 0.0
            seen, run_loss, correct = 0, 0.0, 0
            bar = tqdm(total=len(batches), desc=f"face epoch {epoch + 1}/{cfg.epochs}",
                       disable=not progress, leave=False)
            pending = loader.submit(make, epoch, 0, batches[0]) if loader else None
            for i, index in enumerate(batches):
                tw = time.time()
                if loader:
                    x, y = pending.result()
                    if i + 1 < len(batches):
                        pending = loader.submit(make, epoch, i + 1, batches[i + 1])
                else:
                    x, y = make(epoch, i, index)
                waited += time.time() - tw
                with autocast(precision, device):
                    logits = net(x)
                loss = F.cross_entropy(logits.float(), y, weight=cw,
                                       label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                seen += len(y)
                run_loss += loss.item() * len(y)
                correct += int((logits.argmax(1) == y).sum())
                bar.update(1)
                bar.set_postfix(loss=f"{run_loss / seen:.3f}", lr=f"{sched.get_last_lr()[0]:.1e}")
                if (cfg.max_steps and step >= cfg.max_steps) or \
                        (cfg.max_minutes and time.time() - t_run > 60 * cfg.max_minutes):
                    stopped = True
                    break
            bar.close()
            if pending is not None and stopped:
                pending.cancel()
            train_s = time.time() - t0
            probs = predict_faces(net, dev.images, precision=precision, tta=cfg.tta,
                                  channels_last=cfg.channels_last, device=device)
            s = dev_figures(probs, dev)
            rec = {"epoch": epoch + 1, "steps": step, "train_loss": round(run_loss / seen, 4),
                   "train_accuracy": round(100.0 * correct / seen, 2),
                   "dev_accuracy": s["accuracy"], "dev_uar": s["uar"],
                   "dev_macro_f1": s["macro_f1"], "lr": round(sched.get_last_lr()[0], 6),
                   "train_seconds": round(train_s, 1),
                   "loader_wait_seconds": round(waited, 1),
                   "dev_seconds": round(time.time() - t0 - train_s, 1),
                   **({"partial": True, "faces": seen} if stopped else {})}
            history.append(rec)
            log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {rec['train_loss']:.4f}, dev "
                f"accuracy {s['accuracy']:.2f}, UAR {s['uar']:.2f}, {train_s:.0f} s train "
                f"(waited {waited:.1f} s for batches) + {rec['dev_seconds']:.0f} s dev"
                + (" [stopped early]" if stopped else ""))
            if s["accuracy"] > best["accuracy"]:
                best = {"epoch": epoch + 1, "accuracy": s["accuracy"], "uar": s["uar"],
                        "macro_f1": s["macro_f1"], "weighted_f1": s["weighted_f1"]}
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            if stopped:
                break
            _save_checkpoint(ckpt_path, {
                "format": CHECKPOINT_FORMAT, "epoch": epoch + 1, "epochs": cfg.epochs,
                "step": step, "model": net.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "torch_rng": torch.get_rng_state(),
                "history": history, "best": best, "best_state": best_state,
                "settings": settings, "data": data})
    finally:
        if loader:
            loader.shutdown(wait=True, cancel_futures=True)
    if best_state is not None:
        net.load_state_dict(best_state)
    return {"net": net, "history": history, "best": best, "precision": precision,
            "precision_why": why, "resumed_at": resumed_at, "stopped_early": stopped,
            "epochs_done": len([h for h in history if not h.get("partial")]),
            "train_minutes": round((time.time() - t_run) / 60, 1)}


# ---------------------------------------------------------------------------------------
# The command (train_cli hands --recipe face over)

#: Flags of the text recipes that mean nothing for the face recipe.
TEXT_ONLY_FLAGS = ("encoder", "past_context", "max_length", "freeze_layers", "self_distill",
                   "distill", "feature_distill", "select", "media", "robot_view_copy")


def _count(lo: int):
    """An argparse type: an int of at least ``lo`` (a usage error names the flag)."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an int") from None
        if v < lo:
            raise argparse.ArgumentTypeError(f"{v} is below {lo}")
        return v
    parse.__name__ = "int"
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The face recipe's own flags (train_cli adds them to ``train``)."""
    p.add_argument("--faces", help="--recipe face: training faces: an .npz (images, labels), "
                   "FER2013's CSV (its Training rows) or a folder per class (default: "
                   "$ERC_ROS_DATA/fer2013/train.npz)")
    p.add_argument("--faces-dev", help="--recipe face: dev faces, chosen on (default: "
                   "public_test.npz beside an npz, a CSV's PublicTest rows, else "
                   f"{HELD_OUT_SHARE * 100:.0f}%% of the training faces held out, seeded)")
    p.add_argument("--batch-size", type=_count(1), help="--recipe face: faces per step")
    p.add_argument("--precision", choices=PRECISIONS, help="--recipe face: fp32 (the "
                   "recipe's), bf16 (autocast) or auto (bf16 where the CPU has AMX or "
                   "AVX512-BF16, else fp32)")
    p.add_argument("--device", default="cpu", help="--recipe face: the torch device to train "
                   "on: cpu (default), cuda, cuda:N, or auto (cuda when torch sees a GPU); the "
                   "model is stored and scored in float32 on the CPU either way")
    p.add_argument("--limit-faces", type=_count(0), default=0,
                   help="--recipe face: train on a seeded N of the faces and score a quarter "
                        "as many dev faces (smoke and timing runs)")


def _read(path: Path, usage: str, what: str) -> FaceSet:
    try:
        return read_faces(path, usage)
    except FaceDataError as e:
        raise SystemExit(f"error: {what}: {e}") from None


def _limit(faces: FaceSet, n: int, seed: int) -> FaceSet:
    if not n or n >= len(faces):
        return faces
    index = np.sort(np.random.default_rng(seed).permutation(len(faces))[:n])
    return faces.subset(index, f"{faces.source}, {n} drawn (seed {seed})")


def datasets(args, seed: int) -> tuple[FaceSet, FaceSet, dict]:
    """(train, dev, what was read) from ``--faces`` / ``--faces-dev``."""
    train_path = Path(args.faces or data_root() / "fer2013" / "train.npz")
    train = _read(train_path, "Training", "--faces")
    dev_path = Path(args.faces_dev) if args.faces_dev else default_dev(train_path)
    if dev_path is None:
        train, dev = held_out_split(train, HELD_OUT_SHARE, seed)
    else:
        dev = _read(dev_path, "PublicTest", "--faces-dev")
        if dev.sha256 == train.sha256 and dev.source == train.source:
            raise SystemExit(f"error: --faces-dev {dev_path} is the training data itself")
    if args.limit_faces:
        train = _limit(train, args.limit_faces, seed)
        dev = _limit(dev, max(1, args.limit_faces // 4), seed)
    info = {name: {"source": s.source, "sha256": s.sha256, "faces": len(s),
                   "per_class": s.counts(), "terms": corpus_terms(p)}
            for name, s, p in (("train", train, train_path),
                               ("dev", dev, dev_path or train_path))}
    return train, dev, info


def resolve_device(requested: str) -> str:
    """``--device``: ``cpu``, ``cuda[:N]`` (refused when torch sees no GPU) or ``auto``."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cpu":
        return requested
    if requested.split(":")[0] != "cuda":
        raise SystemExit(f"error: --device {requested!r}: cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise SystemExit(f"error: --device {requested}: torch {torch.__version__} sees no GPU")
    return requested


def init_weights(model_dir: str, net: FaceNetConfig, recipe: str) -> tuple[dict, str]:
    """(the weights, ``id@manifest sha256[:16]``) of the face model ``--init`` names, checked
    (every file's sha256) and refused unless its network is the recipe's."""
    try:
        model, _ = load_face_model(model_dir)
    except (ArtefactError, OSError, ValueError) as e:
        raise SystemExit(f"error: --init {model_dir}: {e}") from None
    if model.config != net:
        raise SystemExit(f"error: --init {model_dir}: its network ({model.config.channels} "
                         f"channels, hidden {model.config.hidden}) is not --recipe {recipe}'s "
                         f"({net.channels}, hidden {net.hidden}): use the recipe it was "
                         "trained by")
    ref = model_reference(model_dir)
    return model.state_dict(), f"{ref['model_id']}@{ref['manifest_sha256'][:16]}"


def run(args, recipe: dict, provenance) -> int:
    """The command: ``recipe`` the face recipe's settings, ``provenance(args, **fields)``
    what the saved model records."""

    given = [f"--{k.replace('_', '-')}" for k in TEXT_ONLY_FLAGS if getattr(args, k, None)]
    if given or getattr(args, "teacher", None) or getattr(args, "heard", None):
        extra = (["--teacher"] if getattr(args, "teacher", None) else []) + \
            (["--heard"] if getattr(args, "heard", None) else [])
        raise SystemExit(f"error: {', '.join(given + extra)}: not read by --recipe face")
    r = copy.deepcopy(recipe)
    for k in ("epochs", "lr", "seed", "batch_size", "precision", "class_weight_power"):
        if getattr(args, k, None) is not None:
            r[k] = getattr(args, k)
    r["max_steps"], r["max_minutes"] = args.max_steps, args.max_minutes
    init_state = None
    if getattr(args, "init", None):
        init_state, r["init"] = init_weights(args.init, FaceStageConfig.from_recipe(r).net,
                                             args.recipe)
    cfg = FaceStageConfig.from_recipe(r)
    model_id = check_model_id(args.model_id or f"face-{args.recipe}-{time.strftime('%Y%m%d')}")
    train, dev, data = datasets(args, cfg.seed)
    log = lambda s: print(s, file=sys.stderr, flush=True)  # noqa: E731
    log(f"train: {train.describe()}\ndev: {dev.describe()}")
    out = Path(args.out)
    device = resolve_device(getattr(args, "device", None) or "cpu")
    if device != "cpu":
        torch.backends.cudnn.benchmark = True
    summary = train_face_stage(train, dev, cfg, out, log=log, device=device,
                               init_state=init_state)
    net = summary["net"].cpu()
    # The kept weights scored as they are stored and deployed: float32, with and without
    # the test-time flip.
    final = {}
    for tta in (True, False):
        p = predict_faces(net, dev.images, precision="fp32", tta=tta,
                          channels_last=cfg.channels_last)
        final["tta" if tta else "no_tta"] = dev_figures(p, dev)
    s = final["tta" if cfg.tta else "no_tta"]
    epochs = list(summary["history"])
    dev_metrics = {
        "split": dev.source, "faces": len(dev), "precision": "fp32",
        "tta": cfg.tta, "accuracy": s["accuracy"], "uar": s["uar"],
        "weighted_f1": s["weighted_f1"], "macro_f1": s["macro_f1"],
        "per_class_f1": s["per_class_f1"], "confusion": s["confusion"],
        "support": s["support"],
        "without_tta": {k: final["no_tta"][k] for k in ("accuracy", "uar", "macro_f1")},
        "epoch": summary["best"].get("epoch"),
        # how many candidates dev chose among for this model: one per scored epoch
        "selection": {"by": "dev accuracy" + (" (test-time flip)" if cfg.tta else ""),
                      "candidates": len(epochs), "precision": summary["precision"]},
    }
    train_s = [h["train_seconds"] for h in epochs if not h.get("partial")]
    prov = provenance(
        args, recipe={"name": args.recipe, **cfg.to_dict()}, seed=cfg.seed, data=data,
        dev_metrics=dev_metrics, history=epochs, train_minutes=summary["train_minutes"],
        training={"precision": summary["precision"], "precision_why": summary["precision_why"],
                  "cpu": cpu_name(), "torch_threads": torch.get_num_threads(),
                  "device": device if device == "cpu" else
                  f"{device} ({torch.cuda.get_device_name(device)})",
                  "seconds_per_epoch": round(float(np.median(train_s)), 1) if train_s else None,
                  "resumed_at": summary["resumed_at"], "stopped_early": summary["stopped_early"]})
    save_face_model(net, out, model_id, prov)
    plot_confusion(s["confusion"], list(dev.classes), out / "dev_confusion.png",
                   f"{model_id} dev ({dev.source}): acc {s['accuracy']} UAR {s['uar']}")
    add_artefact(out, "dev_confusion.png", "report")
    log(f"\nsaved {out}  best dev ({dev.source}, fp32, "
        f"{'flip TTA' if cfg.tta else 'no TTA'}): accuracy {s['accuracy']}, UAR {s['uar']}, "
        f"macro F1 {s['macro_f1']} (epoch {dev_metrics['epoch']} of {len(epochs)} scored; "
        f"without TTA {final['no_tta']['accuracy']})  in {summary['train_minutes']} min"
        + (f"\n({CHECKPOINT} in {out} is the training state, not part of the model: delete it "
           "before shipping the directory)" if (out / CHECKPOINT).exists() else ""))
    return 0
