"""`python -m erc_ros bench-voice --json OUT`: what the voice expert says where it should say
little, and what it costs.

- **Synthetic voices** carry no emotion: Kokoro's spoken MELD dev (``data/spoken/kokoro``,
  in the checkout) and espeak-ng speaking MELD dev lines in the ten voices of
  :data:`erc_ros.synth.speech.VOICES` (``--espeak N`` lines). For each: the class histogram
  of the ``ok`` readings, the share ``uncertain`` by reason, and the mean top probability.
- **Real voices the model never heard, clean and in a room** (``--ravdess DIR --speakers
  ...``: actors left out of the model's training): UAR and weighted F1 and the share
  uncertain, clean and through :mod:`erc_ros.synth.room` (image-source reverberation at
  1-2 m and pink noise; another simulator than training's augmentation), and at other
  levels (``--gains 0.25,4,8``: the clean clips times each gain, a gain that would clip
  stopping at full scale), as a person farther or nearer, or another microphone gain, arrives.
- **Cost per utterance** (``--cost N`` Kokoro clips, interleaved): the expert's encoder and
  network, and the text pipeline (the default model, ONNX Runtime INT8, a MELD dev
  utterance with its context cached, as ``bench`` times it) in the same run, with the CPU
  and its FP32 GEMM figure.
"""
from __future__ import annotations

import csv
import json
import time
from collections import Counter
from pathlib import Path

import numpy as np
from tqdm import tqdm

from erc_ros.bench.model import _Probe, pick_probes
from erc_ros.core.audio_files import read_audio_16k
from erc_ros.core.types import FACE_CLASSES, VOICE_OK
from erc_ros.datasets.voices import read_ravdess
from erc_ros.paths import CHECKOUT, data_root
from erc_ros.runtime import machine
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.samples import load_meld_dialogues
from erc_ros.runtime.voice_expert import VoiceExpert
from erc_ros.synth.room import Room, render
from erc_ros.synth.speech import VOICES, espeak
from erc_ros.training.metrics import scores

KOKORO_DIR = CHECKOUT / "data" / "spoken" / "kokoro"


def readings_summary(readings) -> dict:
    """Class histogram of the ok readings, share uncertain by reason, mean top probability."""
    n = len(readings)
    ok = [r for r in readings if r.status == VOICE_OK]
    why = Counter(r.reason for r in readings if r.status != VOICE_OK)
    read = [r for r in readings if r.probabilities is not None]
    return {"n": n, "ok": len(ok),
            "histogram": dict(Counter(r.label for r in ok).most_common()),
            "uncertain_share": round(1 - len(ok) / max(n, 1), 4),
            "uncertain_by_reason": {k: round(v / max(n, 1), 4) for k, v in why.most_common()},
            "mean_top_probability": round(float(np.mean([r.confidence for r in read])), 4)
            if read else None}


def kokoro_clips(limit: int = 0) -> list[Path]:
    man = json.loads((KOKORO_DIR / "manifest.json").read_text())["clips"]
    files = [KOKORO_DIR / v["file"] for _, v in sorted(man.items())]
    return files[:limit] if limit else files


def espeak_lines(n: int) -> list[np.ndarray]:
    path = data_root() / "meld" / "dev_sent_emo.csv"
    with path.open(encoding="utf-8") as fh:
        texts = [r["Utterance"] for r in csv.DictReader(fh) if len(r["Utterance"].split()) >= 4]
    step = max(1, len(texts) // max(n, 1))
    out = []
    for i, t in enumerate(texts[::step][:n]):
        v, p, s = VOICES[i % len(VOICES)]
        out.append(espeak(t, v, p, s))
    return out


def at_gain(x: np.ndarray, gain: float) -> np.ndarray:
    """``x`` times ``gain``, its peak held below full scale (a gain that would clip stops
    there)."""
    y = x * np.float32(gain)
    peak = float(np.abs(y).max()) if y.size else 0.0
    return y * np.float32(0.99 / peak) if peak > 0.99 else y


def held_out(expert: VoiceExpert, ravdess: Path, speakers: list[str], seed: int,
             gains: tuple[float, ...] = ()) -> dict:
    """The expert on actors it never heard, clean, through a room, and at each of
    ``gains`` (keys ``gain 0.25``, ...)."""
    clips = [c for c in read_ravdess(ravdess) if c.speaker in speakers]
    rng = np.random.default_rng(seed)
    out = {}
    for cond in ("clean", "room", *(f"gain {g:g}" for g in gains)):
        rs, y = [], []
        for i, c in enumerate(tqdm(clips, desc=f"held-out {cond}", unit="clip")):
            x, _ = read_audio_16k(c.path)
            if cond == "room":
                room = Room(rt60=float(rng.uniform(0.3, 0.6)), snr_db=float(rng.uniform(10, 25)))
                x = render(room, [(0, x, c.speaker)], x.size, seed=seed + i)
            elif cond.startswith("gain "):
                x = at_gain(x, float(cond[5:]))
            rs.append(expert.predict(x))
            y.append(FACE_CLASSES.index(c.label))
        pred = [FACE_CLASSES.index(r.label) if r.probabilities is not None else -1 for r in rs]
        s = scores(y, pred, FACE_CLASSES)
        kept = [i for i, r in enumerate(rs) if r.status == VOICE_OK]
        k = scores([y[i] for i in kept], [pred[i] for i in kept], FACE_CLASSES) if kept else {}
        out[cond] = {"clips": len(clips), "uar": s["uar"], "weighted_f1": s["weighted_f1"],
                     "per_class_f1": s["per_class_f1"], **readings_summary(rs),
                     "kept_uar": k.get("uar"), "kept_weighted_f1": k.get("weighted_f1")}
    out["speakers"] = speakers
    return out


def cost(expert: VoiceExpert, n: int, threads: int) -> dict:
    """ms per utterance: the voice expert (encoder, network) and the text pipeline,
    interleaved on the same machine in the same run."""
    clips = [read_audio_16k(p)[0] for p in kokoro_clips()[:n]]
    pipe = EmotionPipeline.from_model_dir(default_model_dir(), backend="onnxruntime",
                                          precision="int8", threads=threads)
    probes = [_Probe(ctx, u) for _, ctx, u in pick_probes(pipe, load_meld_dialogues("dev"),
                                                          128, 16)]
    for p in probes:
        p.prime("text", pipe)
    enc, net, voice, text = [], [], [], []
    for i in tqdm(range(3 + len(clips)), desc="cost", unit="utt"):
        x = clips[i % len(clips)]
        t0 = time.perf_counter()
        r = expert.predict(x)
        t1 = time.perf_counter()
        probes[i % len(probes)].run("text", pipe)
        t2 = time.perf_counter()
        if i >= 3 and r.seconds:
            enc.append(1000 * r.seconds["encoder"])
            net.append(1000 * r.seconds["network"])
            voice.append(1000 * (t1 - t0))
            text.append(1000 * (t2 - t1))
    med = lambda a: round(float(np.median(a)), 2)  # noqa: E731
    p95 = lambda a: round(float(np.percentile(a, 95)), 2)  # noqa: E731
    secs = [c.size / 16000 for c in clips]
    return {"utterances": len(voice), "audio_seconds_median": round(float(np.median(secs)), 2),
            "voice_ms": {"median": med(voice), "p95": p95(voice)},
            "voice_encoder_ms": {"median": med(enc), "p95": p95(enc)},
            "voice_network_ms": {"median": med(net), "p95": p95(net)},
            "text_pipeline_ms": {"median": med(text), "p95": p95(text)},
            "ratio_voice_to_text": round(float(np.median(voice) / np.median(text)), 2),
            "ratio_network_only_to_text": round(float(np.median(net) / np.median(text)), 3),
            "threads": threads}


def add_arguments(p) -> None:
    p.add_argument("--model", default="", help="voice model directory (default: models/voice)")
    p.add_argument("--json", required=True, help="write the figures here")
    p.add_argument("--kokoro", type=int, default=0, help="Kokoro clips read (0: all 1,083)")
    p.add_argument("--espeak", type=int, default=200, help="espeak lines read (0: none)")
    p.add_argument("--ravdess", default="", help="RAVDESS folder, for --speakers")
    p.add_argument("--speakers", default="", help="actors the model never heard, e.g. "
                   "ravdess-16,ravdess-17,ravdess-18: read clean and in a room")
    p.add_argument("--gains", default="",
                   help="also read --speakers' clean clips at these gains, e.g. 0.25,4,8")
    p.add_argument("--cost", type=int, default=60, help="utterances timed (0: no timing)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)


def parse_gains(text: str) -> tuple[float, ...]:
    """``--gains``: comma-separated positive finite numbers."""
    out = []
    for g in (t.strip() for t in text.split(",") if t.strip()):
        try:
            v = float(g)
        except ValueError:
            v = -1.0
        if not (np.isfinite(v) and v > 0):
            raise SystemExit(f"error: --gains: {g!r} is not a positive number")
        out.append(v)
    return tuple(out)


def run(args) -> int:
    gains = parse_gains(args.gains)
    if gains and not args.speakers:
        raise SystemExit("error: --gains reads --speakers' clips: name them")
    expert = VoiceExpert(args.model or None, threads=args.threads)
    out: dict = {"model": expert.model_id, "backend": f"{expert.backend}/{expert.precision}",
                 "machine": machine.describe(2)}
    print(machine.line(out["machine"]))
    rs = [expert.predict(read_audio_16k(p)[0])
          for p in tqdm(kokoro_clips(args.kokoro), desc="kokoro", unit="clip")]
    out["kokoro"] = readings_summary(rs)
    if args.espeak:
        out["espeak"] = readings_summary([expert.predict(x) for x in
                                          tqdm(espeak_lines(args.espeak), desc="espeak")])
    if args.speakers:
        ravdess = Path(args.ravdess) if args.ravdess else data_root() / "ravdess_speech"
        out["held_out"] = held_out(expert, ravdess, [s.strip() for s in args.speakers.split(",")
                                                     if s.strip()], args.seed, gains)
    if args.cost:
        out["cost"] = cost(expert, args.cost, args.threads)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    for k in ("kokoro", "espeak"):
        if k in out:
            s = out[k]
            print(f"{k}: {s['n']} clips, uncertain {100 * s['uncertain_share']:.1f} % "
                  f"{s['uncertain_by_reason']}, ok labels {s['histogram']}, mean top "
                  f"probability {s['mean_top_probability']}")
    for cond, s in out.get("held_out", {}).items():
        if isinstance(s, dict):
            print(f"held-out actors {cond}: UAR {s['uar']} wF1 {s['weighted_f1']}, uncertain "
                  f"{100 * s['uncertain_share']:.1f} % {s['uncertain_by_reason']}, UAR on ok "
                  f"{s['kept_uar']}")
    if "cost" in out:
        c = out["cost"]
        print(f"cost per utterance (median of {c['utterances']}, {c['audio_seconds_median']} s "
              f"audio): voice {c['voice_ms']['median']} ms (encoder "
              f"{c['voice_encoder_ms']['median']}, network {c['voice_network_ms']['median']}); "
              f"text pipeline {c['text_pipeline_ms']['median']} ms; ratio "
              f"{c['ratio_voice_to_text']} (network only {c['ratio_network_only_to_text']})")
    return 0
