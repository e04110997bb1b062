"""`python -m erc_ros train --recipe voice`: the voice expert, trained and checked by speaker.

    python -m erc_ros train --recipe voice --out models/voice     # RAVDESS from $ERC_ROS_DATA

Reads labelled speech (``--voices KIND:PATH``, repeatable; default RAVDESS's 18 actors in
``$ERC_ROS_DATA/ravdess_speech``; :mod:`erc_ros.datasets.voices` reads RAVDESS, CREMA-D,
IEMOCAP, MELD.Raw and a ``path,label,speaker`` CSV). Each clip, and ``copies`` augmented
copies of it (:mod:`erc_ros.training.voice_augment`: room, noise, level, speed, codec), is
prepared as the runtime prepares an utterance and encoded by Whisper's encoder
(:mod:`erc_ros.runtime.voice_expert`); the pooled states are cached in the output folder
(``voice_features.npz``, written every chunk: a stopped run resumes where it stopped).

Then, with ``--folds K`` (default 6), cross-validation by speaker: for each group of held-out
speakers a network (:class:`~erc_ros.models.voice_net.VoiceNet`) is trained on the others'
clips (clean and augmented) and reads the held-out speakers' clean clips. Their
out-of-fold readings give the figures (UAR, weighted F1, per-class F1, confusion), the
calibration temperature (the one minimising their negative log-likelihood) and the gate: a
voice is unfamiliar past the ``gate_distance_quantile`` of the held-out speakers' distances,
undecided past the ``gate_entropy_quantile`` of their calibrated entropies. No choice is made
on those figures: the recipe fixes every setting. The model kept is trained on every
speaker, with the temperature and gate from cross-validation. ``--ablate`` runs the
cross-validation once per augmentation set (none, each alone, all) and prints each one's
figures on clean and on augmented held-out speech, without training a model;
``--compare-inputs`` cross-validates the same network on each candidate input (Whisper base's
and tiny.en's pooled states, eGeMAPS, resemblyzer's d-vector, base + eGeMAPS).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from erc_ros.core.audio_files import AudioFileError, read_audio_16k
from erc_ros.datasets.voices import (RAVDESS_LICENCE, VOICE_CLASSES, VoiceClip, VoiceDataError,
                                     read_voices, speaker_folds)
from erc_ros.models.artefact import add_artefact, check_model_id
from erc_ros.models.egemaps import egemaps_features
from erc_ros.models.voice_net import VoiceNet, VoiceNetConfig, save_voice_model
from erc_ros.paths import data_root
from erc_ros.runtime.voice_expert import (CHECK_FILE, VoiceGate, WhisperStates,
                                          normalized_entropy, pooled, speech_level,
                                          speech_span, voice_segment)
from erc_ros.training.metrics import plot_confusion, scores
from erc_ros.training.voice_augment import (AUGMENTATIONS, ORDER, augment, other_speech,
                                            parse)

FEATURES_FILE = "voice_features.npz"
#: What the expert could read, compared by ``--compare-inputs`` (the expert reads the first).
INPUTS = ("whisper-base", "whisper-tiny.en", "egemaps", "dvector", "whisper-base+egemaps")


@dataclass
class VoiceStageConfig:
    encoder: str = "tiny.en"
    compute_type: str = "int8"
    augment: tuple[str, ...] = AUGMENTATIONS
    copies: int = 2                  # augmented copies of each clip besides the clean one
    augment_p: float = 0.7           # each augmentation's chance on a copy
    folds: int = 6                   # cross-validation by speaker (0: none)
    epochs: int = 60
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.01
    label_smoothing: float = 0.1
    seed: int = 13
    gate_distance_quantile: float = 0.99
    gate_entropy_quantile: float = 0.95
    net: dict = field(default_factory=dict)  # VoiceNetConfig fields

    def to_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = list(self.augment)
        return d

    @classmethod
    def from_recipe(cls, r: dict) -> VoiceStageConfig:
        known = {k: v for k, v in r.items() if k in cls.__dataclass_fields__}
        if isinstance(known.get("augment"), str):
            known["augment"] = parse(known["augment"])
        return cls(**known)


def _log(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ features

def _key(clips: list[VoiceClip], cfg: VoiceStageConfig, gate: VoiceGate) -> str:
    h = hashlib.sha256()
    for c in clips:
        h.update(f"{c.path}|{c.label}|{c.speaker}\n".encode())
    h.update(json.dumps([cfg.encoder, cfg.compute_type, list(cfg.augment), cfg.copies,
                         cfg.augment_p, cfg.seed, cfg.folds if "talk" in cfg.augment else None,
                         [getattr(gate, f) for f in gate.SEGMENT_FIELDS]]).encode())
    return h.hexdigest()[:20]


def training_level(clips: list[VoiceClip], gate: VoiceGate) -> float:
    """The median speech level of the clean clips, in dBFS (:func:`speech_level`): the
    level the expert brings every utterance to (``VoiceGate.level_dbfs``)."""
    levels = []
    for c in clips:
        try:
            levels.append(speech_level(read_audio_16k(c.path)[0], gate))
        except AudioFileError:  # encode_clips leaves it out and says so
            continue
    levels = [v for v in levels if math.isfinite(v)]
    if not levels:
        raise SystemExit("error: no clip holds speech the gate reads")
    return round(float(np.median(levels)), 2)


def voice_mates(clips: list[VoiceClip], folds: int) -> dict[str, list[str]]:
    """Whose voice the ``talk`` augmentation may lay over each speaker's clips: the other
    speakers of the same cross-validation fold (:func:`speaker_folds`), so that no voice
    crosses from held-out speakers into training; every other speaker when the folds hold
    one speaker each or there are none."""
    names = sorted({c.speaker for c in clips})
    if len(names) < 2:
        raise VoiceDataError("the talk augmentation needs clips of two speakers or more")
    groups = speaker_folds(clips, folds) if folds and 2 <= folds <= len(names) else [names]
    group = {s: k for k, g in enumerate(groups) for s in g}
    return {s: [o for o in names if o != s and group[o] == group[s]] or
            [o for o in names if o != s] for s in names}


def other_voices(clips: list[VoiceClip], folds: int
                 ) -> Callable[[int], Callable[[np.random.Generator], np.ndarray]]:
    """For clip ``i``, a draw of another speaker's speech (one of :func:`voice_mates`'s,
    a clip at random) for the ``talk`` augmentation."""
    mates = voice_mates(clips, folds)
    by_speaker: dict[str, list[int]] = {}
    for j, c in enumerate(clips):
        by_speaker.setdefault(c.speaker, []).append(j)

    def draw_for(i: int) -> Callable[[np.random.Generator], np.ndarray]:
        theirs = mates[clips[i].speaker]

        def draw(rng: np.random.Generator) -> np.ndarray:
            pool = by_speaker[theirs[int(rng.integers(len(theirs)))]]
            j = pool[int(rng.integers(len(pool)))]
            try:
                return other_speech(read_audio_16k(clips[j].path)[0])
            except AudioFileError:
                return np.zeros(0, np.float32)  # talk then leaves the clip as it is
        return draw
    return draw_for


def encode_clips(clips: list[VoiceClip], cfg: VoiceStageConfig, gate: VoiceGate,
                 cache: Optional[Path], threads: int = 2, chunk: int = 64
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(pooled states (clips, 1 + copies, dim), readable (clips,) bool): copy 0 clean, the
    others augmented (seeded by clip index and copy; ``talk`` lays over them the voice of
    another speaker of the same fold, :func:`other_voices`). ``cache``: an .npz written
    after every ``chunk`` clips and read back first (same clips and settings only)."""
    key = _key(clips, cfg, gate)
    done, feats, ok = 0, None, np.zeros(len(clips), bool)
    if cache is not None and cache.is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            done, feats, ok = int(z["done"]), z["features"], z["readable"]
            _log(f"features: {done} of {len(clips)} clips from {cache}")
    if done >= len(clips):
        return feats, ok
    enc = WhisperStates(cfg.encoder, cfg.compute_type, threads)
    others = other_voices(clips, cfg.folds) if "talk" in cfg.augment and cfg.copies else None
    bad: list[str] = []
    bar = tqdm(total=len(clips), initial=done, desc="encode", unit="clip", file=sys.stderr)
    for i in range(done, len(clips)):
        try:
            x, _ = read_audio_16k(clips[i].path)
        except AudioFileError as e:
            bad.append(str(e))
            bar.update()
            continue
        rows = []
        for k in range(1 + cfg.copies):
            y = x if k == 0 else augment(x, cfg.augment, np.random.default_rng([cfg.seed, i, k]),
                                         cfg.augment_p, others(i) if others else None)
            seg = voice_segment(y, gate)
            rows.append(pooled(enc.states(seg)) if seg is not None else None)
        if rows[0] is None:
            bad.append(f"{clips[i].path}: no speech the gate reads")
        else:
            rows = [r if r is not None else rows[0] for r in rows]
            if feats is None:
                feats = np.zeros((len(clips), 1 + cfg.copies, rows[0].size), np.float32)
            feats[i], ok[i] = np.stack(rows), True
        bar.update()
        if cache is not None and ((i + 1) % chunk == 0 or i + 1 == len(clips)) and feats is not None:
            tmp = cache.with_suffix(".tmp.npz")
            np.savez(tmp, key=key, done=i + 1, features=feats, readable=ok)
            tmp.replace(cache)
    bar.close()
    for b in bad[:10]:
        _log(f"warning: {b} (left out)")
    if len(bad) > 10:
        _log(f"warning: {len(bad) - 10} more clips left out")
    if feats is None:
        raise VoiceDataError("no clip could be read")
    return feats, ok


# ------------------------------------------------------------------ training

def train_net(x: np.ndarray, y: np.ndarray, cfg: VoiceStageConfig, seed: int) -> VoiceNet:
    """A VoiceNet trained on pooled states ``x`` (n, dim) with labels ``y``; its familiarity
    fitted on the same inputs."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = VoiceNet(VoiceNetConfig(input_dim=x.shape[1], **cfg.net))
    net.set_input_statistics(x)
    counts = np.bincount(y, minlength=len(VOICE_CLASSES)).astype(np.float64)
    w = np.where(counts > 0, len(y) / (len(VOICE_CLASSES) * np.maximum(counts, 1)), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(w, dtype=torch.float32),
                                  label_smoothing=cfg.label_smoothing)
    opt = torch.optim.AdamW(net.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    xt, yt = torch.from_numpy(np.ascontiguousarray(x, np.float32)), torch.from_numpy(y)
    net.train()
    for _ in range(cfg.epochs):
        order = rng.permutation(len(y))
        for i in range(0, len(order), cfg.batch_size):
            b = torch.from_numpy(order[i:i + cfg.batch_size])
            logits, _ = net(xt[b])
            loss = loss_fn(logits, yt[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    net.fit_familiarity(x, y)
    return net


def read(net: VoiceNet, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.inference_mode():
        logits, dist = net(torch.from_numpy(np.ascontiguousarray(x, np.float32)))
    return logits.numpy().astype(np.float64), dist.numpy().astype(np.float64)


def _flat(feats: np.ndarray, idx: np.ndarray, labels: np.ndarray, copies: bool
          ) -> tuple[np.ndarray, np.ndarray]:
    sel = feats[idx] if copies else feats[idx, :1]
    return sel.reshape(-1, feats.shape[-1]), np.repeat(labels[idx], sel.shape[1])


def cross_validate(feats: np.ndarray, labels: np.ndarray, speakers: np.ndarray,
                   folds: list[list[str]], cfg: VoiceStageConfig, copy: int = 0,
                   log: Callable[[str], None] = _log) -> dict:
    """Out-of-fold logits and distances of every clip's ``copy`` (0: clean), each read by
    a network that never heard its speaker."""
    n = len(labels)
    logits, dist = np.zeros((n, len(VOICE_CLASSES))), np.zeros(n)
    for k, held in enumerate(folds):
        test = np.isin(speakers, held)
        xs, ys = _flat(feats, np.flatnonzero(~test), labels, copies=True)
        net = train_net(xs, ys, cfg, cfg.seed + k)
        logits[test], dist[test] = read(net, feats[test, copy])
        p = logits[test].argmax(1)
        log(f"  fold {k + 1}/{len(folds)} (held out {', '.join(held)}): accuracy "
            f"{100 * np.mean(p == labels[test]):.1f} %")
    return {"logits": logits, "distance": dist}


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of ``y`` (grid, 0.25-8)."""
    best, best_t = math.inf, 1.0
    for t in np.exp(np.linspace(math.log(0.25), math.log(8.0), 121)):
        z = logits / t
        z = z - z.max(1, keepdims=True)
        nll = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
        if nll < best:
            best, best_t = nll, float(t)
    return round(best_t, 4)


def softmax_t(logits: np.ndarray, t: float) -> np.ndarray:
    z = logits / t
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def summarise(oof: dict, y: np.ndarray, temperature: float, gate: VoiceGate) -> dict:
    """The figures of out-of-fold readings: all clips, and those the gate keeps."""
    p = softmax_t(oof["logits"], temperature)
    pred = p.argmax(1)
    ent = np.array([normalized_entropy(r) for r in p])
    unfamiliar = oof["distance"] > gate.max_distance
    undecided = ~unfamiliar & (ent > gate.max_entropy)
    kept = ~(unfamiliar | undecided)
    out = scores(y, pred, VOICE_CLASSES)
    out["gated"] = {"unfamiliar": round(float(unfamiliar.mean()), 4),
                    "undecided": round(float(undecided.mean()), 4),
                    "kept": int(kept.sum())}
    if kept.any():
        k = scores(y[kept], pred[kept], VOICE_CLASSES)
        out["kept_scores"] = {m: k[m] for m in ("accuracy", "uar", "weighted_f1")}
    out["mean_top_probability"] = round(float(p.max(1).mean()), 4)
    return out


def _table(rows: list[tuple[str, dict]]) -> str:
    lines = [f"{'':24s} {'UAR':>6s} {'wF1':>6s}  " +
             " ".join(f"{c[:7]:>7s}" for c in VOICE_CLASSES)]
    for name, s in rows:
        lines.append(f"{name:24s} {s['uar']:6.2f} {s['weighted_f1']:6.2f}  " +
                     " ".join(f"{s['per_class_f1'][c]:7.2f}" for c in VOICE_CLASSES))
    return "\n".join(lines)


# ------------------------------------------------------------------ the command

def add_arguments(p: argparse.ArgumentParser) -> None:
    """The voice recipe's own flags (train_cli adds them to ``train``)."""
    p.add_argument("--voices", action="append", default=[], metavar="KIND:PATH",
                   help="--recipe voice: labelled speech, repeatable: ravdess:DIR, "
                   "crema-d:DIR, iemocap:DIR, meld-raw:CSV:CLIPS_DIR or clips:CSV "
                   "(path,label,speaker) (default: ravdess:$ERC_ROS_DATA/ravdess_speech)")
    p.add_argument("--folds", type=int, help="--recipe voice: cross-validation folds by "
                   "speaker (the recipe's: 6)")
    p.add_argument("--augment", help="--recipe voice: augmentations of the training "
                   f"copies: a comma list of {', '.join(ORDER)}; all (the recipe's: "
                   f"{', '.join(AUGMENTATIONS)}), all,talk or none")
    p.add_argument("--copies", type=int, help="--recipe voice: augmented copies per clip")
    p.add_argument("--speakers", default="", help="--recipe voice: only these speakers "
                   "(comma list of ids as the corpus names them, e.g. ravdess-01)")
    p.add_argument("--compare-inputs", action="store_true", help="--recipe voice: "
                   f"cross-validate the recipe's network on each candidate input ({', '.join(INPUTS)}), "
                   "clean clips only, and print the table; no model is written")
    p.add_argument("--ablate", action="store_true", help="--recipe voice: cross-validate "
                   "once per augmentation set and print the table; no model is written")


def read_clips(args) -> tuple[list[VoiceClip], list[str]]:
    specs = args.voices or [f"ravdess:{data_root() / 'ravdess_speech'}"]
    clips: list[VoiceClip] = []
    try:
        for s in specs:
            clips += read_voices(s)
    except VoiceDataError as e:
        raise SystemExit(f"error: --voices: {e}") from None
    if args.speakers:
        keep = {s.strip() for s in args.speakers.split(",") if s.strip()}
        unknown = keep - {c.speaker for c in clips}
        if unknown:
            raise SystemExit(f"error: --speakers: {', '.join(sorted(unknown))} not in the data")
        clips = [c for c in clips if c.speaker in keep]
    return clips, specs


def run(args, recipe: dict, provenance) -> int:
    r = dict(recipe)
    for k in ("epochs", "lr", "seed", "folds", "copies"):
        if getattr(args, k, None) is not None:
            r[k] = getattr(args, k)
    if args.augment is not None:
        try:
            r["augment"] = parse(args.augment)
        except ValueError as e:
            raise SystemExit(f"error: --augment: {e}") from None
    cfg = VoiceStageConfig.from_recipe(r)
    model_id = check_model_id(args.model_id or f"{args.recipe}-{time.strftime('%Y%m%d')}")
    clips, specs = read_clips(args)
    labels = np.array([VOICE_CLASSES.index(c.label) for c in clips])
    speakers = np.array([c.speaker for c in clips])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _log(f"{len(clips)} clips, {len(set(speakers))} speakers, classes "
         f"{dict(zip(VOICE_CLASSES, np.bincount(labels, minlength=7).tolist()))}")
    t0 = time.time()
    # every clip, clean or augmented, is encoded at the level the expert will bring each
    # utterance to: the median of the clean clips
    gate0 = VoiceGate(level_dbfs=training_level(clips, VoiceGate()))
    _log(f"level: every clip is read at {gate0.level_dbfs:.2f} dBFS, the median speech level "
         "of the clean clips")
    feats, ok = encode_clips(clips, cfg, gate0, out / FEATURES_FILE, threads=args.threads)
    feats, labels, speakers = feats[ok], labels[ok], speakers[ok]
    clips = [c for c, k in zip(clips, ok) if k]
    folds = speaker_folds(clips, cfg.folds) if cfg.folds else []
    if args.compare_inputs:
        return compare_inputs(clips, feats, labels, speakers, folds, cfg, out, gate0,
                              args.threads)
    if args.ablate:
        return ablate(clips, feats, labels, speakers, folds, cfg, out, gate0, args.threads)
    figures: dict = {}
    gate, temperature = gate0, 1.0
    if folds:
        _log(f"cross-validation by speaker, {len(folds)} folds:")
        oof = cross_validate(feats, labels, speakers, folds, cfg)
        temperature = fit_temperature(oof["logits"], labels)
        p = softmax_t(oof["logits"], temperature)
        ent = np.array([normalized_entropy(x) for x in p])
        gate = VoiceGate(**{**asdict(gate0),
                            "max_distance": float(np.quantile(oof["distance"],
                                                              cfg.gate_distance_quantile)),
                            "max_entropy": float(np.quantile(ent, cfg.gate_entropy_quantile))})
        figures = summarise(oof, labels, temperature, gate)
        figures["folds"] = folds
        _log(_table([("held-out speakers", figures)]))
        _log(f"temperature {temperature}; gate: unfamiliar past distance "
             f"{gate.max_distance:.1f}, undecided past entropy {gate.max_entropy:.3f}; on the "
             f"held-out speakers it gates {100 * figures['gated']['unfamiliar']:.1f} % "
             f"unfamiliar + {100 * figures['gated']['undecided']:.1f} % undecided; UAR on "
             f"what it keeps {figures.get('kept_scores', {}).get('uar')}")
    xs, ys = _flat(feats, np.arange(len(labels)), labels, copies=True)
    net = train_net(xs, ys, cfg, cfg.seed)
    check = feats[np.random.default_rng(cfg.seed).permutation(len(labels))[:64], 0]
    root = str(data_root())
    # the corpora as given, without this machine's folders: under the data root as
    # $ERC_ROS_DATA/..., elsewhere only the last part of the path
    data = [{"spec": s.replace(root, "$ERC_ROS_DATA", 1) if root in s else
             f"{s.partition(':')[0]}:<...>/{Path(s.rpartition(':')[2]).name}"} for s in specs]
    corpora = sorted({c.corpus for c in clips})
    prov = provenance(
        args, recipe={"name": args.recipe, **cfg.to_dict()}, seed=cfg.seed,
        data={"voices": data, "clips": len(clips), "speakers": sorted(set(speakers)),
              "corpora": corpora,
              "licence": [RAVDESS_LICENCE] if "ravdess" in corpora else []},
        dev_metrics={"split": f"cross-validation by speaker, {len(folds)} folds", **figures,
                     "selection": {"by": "none: the recipe fixes every setting",
                                   "candidates": 1}} if folds else {},
        train_minutes=round((time.time() - t0) / 60, 1))
    save_voice_model(net, out, model_id,
                     encoder={"kind": "whisper", "model": cfg.encoder,
                              "compute_type": cfg.compute_type},
                     calibration={"temperature": temperature,
                                  "fitted_on": "out-of-fold readings of held-out speakers"},
                     gate=asdict(gate), provenance=prov)
    np.save(out / CHECK_FILE, check)
    add_artefact(out, CHECK_FILE, "check", rows=int(len(check)))
    if folds:
        plot_confusion(figures["confusion"], list(VOICE_CLASSES), out / "dev_confusion.png",
                       f"{model_id}: held-out speakers ({len(folds)} folds) UAR "
                       f"{figures['uar']}")
        add_artefact(out, "dev_confusion.png", "report")
    _log(f"saved {out} ({model_id}) in {(time.time() - t0) / 60:.1f} min"
         + (f"; {FEATURES_FILE} there is the encoded training set (a resumable cache, not "
            "part of the model: delete it before shipping)" if (out / FEATURES_FILE).exists()
            else ""))
    return 0


def ablate(clips: list[VoiceClip], feats: np.ndarray, labels: np.ndarray,
           speakers: np.ndarray, folds, cfg: VoiceStageConfig, out: Path, gate: VoiceGate,
           threads: int) -> int:
    """Each augmentation's effect, by speaker-held-out dev: cross-validation trained on the
    clean clips alone, then on the clean clips and one copy through each augmentation
    alone, then through all of them; each read on the held-out speakers' clean clips and
    on a copy of them through every augmentation at once (other draws than any training
    copy's). The encoded copies are cached in the output folder."""
    if not folds:
        raise SystemExit("error: --ablate needs --folds >= 2")
    robot_cfg = VoiceStageConfig(**{**asdict(cfg), "augment": AUGMENTATIONS, "copies": 1,
                                    "augment_p": 1.0, "seed": cfg.seed + 1000})
    _log("held-out copies through every augmentation:")
    robot, _ = encode_clips(clips, robot_cfg, gate, out / "ablate-robot.npz", threads)
    rows = []
    for name in ("none", *AUGMENTATIONS, "all"):
        if name == "none":
            f = feats[:, :1]
        else:
            c = VoiceStageConfig(**{**asdict(cfg), "copies": 1, "augment":
                                    AUGMENTATIONS if name == "all" else (name,)})
            _log(f"training copies through {name}:")
            f, _ = encode_clips(clips, c, gate, out / f"ablate-{name}.npz", threads)
        clean = np.zeros((len(labels), len(VOICE_CLASSES)))
        noisy = np.zeros_like(clean)
        for k, held in enumerate(folds):
            test = np.isin(speakers, held)
            xs, ys = _flat(f, np.flatnonzero(~test), labels, copies=True)
            net = train_net(xs, ys, cfg, cfg.seed + k)
            clean[test], _ = read(net, f[test, 0])
            noisy[test], _ = read(net, robot[test, 1])
        rows += [(f"{name} / clean dev", scores(labels, clean.argmax(1), VOICE_CLASSES)),
                 (f"{name} / robot dev", scores(labels, noisy.argmax(1), VOICE_CLASSES))]
        _log(_table(rows[-2:]))
    _log("\n" + _table(rows))
    (out / "ablation.json").write_text(json.dumps({n: {m: s[m] for m in ("uar", "weighted_f1",
                                                                       "per_class_f1")}
                                                  for n, s in rows}, indent=1) + "\n")
    return 0


def _other_input(clips: list[VoiceClip], name: str, gate: VoiceGate, cache: Path,
                 threads: int) -> np.ndarray:
    """Clean features of another candidate input (cached in ``cache``): a Whisper model's
    pooled states, the 88 eGeMAPS functionals (normalised) of the speech, or resemblyzer's
    d-vector of the speech."""
    if cache.is_file():
        return np.load(cache)
    if name.startswith("whisper-"):
        enc = WhisperStates(name.removeprefix("whisper-"), "int8", threads)
    elif name == "dvector":
        from resemblyzer import VoiceEncoder
        dvec = VoiceEncoder("cpu", verbose=False)
    rows = []
    for c in tqdm(clips, desc=name, unit="clip", file=sys.stderr):
        x, _ = read_audio_16k(c.path)
        a, b, _ = speech_span(x, gate)
        if name.startswith("whisper-"):
            rows.append(pooled(enc.states(voice_segment(x, gate))))
        elif name == "egemaps":
            rows.append(egemaps_features(x[a:b]))
        else:
            rows.append(dvec.embed_utterance(x[a:b]).astype(np.float32))
    f = np.stack(rows).astype(np.float32)
    np.save(cache, f)
    return f


def compare_inputs(clips, feats, labels, speakers, folds, cfg: VoiceStageConfig, out: Path,
                   gate: VoiceGate, threads: int) -> int:
    """The recipe's network, cross-validated by speaker on each candidate input, trained and
    read on clean clips (no augmentation: the inputs are compared, not the robot's
    conditions)."""
    if not folds:
        raise SystemExit("error: --compare-inputs needs --folds >= 2")
    got = {f"whisper-{cfg.encoder}": feats[:, :1]}  # the recipe's input: its clean copies
    for name in ("whisper-base", "whisper-tiny.en", "egemaps", "dvector"):
        if name not in got:
            got[name] = _other_input(clips, name, gate, out / f"input-{name}.npy",
                                     threads)[:, None]
    got["whisper-base+egemaps"] = np.concatenate([got["whisper-base"], got["egemaps"]], axis=2)
    rows = []
    for name in INPUTS:
        f = got[name]
        logits = np.zeros((len(labels), len(VOICE_CLASSES)))
        for k, held in enumerate(folds):
            test = np.isin(speakers, held)
            xs, ys = _flat(f, np.flatnonzero(~test), labels, copies=False)
            net = train_net(xs, ys, cfg, cfg.seed + k)
            logits[test], _ = read(net, f[test, 0])
        rows.append((name, scores(labels, logits.argmax(1), VOICE_CLASSES)))
        _log(_table(rows[-1:]))
    _log("\nclean clips, cross-validation by speaker:\n" + _table(rows))
    (out / "compare_inputs.json").write_text(json.dumps(
        {n: {m: s[m] for m in ("uar", "weighted_f1", "per_class_f1")} for n, s in rows},
        indent=1) + "\n")
    return 0
