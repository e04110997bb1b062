"""`python -m erc_ros soak-core --minutes 60`: memory stays flat over a long stream.

Streams a synthetic conversation (the 3-speaker espeak script, looped with ever-increasing
stamps: a new conversation never starts, the buffers and histories fill and must stay
bounded) through one :class:`~erc_ros.core.perception.PerceptionCore` with timed ASR
results and 640x480 frames, as fast as the core allows. Every stream minute it prints the
resident memory (RSS); at the end it compares the largest RSS after minute
``--baseline-minute`` (default 5) with the RSS at that minute and exits 1 if it grew more
than ``--max-growth`` (default 10%). ``--plot`` writes RSS over stream time as a PNG.
"""
from __future__ import annotations

import gc
import json
import time
from pathlib import Path

import numpy as np
import psutil
from tqdm import tqdm

from erc_ros.assemble import torch_threads
from erc_ros.core.perception import PerceptionConfig, PerceptionCore
from erc_ros.core.types import AudioChunk, AudioFormat, Frame, TranscriptEvent
from erc_ros.synth import conversation as cg


def add_arguments(p) -> None:
    p.add_argument("--minutes", type=float, default=60.0, help="stream length in minutes")
    p.add_argument("--baseline-minute", type=float, default=5.0,
                   help="RSS growth is measured from this stream minute on")
    p.add_argument("--max-growth", type=float, default=0.10,
                   help="largest allowed relative RSS growth after the baseline")
    p.add_argument("--fps", type=float, default=15.0, help="camera frames per second")
    p.add_argument("--cache", help="cache folder for espeak output")
    p.add_argument("--json", help="write the RSS series and the verdict here")
    p.add_argument("--plot", help="write an RSS-over-time PNG here")


def process_settings(args) -> dict:
    """The perception core runs in this process: torch's pool is the speaker embedder's
    (:func:`erc_ros.assemble.torch_threads`)."""
    return {"torch_threads": torch_threads()}


def run(args) -> int:

    proc = psutil.Process()
    conv = cg.three_speaker(90, seed=1, cache=Path(args.cache) if args.cache else None)
    cfg = PerceptionConfig.from_dict({"conversation.new_conversation_gap_seconds": 1e9})
    core = PerceptionCore(cfg)
    fmt = AudioFormat(16000, 1, "S16LE")
    pcm = (np.clip(conv.audio, -1, 1) * 32767).astype("<i2")
    loop = conv.duration
    total = args.minutes * 60.0
    chunk = 1600
    series: list[tuple[float, float]] = []  # (stream minute, RSS MiB)
    next_mark, next_frame, ti, lap = 0.0, 0.0, 0, 0
    turns = sorted(conv.turns, key=lambda t: t.end)
    utts = 0
    t_start = time.time()
    bar = tqdm(total=total, unit="s", mininterval=5, desc="soak",
               bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s stream [{elapsed}<{remaining}]")
    t = 0.0
    while t < total:
        off = lap * loop
        for i in range(0, pcm.size, chunk):
            ts = off + i / 16000
            if ts >= total:
                break
            core.push_audio(AudioChunk(ts, pcm[i:i + chunk].tobytes(), fmt))
            now = ts + chunk / 16000
            while next_frame <= now:
                core.push_frame(Frame(next_frame, conv.frame_at(next_frame - off)))
                next_frame += 1.0 / args.fps
            while ti < len(turns) and off + turns[ti].end + 0.3 <= now:
                tr = turns[ti]
                core.push_transcript(TranscriptEvent(off + tr.end + 0.3, tr.text, True,
                                                     off + tr.start, off + tr.end))
                ti += 1
            utts += len(core.poll(now))
            # n must never pass total: tqdm then drops the total and its format fails
            bar.update(max(0.0, min(pcm[i:i + chunk].size / 16000, total - bar.n)))
            if now >= next_mark:
                gc.collect()
                rss = proc.memory_info().rss / 2 ** 20
                series.append((now / 60, rss))
                tqdm.write(f"minute {now / 60:5.1f}: RSS {rss:7.1f} MiB, {utts} utterances, "
                           f"{core.stats()['queues']}")
                next_mark += 60.0
            t = now
        lap += 1
        ti = 0
    bar.close()
    utts += len(core.flush())
    gc.collect()
    series.append((t / 60, proc.memory_info().rss / 2 ** 20))
    base = [r for m, r in series if m >= args.baseline_minute]
    if not base:
        print(f"stream shorter than the baseline minute {args.baseline_minute}: no verdict")
        return 2
    growth = (max(base) - base[0]) / base[0]
    ok = growth <= args.max_growth
    st = core.stats()
    summary = {"minutes": args.minutes, "utterances": utts, "rss_mib": series,
               "baseline_minute": args.baseline_minute, "rss_at_baseline_mib": base[0],
               "rss_max_after_baseline_mib": max(base), "growth": round(growth, 4),
               "max_growth": args.max_growth, "ok": ok,
               "wall_seconds": round(time.time() - t_start, 1),
               "realtime_factor": st["realtime_factor"], "queues": st["queues"]}
    print(f"\n{args.minutes:g} stream minutes in {summary['wall_seconds']:.0f} s, {utts} "
          f"utterances; RSS at minute {args.baseline_minute:g}: {base[0]:.1f} MiB, max after: "
          f"{max(base):.1f} MiB, growth {100 * growth:+.1f}% (limit {100 * args.max_growth:.0f}%)"
          f" -> {'OK' if ok else 'FAIL'}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 3))
        ax.plot([m for m, _ in series], [r for _, r in series], marker="o")
        ax.axvline(args.baseline_minute, color="0.6", ls="--")
        ax.set_xlabel("stream minute")
        ax.set_ylabel("RSS (MiB)")
        ax.set_title(f"perception core soak: growth {100 * growth:+.1f}% after minute "
                     f"{args.baseline_minute:g}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=90)
        plt.close(fig)
    return 0 if ok else 1
