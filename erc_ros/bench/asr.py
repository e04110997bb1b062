"""`python -m erc_ros bench-asr`: word error rate, speed and latency of the embedded ASR.

Real recorded English speech with its text: Debian's ``asterisk-core-sounds-en-wav`` (one
female speaker, 8 kHz, up-sampled to 16 kHz with the project's reader) and the transcripts
of ``asterisk-core-sounds-en`` (``core-sounds-en.txt.gz``), both fetched once with
``apt-get download`` into the cache. For each model (``--models``, default ``tiny.en,base``):

- ``wer``: corpus-level word error rate (substitutions + deletions + insertions over all
  reference words, jiwer) on every prompt that has a WAV and a transcript, except those
  :func:`exclusion` rules out: transcripts with digits, symbols, bracketed notes or number
  words (Whisper writes "1" or "one", "A.M." or "a.m." at will: those score the writing
  convention, not the recognition), and the ``letters/`` prompts (single letters and symbol
  names: "a", "left brace"). Both sides are normalised by :func:`normalize`;
- ``rtf``: audio seconds / compute seconds over those prompts (each decoded alone; the
  encoder always runs on a 30 s window, so short prompts cost about as much as 5 s ones);
- ``latency_p50_ms`` / ``latency_p95_ms``: from the end of speech to the transcript for
  ~5 s utterances (prompts concatenated with 0.2-0.4 s pauses to 4.5-5.5 s, at least 30),
  each submitted to an :class:`~erc_ros.core.asr.AsrWorker` when its speech ends on a real-
  time timeline (1 s between utterances), time from submit to result. The perception core's
  VAD hang-over (``vad.min_silence_seconds``) comes before the submit and is not included;
- ``bad_input``: a few inputs that must not break it (empty, 50 ms, digital silence, white
  noise, a tone, clipped speech, NaN samples): text, compute time, error.

Writes ``--json OUT`` and ``OUT.png`` (latency distribution per model, compute time per
prompt vs its length).
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import time
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from erc_ros.core.asr import SAMPLE_RATE, AsrWorker, WhisperRecognizer
from erc_ros.core.audio_buffer import read_wav_16k
from erc_ros.core.config import AsrConfig
from erc_ros.evaluation.wer import exclusion, word_errors
from erc_ros.synth.conversation import fetch_asterisk, fetch_asterisk_text
from erc_ros.synth.speech import trim


def read_transcripts(path: str | Path) -> dict[str, str]:
    """``name: text`` lines of an asterisk ``core-sounds-<lang>.txt(.gz)``; ``;`` comments."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    out = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.startswith(";") or ":" not in line:
                continue
            name, _, text = line.partition(":")
            out[name.strip()] = text.strip()
    return out


def load_prompts(cache: Optional[Path] = None) -> tuple[list[tuple[str, Path, str]], dict]:
    """(kept prompts as (name, wav, reference), summary of the selection)."""

    wav_dir = fetch_asterisk(cache)["en"]
    refs = read_transcripts(fetch_asterisk_text("en", cache))
    wavs = {str(p.relative_to(wav_dir).with_suffix("")): p for p in wav_dir.rglob("*.wav")}
    both = sorted(set(refs) & set(wavs))
    kept, reasons = [], {}
    for name in both:
        why = exclusion(name, refs[name])
        if why:
            reasons[why] = reasons.get(why, 0) + 1
        else:
            kept.append((name, wavs[name], refs[name]))
    summary = {"transcripts": len(refs), "wavs": len(wavs), "with_text": len(both),
               "excluded": len(both) - len(kept), "excluded_by_rule": reasons,
               "kept": len(kept)}
    return kept, summary


def build_utterances(clips: list[tuple[str, np.ndarray]], n: int, seed: int = 0,
                     lo: float = 4.5, hi: float = 5.5) -> list[tuple[np.ndarray, str]]:
    """``n`` utterances of ``lo``..``hi`` seconds as (16 kHz audio, text): ``clips`` (text,
    trimmed 16 kHz audio) joined with 0.2-0.4 s pauses, reused in new combinations when
    they run out."""
    rng = np.random.default_rng(seed)
    sr = 16000
    clips = [(t, x) for t, x in clips if 0 < x.size / sr <= hi]
    out = []
    order = list(rng.permutation(len(clips)))
    tries = 0
    while len(out) < n and clips and tries < 50 * n:
        parts, texts, dur = [], [], 0.0
        while dur < lo and tries < 50 * n:
            tries += 1
            if not order:
                order = list(rng.permutation(len(clips)))
            text, x = clips[order.pop()]
            pause = np.zeros(int(rng.uniform(0.2, 0.4) * sr), np.float32) if parts else \
                np.zeros(0, np.float32)
            if dur + (pause.size + x.size) / sr > hi:
                continue
            parts += [pause, x]
            texts.append(text)
            dur += (pause.size + x.size) / sr
        if lo <= dur <= hi:
            out.append((np.concatenate(parts), " ".join(texts)))
    return out


def latency_run(recognizer, utterances, pace: bool = True, gap: float = 1.0,
                progress=None) -> tuple[list[float], list[str]]:
    """Submit each utterance to an AsrWorker when its speech ends (on a wall-clock timeline
    with ``gap`` s between utterances; ``pace=False``: as soon as the worker is idle).
    Returns (submit -> result seconds, texts)."""

    worker = AsrWorker(recognizer, max_queue=len(utterances) + 1)
    t0, t = time.monotonic(), 0.0
    for i, (x, _) in enumerate(utterances):
        t += x.size / SAMPLE_RATE
        if pace:
            time.sleep(max(0.0, t0 + t - time.monotonic()))
        else:
            worker.wait_idle()
        worker.submit(i, x, t, t + x.size / SAMPLE_RATE)
        t += gap
        if progress is not None:
            progress.update(1)
    worker.wait_idle()
    done = sorted(worker.results(), key=lambda r: r.segment_id)
    worker.close()
    return [r.latency for r in done], [r.result.text for r in done]


def bad_inputs(recognizer, speech: np.ndarray) -> list[dict]:
    """Inputs that must give an empty or short text, or a clear error, quickly."""
    sr = 16000
    rng = np.random.default_rng(0)
    cases = {
        "empty": np.zeros(0, np.float32),
        "50 ms": 0.1 * rng.standard_normal(sr // 20).astype(np.float32),
        "2 s digital silence": np.zeros(2 * sr, np.float32),
        "2 s white noise (-20 dBFS)": (0.1 * rng.standard_normal(2 * sr)).astype(np.float32),
        "2 s 440 Hz tone": (0.3 * np.sin(2 * np.pi * 440 * np.arange(2 * sr) / sr)).astype(
            np.float32),
        "speech clipped at 5 % of its peak": np.clip(
            speech, -0.05 * np.abs(speech).max(), 0.05 * np.abs(speech).max()) * 10,
        "NaN samples": np.full(sr, np.nan, np.float32),
    }
    out = []
    for name, x in cases.items():
        t = time.perf_counter()
        try:
            r = recognizer.transcribe(x)
            out.append({"input": name, "text": r.text, "error": "",
                        "seconds": round(time.perf_counter() - t, 3)})
        except Exception as e:
            out.append({"input": name, "text": "", "error": f"{type(e).__name__}: {e}",
                        "seconds": round(time.perf_counter() - t, 3)})
    return out


def _plot(path: Path, res: dict, lat: dict[str, list[float]],
          per_prompt: dict[str, list[tuple[float, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.2))
    models = list(lat)
    data = [np.asarray(lat[m]) * 1e3 for m in models]
    a.boxplot(data, whis=(5, 95), showfliers=True)
    a.set_xticks(range(1, len(models) + 1), models)
    for i, (m, d) in enumerate(zip(models, data), 1):
        a.scatter(np.full(d.size, i) + np.random.default_rng(i).uniform(-0.12, 0.12, d.size),
                  d, s=9, alpha=0.5, color=f"C{i}")
        r = res["models"][m]
        a.annotate(f"p50 {r['latency_p50_ms']:.0f}\np95 {r['latency_p95_ms']:.0f}",
                   (i + 0.2, float(np.percentile(d, 95))), fontsize=8)
    a.axhline(1500, color="r", ls="--", lw=1, label="1.5 s")
    a.set_ylabel("end of speech -> transcript (ms)")
    a.set_title("~5 s utterances (whiskers p5-p95)")
    a.legend(loc="upper left", fontsize=8)
    for i, m in enumerate(per_prompt, 1):
        pts = np.asarray(per_prompt[m])
        if pts.size:
            b.scatter(pts[:, 0], pts[:, 1], s=8, alpha=0.5, color=f"C{i}",
                      label=f"{m}: WER {100 * res['models'][m]['wer']:.1f} %, "
                            f"{res['models'][m]['rtf']:.1f}x real time")
    b.set_xscale("log")
    b.set_xlabel("prompt length (s)")
    b.set_ylabel("compute (s)")
    b.set_title("Asterisk prompts: compute per prompt")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def config_overrides(pairs: list[str]) -> dict:
    """``KEY=VALUE`` strings -> AsrConfig fields, each value coerced to its field's type."""

    fields = {f.name: f for f in dataclasses.fields(AsrConfig)}
    out = {}
    for kv in pairs:
        k, _, v = kv.partition("=")
        if k not in fields:
            raise SystemExit(f"--set {kv}: unknown field; one of {', '.join(fields)}")
        kind = type(fields[k].default)
        if kind is bool:
            if v.lower() not in ("true", "false", "1", "0"):
                raise SystemExit(f"--set {kv}: expected true or false")
            out[k] = v.lower() in ("true", "1")
        else:
            out[k] = kind(v)
    return out


def add_arguments(p) -> None:
    p.add_argument("--models", default="tiny.en,base",
                   help="comma-separated: tiny.en, base, or model directories")
    p.add_argument("--language", default="en")
    p.add_argument("--beam-size", type=int, default=1)
    p.add_argument("--compute-type", default="int8")
    p.add_argument("--threads", type=int, default=2, help="CTranslate2 threads")
    p.add_argument("--limit", type=int, help="quick run: at most N prompts (spread over the "
                   "set) and N latency utterances")
    p.add_argument("--utterances", type=int, default=30,
                   help="~5 s utterances for the latency (at least 30 for the figures)")
    p.add_argument("--no-pace", action="store_true",
                   help="latency: submit each utterance as soon as the worker is idle "
                        "instead of when its speech ends in real time (faster; same "
                        "figure when nothing else loads the machine)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="another AsrConfig field, e.g. temperature_fallback=false")
    p.add_argument("--cache", help="cache folder of the Debian packages")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the results here (and a PNG beside it)")


def process_settings(args) -> dict:
    """No torch here: CTranslate2 has its own per-model thread count (--threads)."""
    return {"torch_threads": None}


def run(args) -> int:

    cache = Path(args.cache) if args.cache else None
    print("fetching the Asterisk English prompts and their transcripts ...", flush=True)
    prompts, sel = load_prompts(cache)
    print(f"{sel['with_text']} prompts with a WAV and a transcript ({sel['transcripts']} "
          f"transcripts, {sel['wavs']} WAVs); {sel['excluded']} excluded "
          f"({', '.join(f'{k} {v}' for k, v in sorted(sel['excluded_by_rule'].items()))}); "
          f"{sel['kept']} remain", flush=True)
    if args.limit:
        idx = np.linspace(0, len(prompts) - 1, min(args.limit, len(prompts))).round()
        prompts = [prompts[int(i)] for i in sorted(set(idx))]
    audio = {name: read_wav_16k(path) for name, path, _ in prompts}
    n_utt = min(args.utterances, args.limit) if args.limit else args.utterances
    clips = [(ref, trim(audio[name], rel=0.05)) for name, _, ref in prompts]
    utterances = build_utterances(clips, n_utt, seed=args.seed)
    utt_s = np.array([x.size / 16000 for x, _ in utterances])
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    res: dict = {
        "default_model": AsrConfig().model, "excluded": sel["excluded"],
        "prompts_selection": sel, "prompts_used": len(prompts),
        "settings": {"language": args.language, "beam_size": args.beam_size,
                     "compute_type": args.compute_type, "threads": args.threads,
                     "paced": not args.no_pace, "limit": args.limit, "set": args.set},
        "cpus": os.cpu_count(), "models": {}}
    lat, per_prompt = {}, {}
    for m in models:
        cfg = AsrConfig(model=m, language=args.language, beam_size=args.beam_size,
                        compute_type=args.compute_type, threads=args.threads,
                        **config_overrides(args.set))
        t = time.perf_counter()
        rec = WhisperRecognizer(cfg).load()
        load_s = time.perf_counter() - t
        hyps, pts, worst = [], [], []
        audio_s = compute_s = 0.0
        for name, _, ref in tqdm(prompts, desc=f"{m:8s} WER", unit="prompt", mininterval=2):
            r = rec.transcribe(audio[name])
            hyps.append(r.text)
            pts.append((r.audio_seconds, r.compute_seconds))
            audio_s += r.audio_seconds
            compute_s += r.compute_seconds
            e = word_errors([ref], [r.text])
            if e["wer"] > 0:
                worst.append({"prompt": name, "reference": ref, "hypothesis": r.text,
                              "edits": e["substitutions"] + e["deletions"] + e["insertions"]})
        w = word_errors([ref for _, _, ref in prompts], hyps)
        refits = rec.refits  # prompts whose short window failed (window fit)
        with tqdm(total=len(utterances), desc=f"{m:8s} latency", unit="utt",
                  mininterval=2) as bar:
            lats, texts = latency_run(rec, utterances, pace=not args.no_pace, progress=bar)
        uw = word_errors([t for _, t in utterances], texts)
        speech = utterances[0][0] if utterances else audio[prompts[0][0]]
        lat[m], per_prompt[m] = lats, pts
        res["models"][m] = {
            "model_path": str(rec.model_path), "load_seconds": round(load_s, 2),
            "prompts": len(prompts), "words": w["words"], "wer": round(w["wer"], 4),
            "wer_detail": w, "rtf": round(audio_s / compute_s, 2),
            "audio_seconds": round(audio_s, 1), "compute_seconds": round(compute_s, 1),
            "latency_p50_ms": round(float(np.percentile(lats, 50)) * 1e3, 1) if lats else None,
            "latency_p95_ms": round(float(np.percentile(lats, 95)) * 1e3, 1) if lats else None,
            "latency_max_ms": round(max(lats) * 1e3, 1) if lats else None,
            "latency_utterance_seconds": round(float(utt_s.mean()), 2) if lats else None,
            "latency_utterance_range_s": [round(float(utt_s.min()), 2),
                                          round(float(utt_s.max()), 2)] if lats else None,
            "latency_utterances": len(lats), "latency_wer": round(uw["wer"], 4),
            "window": cfg.window, "refits": refits,
            "errors": sorted(worst, key=lambda d: -d["edits"]),  # every prompt with one
            "bad_input": bad_inputs(rec, speech)}
        rec.close()
    res["load_average"] = os.getloadavg()[0]
    print()
    print(f"{'model':10s} {'prompts':>7s} {'words':>6s} {'WER':>7s} {'RTF':>6s} "
          f"{'lat p50':>8s} {'lat p95':>8s} {'utt s':>6s}  (RTF = audio s / compute s; "
          f"latency = end of speech -> transcript, ms)")
    for m, r in res["models"].items():
        print(f"{m:10s} {r['prompts']:7d} {r['words']:6d} {100 * r['wer']:6.2f}% "
              f"{r['rtf']:5.1f}x {r['latency_p50_ms'] or math.nan:8.0f} "
              f"{r['latency_p95_ms'] or math.nan:8.0f} "
              f"{r['latency_utterance_seconds'] or math.nan:6.2f}")
    for m, r in res["models"].items():
        if r["window"] == "fit":
            print(f"{m}: window fit, {r['refits']} of {r['prompts']} prompts decoded again on "
                  "the whole window")
    print(f"{sel['excluded']} of {sel['with_text']} prompts excluded (digits, symbols, number "
          f"words, notes, letters); {args.compute_type}, beam {args.beam_size}, "
          f"{args.threads} threads; load average {res['load_average']:.1f} on {res['cpus']} CPUs")
    for m, r in res["models"].items():
        bad = "; ".join(f"{b['input']}: {b['error'] or repr(b['text'][:30])} "
                        f"({b['seconds']:.2f} s)" for b in r["bad_input"])
        print(f"bad input, {m}: {bad}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        if lat and any(lat.values()):
            _plot(out.with_suffix(".png"), res, lat, per_prompt)
        print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0
