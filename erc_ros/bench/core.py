"""`python -m erc_ros bench-core`: diarization error rate and real-time factor of the core.

Streams generated conversations through :class:`~erc_ros.core.perception.PerceptionCore`
the way the utterance node does (16 kHz S16LE chunks of 100 ms, 640x480 frames at 15 fps,
ASR results 0.3 s after each turn ends, a poll per chunk) and scores the utterances
against the exact ground truth:

- ``der_synthetic``: a generated 3-speaker espeak conversation (>= 2 minutes), timed ASR
  segmentation (our ``Transcript``), DER without collar; ``der_synthetic_vad`` the same
  with voice activity alone (no ASR);
- ``der_real``: 2-speaker conversations of real recordings (Debian asterisk prompts,
  en/fr voices; one per ``--real-seeds`` seed, errors pooled; each in
  ``der_real_per_conversation``), same two variants;
- ``realtime_factor``: stream seconds / seconds spent inside the core's calls (buffering,
  resampling, VAD, speaker embeddings, clustering, frame buffering and faces) on the
  3-speaker run with video, and the per-stage breakdown (``stages``) from ``core.stats()``;
- ``boundary_error_ms``: |start|/|end| error of timed-ASR utterances vs ground truth;
- ``close_ms_p50/p95``: work left when an utterance closes (the live latency of the core).

Frame rendering and speech synthesis are not timed. A PNG timeline (reference vs
hypothesis speakers) is written next to the JSON.
"""
from __future__ import annotations

import json
import os
import time
from math import gcd
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly
from tqdm import tqdm

from erc_ros.assemble import torch_threads
from erc_ros.core.config import PerceptionConfig
from erc_ros.core.der import der
from erc_ros.core.perception import PerceptionCore
from erc_ros.core.types import AudioChunk, AudioFormat, Frame, TranscriptEvent
from erc_ros.synth import conversation as cg


def stream(core, conv, chunk_s: float = 0.1, fps: float = 15.0, asr: str = "timed",
           asr_delay: float = 0.3, t0: float = 0.0, video: bool = True,
           sample_rate: int = 16000, progress=None) -> tuple[list, float]:
    """Feed ``conv`` (a GeneratedConversation) to ``core``; returns (utterances, seconds
    spent inside core calls). ``asr``: "timed", "untimed" or "none"."""
    audio = conv.audio
    if sample_rate != conv.sample_rate:

        g = gcd(sample_rate, conv.sample_rate)
        audio = resample_poly(audio, sample_rate // g, conv.sample_rate // g).astype(np.float32)
    fmt = AudioFormat(sample_rate=sample_rate, channels=1, sample_format="S16LE")
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2")
    n = int(round(chunk_s * sample_rate))
    turns = sorted(conv.turns, key=lambda t: t.end)
    ti, next_frame = 0, 0.0
    spent = [0.0, 0.0]  # wall, CPU seconds inside core calls

    def call(fn, *args):
        t, c = time.perf_counter(), time.process_time()
        r = fn(*args)
        spent[0] += time.perf_counter() - t
        spent[1] += time.process_time() - c
        return r

    out = []
    for i in range(0, pcm.size, n):
        ts = i / sample_rate
        call(core.push_audio, AudioChunk(t0 + ts, pcm[i:i + n].tobytes(), fmt))
        now = ts + min(n, pcm.size - i) / sample_rate
        while video and next_frame <= now:
            img = conv.frame_at(next_frame)  # rendering is not timed
            call(core.push_frame, Frame(t0 + next_frame, img))
            next_frame += 1.0 / fps
        while asr != "none" and ti < len(turns) and turns[ti].end + asr_delay <= now:
            tr = turns[ti]
            ev = TranscriptEvent(t0 + tr.end + asr_delay, tr.text, True,
                                 t0 + tr.start if asr == "timed" else None,
                                 t0 + tr.end if asr == "timed" else None, 0.9)
            call(core.push_transcript, ev)
            ti += 1
        out += call(core.poll, t0 + now)
        if progress is not None:  # never past total (tqdm would drop it, breaking its format)
            progress.update(max(0.0, min(min(n, pcm.size - i) / sample_rate,
                                         progress.total - progress.n)))
    out += call(core.flush)
    inside = spent[0]
    stream.last_cpu = spent[1]
    return out, inside


def score(conv, utts, t0: float = 0.0, collar: float = 0.0) -> dict:
    ref = [(t.start, t.end, t.speaker) for t in conv.turns]
    hyp = [(u.start - t0, u.end - t0, u.speaker_id or "unknown") for u in utts]
    d = der(ref, hyp, collar=collar)
    d.pop("mapping")
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


def boundary_errors(conv, utts, t0: float = 0.0) -> dict:
    """Per ground-truth turn, the utterance overlapping it most: |start|, |end| errors."""
    errs, missing, dup = [], 0, 0
    for tr in conv.turns:
        ov = [(min(u.end - t0, tr.end) - max(u.start - t0, tr.start), u) for u in utts]
        ov = [(o, u) for o, u in ov if o > 0]
        if not ov:
            missing += 1
            continue
        dup += sum(1 for o, u in ov if o > 0.5 * (u.end - u.start)) > 1
        u = max(ov, key=lambda x: x[0])[1]
        errs.append((abs(u.start - t0 - tr.start), abs(u.end - t0 - tr.end)))
    e = np.asarray(errs) * 1000 if errs else np.zeros((0, 2))
    return {"turns": len(conv.turns), "utterances": len(utts), "missing": missing,
            "duplicated": int(dup),
            "start_ms_median": float(np.median(e[:, 0])) if e.size else None,
            "start_ms_max": float(e[:, 0].max()) if e.size else None,
            "end_ms_median": float(np.median(e[:, 1])) if e.size else None,
            "end_ms_max": float(e[:, 1].max()) if e.size else None}


def _plot(path: Path, conv, utts, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    spk = conv.speakers
    hyp = sorted({u.speaker_id for u in utts})
    fig, ax = plt.subplots(figsize=(14, 1.2 + 0.35 * (len(spk) + len(hyp))))
    for i, s in enumerate(spk):
        ax.broken_barh([(t.start, t.end - t.start) for t in conv.turns if t.speaker == s],
                       (i - 0.4, 0.8), color=f"C{i}")
    for j, h in enumerate(hyp):
        ax.broken_barh([(u.start, u.end - u.start) for u in utts if u.speaker_id == h],
                       (len(spk) + j - 0.4, 0.8), color="0.4")
    ax.set_yticks(range(len(spk) + len(hyp)), [f"ref {s}" for s in spk] + [f"hyp {h}" for h in hyp])
    ax.set_xlabel("time (s)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def add_arguments(p) -> None:
    p.add_argument("--json", help="write the results here (and a PNG timeline beside it)")
    p.add_argument("--minutes", type=float, default=2.0,
                   help="length of the synthetic 3-speaker conversation")
    p.add_argument("--real-turns", type=int, default=30,
                   help="turns of each real 2-speaker conversation")
    p.add_argument("--real-seeds", default="0,1,2",
                   help="one real conversation per seed (different prompts and order); "
                        "der_real pools their errors")
    p.add_argument("--no-real", action="store_true",
                   help="skip the real recordings (they need apt-get download once)")
    p.add_argument("--cache", help="cache folder for espeak output and the Debian sounds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="perception parameter override, e.g. diarization.threshold=0.8")


def _config(overrides: list[str]):

    d = {}
    for kv in overrides:
        k, _, v = kv.partition("=")
        d[k] = json.loads(v) if v[:1] in "0123456789-tf[{\"" and v not in ("", "-") else v
    return PerceptionConfig.from_dict(d)


def process_settings(args) -> dict:
    """The perception core runs in this process: torch's pool is the speaker embedder's
    (:func:`erc_ros.assemble.torch_threads`)."""
    return {"torch_threads": torch_threads()}


def run(args) -> int:

    cache = Path(args.cache) if args.cache else None
    cfg = _config(args.set)

    res: dict = {"config_overrides": args.set, "cpus": os.cpu_count()}
    print("generating the 3-speaker espeak conversation ...", flush=True)
    syn = cg.three_speaker(args.minutes * 60, seed=args.seed,
                           cache=cache / "espeak" if cache else None)
    res["synthetic_seconds"] = round(syn.duration, 2)
    runs = [("synthetic", syn, "timed", True), ("synthetic_vad", syn, "none", False)]
    real = []
    if not args.no_real:
        print("building the real 2-speaker conversations (Debian asterisk prompts) ...",
              flush=True)
        for seed in [int(x) for x in args.real_seeds.split(",") if x.strip()]:
            conv = cg.real_two_speaker(args.real_turns, seed=seed,
                                       cache=cache / "asterisk" if cache else None)
            real.append(conv)
            runs += [(f"real_s{seed}", conv, "timed", False),
                     (f"real_vad_s{seed}", conv, "none", False)]
        res["real_seconds"] = round(sum(c.duration for c in real), 2)
    keep = {}
    for name, conv, asr, video in runs:
        core = PerceptionCore(cfg)
        with tqdm(total=conv.duration, desc=f"{name:14s}", unit="s", mininterval=2,
                  bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}]") as bar:
            utts, inside = stream(core, conv, asr=asr, video=video, progress=bar)
        s = score(conv, utts)
        res[f"der_{name}"] = s["der"]
        res[f"der_{name}_detail"] = s
        res[f"boundaries_{name}"] = boundary_errors(conv, utts)
        st = core.stats()
        res[f"speakers_{name}"] = {"reference": len(conv.speakers), "found": st["speakers"]}
        if name == "synthetic":
            res["realtime_factor"] = round(conv.duration / inside, 2)
            res["realtime_factor_cpu"] = round(conv.duration / stream.last_cpu, 2)
            res["core_seconds"] = round(inside, 3)
            res["core_cpu_seconds"] = round(stream.last_cpu, 3)
            res["stages"] = st["stages"]
            res["close_ms_p50"] = st["close_ms_p50"]
            res["close_ms_p95"] = st["close_ms_p95"]
            res["utterances_with_faces"] = sum(u.has_video for u in utts)
            res["utterances"] = len(utts)
            res["load_average"] = os.getloadavg()[0]  # shared machine: context for the RTF
        keep[name] = (conv, utts)
    for kind in ("real", "real_vad"):  # pooled over the real conversations
        parts = [res[k] for k in res if k.startswith(f"der_{kind}_s") and k.endswith("_detail")]
        if parts:
            err = sum(p["missed"] + p["false_alarm"] + p["confusion"] for p in parts)
            res[f"der_{kind}"] = round(err / sum(p["total"] for p in parts), 4)
            res[f"der_{kind}_per_conversation"] = [p["der"] for p in parts]
    print()
    print(f"DER synthetic 3-speaker ({res['synthetic_seconds']:.0f} s, timed ASR): "
          f"{100 * res['der_synthetic']:.1f}%   voice activity only: "
          f"{100 * res['der_synthetic_vad']:.1f}%")
    if real:
        print(f"DER real 2-speaker ({len(real)} conversations, {res['real_seconds']:.0f} s, timed "
              f"ASR): {100 * res['der_real']:.1f}% (each: "
              f"{', '.join(f'{100 * d:.1f}%' for d in res['der_real_per_conversation'])})   "
              f"voice activity only: {100 * res['der_real_vad']:.1f}%")
    b = res["boundaries_synthetic"]
    print(f"timed-ASR boundaries: start err median {b['start_ms_median']:.0f} ms max "
          f"{b['start_ms_max']:.0f} ms, end err median {b['end_ms_median']:.0f} ms max "
          f"{b['end_ms_max']:.0f} ms; {b['missing']} missing, {b['duplicated']} duplicated")
    print(f"real-time factor (audio + 640x480 video at 15 fps): {res['realtime_factor']:.1f}x "
          f"wall ({res['core_seconds']:.1f} s inside the core for {res['synthetic_seconds']:.0f} s"
          f" of stream), {res['realtime_factor_cpu']:.1f}x by CPU time; load average "
          f"{res['load_average']:.1f} on {res['cpus']} CPUs")
    print(f"close-path latency: p50 {res['close_ms_p50']:.1f} ms, p95 {res['close_ms_p95']:.1f} ms")
    print("per-stage ms per second of audio:")
    for k, v in sorted(res["stages"].items(), key=lambda kv: -kv[1]["total_s"]):
        if k in ("poll", "load_embedder"):
            continue
        print(f"  {k:14s} {v['ms_per_audio_s']:8.2f}   ({v['calls']} calls, "
              f"{v['ms_per_call']:.2f} ms each)")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        conv, utts = keep["synthetic"]
        _plot(out.with_suffix(".png"), conv, utts,
              f"3-speaker espeak, timed ASR: DER {100 * res['der_synthetic']:.1f}%")
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
