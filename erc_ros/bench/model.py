"""`python -m erc_ros bench --model DIR --json OUT`: latency, size and accuracy per variant.

Variants (``backend/precision``, default ``torch/fp32, onnxruntime/fp32, onnxruntime/int8,
onnxruntime/woq8``, plus ``tensorrt/fp16`` and ``tensorrt/int8`` where engines exist) run
*interleaved in one process* on the same inputs — the machines are shared and noisy, so only
ratios of variants measured side by side mean anything. Each timed call is one
``EmotionPipeline.predict`` on a MELD dev utterance whose prompt fills the token budget
(128 by default), with its conversation context already cached (restored from a snapshot
before every call), i.e. exactly the live per-utterance cost.

Reported per variant and stage (preprocess, each encoder, fusion, postprocess, total):
p50/p95/p99 ms and single-stream throughput; artefact sizes; MELD dev weighted F1 and its
delta against PyTorch FP32; the distance of the INT8 text encoder from the physical INT8 floor
of this machine (``shared/notes/performance.md``: ~1.3 TOP/s VNNI on 2 threads) scaled to the
model's FLOPs. Printed as a table, saved as JSON and as a PNG of the latency distributions.
"""
from __future__ import annotations

import io
import json
import logging
import os
import random
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from erc_ros.runtime.backends import tensorrt_available
from erc_ros.runtime.evaluation import run_dialogues, weighted_f1
from erc_ros.runtime.manifest import load_model, read_manifest, runtime_dir
from erc_ros.runtime.pipeline import TIMED, EmotionPipeline, current_engines
from erc_ros.runtime.quantize import ensure_variants
from erc_ros.runtime.samples import builtin_dialogues, load_meld, load_meld_dialogues, meld_dir
from erc_ros.runtime.stages import needed_stages

log = logging.getLogger("erc_ros.runtime")

DEFAULT_VARIANTS = ("torch/fp32", "torch/int8", "onnxruntime/fp32", "onnxruntime/int8",
                    "onnxruntime/woq8")
#: This machine kind, 2 threads (performance.md): FP32 GEMM ~320 GFLOP/s, INT8 VNNI ~1.3 TOP/s.
FP32_FLOPS = 3.2e11
INT8_OPS = 1.3e12


def text_encoder_flops(cfg: dict, tokens: int) -> float:
    """Multiply-add FLOPs (x2) of a BERT-style encoder at ``tokens`` (batch 1)."""
    h, layers = cfg["hidden_size"], cfg["num_hidden_layers"]
    inter = cfg.get("intermediate_size", 4 * h)
    per_layer = 2 * tokens * (4 * h * h + 2 * h * inter) + 2 * 2 * tokens * tokens * h
    return float(layers * per_layer)


def pick_probes(pipe: EmotionPipeline, dialogues, tokens: int, n: int = 16):
    """(context, utterance) pairs whose prompt is ``tokens`` long (else the longest)."""
    pre = pipe.preprocessor
    k = pipe.past_context
    cands = []
    for d in dialogues:
        for i, u in enumerate(d):
            ctx = d[max(0, i - k):i]
            cands.append((len(pre.text_ids(u, ctx)), ctx, u))
    exact = [c for c in cands if c[0] == tokens]
    pool = exact if len(exact) >= n else sorted(cands, key=lambda c: -c[0])[:max(n, 1)]
    rng = random.Random(0)
    rng.shuffle(pool)
    return pool[:n]


class _Probe:
    """One timed input with its conversation context cached once per variant."""

    def __init__(self, ctx, utt):
        self.ctx, self.utt = ctx, utt
        self.snapshots: dict[str, object] = {}

    def prime(self, name: str, pipe: EmotionPipeline) -> None:
        cid = self.utt.conversation_id
        pipe.reset(cid)
        for c in self.ctx:
            pipe.predict(c)
        self.snapshots[name] = pipe.snapshot(cid)

    def run(self, name: str, pipe: EmotionPipeline):
        pipe.restore(self.utt.conversation_id, self.snapshots[name])
        pipe.predict(self.utt)
        return dict(pipe.last_timings)


def _variant_bytes(model_dir: Path, backend: str, precision: str, pipe) -> int:
    arts = read_manifest(model_dir)["artefacts"]
    if backend == "torch" and precision == "fp32":
        return sum(e["bytes"] for e in arts.values() if e["kind"] == "weights")
    if backend == "torch":  # dynamic INT8 modules exist only in memory: measure them

        import torch

        buf = io.BytesIO()
        torch.save({k: b.module.state_dict() for k, b in pipe.stages.items()}, buf)
        return buf.tell()
    kind = "onnx" if backend == "onnxruntime" else "engine"
    total = 0
    for stage, be in pipe.stages.items():
        rel = next((r for r, e in arts.items() if e.get("kind") == kind and
                    e.get("stage") == stage and e.get("precision") == be.precision), None)
        if rel is None:  # stage fell back (e.g. no engine): count what runs
            rel = next((r for r, e in arts.items() if e.get("kind") == "onnx" and
                        e.get("stage") == stage and e.get("precision") == "fp32"), None)
        total += arts[rel]["bytes"] if rel else 0
    return total


def _pct(a, q):
    return float(np.percentile(a, q)) if len(a) else float("nan")


def run_bench(model_dir, variants=DEFAULT_VARIANTS, iterations: int = 200, warmup: int = 10,
              tokens: int = 128, eval_dev: bool = True, dev_limit: int = 0, threads: int = 2,
              n_probes: int = 16, progress: bool = True) -> dict:

    model_dir = Path(model_dir)
    variants = [v for v in variants]
    ort_precisions = sorted({v.split("/")[1] for v in variants if v.startswith("onnxruntime/")})
    if ort_precisions:
        # Exported/quantized once, into the model directory if it already holds ONNX files,
        # else into its overlay in the cache (a committed model directory stays untouched).
        model = load_model(model_dir)
        model_dir = runtime_dir(model_dir, needed_stages(model), "fp32", create=True)
        ensure_variants(model_dir, model, precisions=ort_precisions, progress=progress)
    pipes = {}
    for v in variants:
        backend, precision = v.split("/")
        pipes[v] = EmotionPipeline.from_model_dir(model_dir, backend=backend,
                                                  precision=precision, threads=threads)
    first = pipes[variants[0]]
    have_meld = meld_dir() is not None
    data = load_meld("dev", dev_limit) if have_meld else []
    dialogues = [u for u, _ in data] if data else builtin_dialogues()
    # Timed inputs come from all of dev (prompts that fill the token budget are rare in a
    # few dialogues); --dev-limit only shortens the accuracy pass.
    pool = load_meld_dialogues("dev") if have_meld else dialogues
    probes = [_Probe(ctx, u) for _, ctx, u in pick_probes(first, pool, tokens, n_probes)]
    probe_tokens = [len(first.preprocessor.text_ids(p.utt, p.ctx)) for p in probes]
    for p in probes:
        for v, pipe in pipes.items():
            p.prime(v, pipe)

    times = {v: {k: [] for k in TIMED} for v in variants}
    rng = random.Random(1)
    order = list(variants)
    for it in tqdm(range(warmup + iterations), desc="bench", unit="round", disable=not progress):
        probe = probes[it % len(probes)]
        rng.shuffle(order)  # interleaved, in a different order each round
        for v in order:
            t = probe.run(v, pipes[v])
            if it >= warmup:
                for k, ms in t.items():
                    times[v][k].append(ms)

    results: dict = {"model_dir": str(model_dir), "model_id": first.model_id,
                     # Other processes share these cores: the load says how noisy it was.
                     "load_average_1min_at_end": os.getloadavg()[0],
                     "tokens_requested": tokens,
                     "tokens_mean": float(np.mean(probe_tokens)), "iterations": iterations,
                     "probes": len(probes), "threads": threads,
                     "data": "MELD dev" if have_meld else "built-in dialogues",
                     "variants": {}}
    for v in variants:
        backend, precision = v.split("/")
        pipe = pipes[v]
        stages = {}
        for k in TIMED:
            a = np.asarray(times[v][k])
            if k.endswith("_encoder") and (k not in pipe.stages or not a.size):
                continue  # no such encoder, or the inputs never had that modality
            stages[k] = {"p50": _pct(a, 50), "p95": _pct(a, 95), "p99": _pct(a, 99),
                         "mean": float(a.mean()) if a.size else float("nan")}
        total = stages["total"]
        results["variants"][v] = {
            "backend": backend, "precision": pipe.precision, "where": pipe.where,
            "stages_ms": stages, "throughput_per_s": 1000.0 / total["mean"],
            "bytes": _variant_bytes(model_dir, backend, precision, pipe),
            "samples_ms": [round(x, 3) for x in times[v]["total"]]}

    if eval_dev and have_meld:
        labels = [l for _, ls in data for l in ls]
        preds_by = {}
        for v in variants:
            probs, preds, _ = run_dialogues(pipes[v], dialogues, f"MELD dev {v}" if progress
                                            else None)
            preds_by[v] = (probs, preds)
            results["variants"][v]["weighted_f1"] = weighted_f1(labels, preds)
            results["variants"][v]["accuracy"] = 100.0 * float(np.mean(
                [a == b for a, b in zip(labels, preds)]))
        ref = "torch/fp32" if "torch/fp32" in preds_by else variants[0]
        rp, rl = preds_by[ref]
        for v, (probs, preds) in preds_by.items():
            r = results["variants"][v]
            r["label_agreement_vs_" + ref.replace("/", "_")] = float(np.mean(
                [a == b for a, b in zip(rl, preds)]))
            r["max_abs_diff_prob_vs_" + ref.replace("/", "_")] = float(np.abs(probs - rp).max())
            r["weighted_f1_drop"] = results["variants"][ref]["weighted_f1"] - r["weighted_f1"]
        results["dev_utterances"] = len(labels)

    # Headline ratios (INT8 ONNX against PyTorch FP32 and against the FP32 ONNX size).
    V = results["variants"]
    if "onnxruntime/int8" in V and "torch/fp32" in V:
        results["int8_over_fp32_p50"] = (V["onnxruntime/int8"]["stages_ms"]["total"]["p50"] /
                                         V["torch/fp32"]["stages_ms"]["total"]["p50"])
    if "onnxruntime/int8" in V:
        fp32_onnx = _variant_bytes(model_dir, "onnxruntime", "fp32", pipes.get(
            "onnxruntime/fp32") or EmotionPipeline.from_model_dir(
                model_dir, backend="onnxruntime", precision="fp32", threads=threads))
        results["int8_size_ratio"] = V["onnxruntime/int8"]["bytes"] / fp32_onnx
        if "weighted_f1_drop" in V["onnxruntime/int8"]:
            results["int8_weighted_f1_drop"] = V["onnxruntime/int8"]["weighted_f1_drop"]
        backbone = first.model.config.text.backbone
        if "hidden_size" in backbone:
            flops = text_encoder_flops(backbone, int(round(results["tokens_mean"])))
            floor = 1e3 * flops / INT8_OPS
            te = V["onnxruntime/int8"]["stages_ms"].get("text_encoder", {}).get("p50")
            results["text_encoder_gflop"] = flops / 1e9
            results["int8_floor_ms"] = floor
            results["fp32_floor_ms"] = 1e3 * flops / FP32_FLOPS
            if te:
                results["int8_text_encoder_p50_over_floor"] = te / floor
    for pipe in pipes.values():
        pipe.close()
    return results


def print_table(r: dict) -> None:
    print(f"\nmodel {r['model_id']}  prompt tokens {r['tokens_mean']:.0f}  "
          f"{r['iterations']} interleaved rounds  {r['threads']} threads  ({r['data']})  "
          f"load average {r['load_average_1min_at_end']:.1f}")
    head = f"{'variant':<20} {'stage':<14} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    print(head)
    print("-" * len(head))
    for v, x in r["variants"].items():
        for k, s in x["stages_ms"].items():
            print(f"{v:<20} {k:<14} {s['p50']:>8.2f} {s['p95']:>8.2f} {s['p99']:>8.2f}")
        extra = f"  weighted F1 {x['weighted_f1']:.2f} (drop {x['weighted_f1_drop']:+.2f})" \
            if "weighted_f1" in x else ""
        print(f"{v:<20} {'':<14} {x['throughput_per_s']:.1f} utt/s  "
              f"{x['bytes'] / 1e6:.2f} MB{extra}")
    for k in ("int8_over_fp32_p50", "int8_size_ratio", "int8_weighted_f1_drop", "int8_floor_ms",
              "int8_text_encoder_p50_over_floor"):
        if k in r:
            print(f"{k} = {r[k]:.3f}")


def plot(r: dict, path: str | Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(r["variants"])
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(13, 4.8))
    data = [r["variants"][v]["samples_ms"] for v in names]
    a1.violinplot(data, showmedians=True)
    a1.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right")
    a1.set_ylabel("end-to-end latency per utterance (ms)")
    a1.set_title(f"predict() latency, {r['tokens_mean']:.0f}-token prompt, interleaved")
    stages = [s for s in TIMED if s != "total"]
    bottom = np.zeros(len(names))
    for s in stages:
        vals = np.array([r["variants"][v]["stages_ms"].get(s, {}).get("p50", 0.0) for v in names])
        a2.bar(range(len(names)), vals, bottom=bottom, label=s)
        bottom += vals
    a2.set_xticks(range(len(names)), names, rotation=20, ha="right")
    a2.set_ylabel("p50 per stage (ms)")
    a2.legend(fontsize=8)
    a2.set_title("where the time goes")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model directory")
    p.add_argument("--json", required=True, help="where to write the results (JSON)")
    p.add_argument("--png", default="", help="latency plot (default: next to the JSON)")
    p.add_argument("--variants", default="", help="comma-separated backend/precision list "
                   f"(default: {','.join(DEFAULT_VARIANTS)}, + tensorrt where engines exist)")
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--tokens", type=int, default=128, help="prompt length of the timed inputs")
    p.add_argument("--no-eval", action="store_true", help="skip the MELD dev accuracy pass")
    p.add_argument("--dev-limit", type=int, default=0, help="first N MELD dev dialogues")
    p.add_argument("--threads", type=int, default=2)


def run(args) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    variants = [v for v in args.variants.split(",") if v] or list(DEFAULT_VARIANTS)
    if not args.variants:

        if tensorrt_available():
            engines = current_engines(args.model).get("text_encoder", {})
            variants += [f"tensorrt/{p}" for p in ("fp16", "int8") if p in engines]
    t0 = time.time()
    r = run_bench(args.model, variants, iterations=args.iterations, warmup=args.warmup,
                  tokens=args.tokens, eval_dev=not args.no_eval, dev_limit=args.dev_limit,
                  threads=args.threads)
    r["seconds"] = round(time.time() - t0, 1)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2))
    png = Path(args.png) if args.png else out.with_suffix(".png")
    plot(r, png)
    print_table(r)
    print(f"\nwrote {out} and {png} in {r['seconds']} s")
    return 0
