"""Fusion-head ablation on MELD dev over frozen text features (cheap: encoders run once).

    python -m erc_ros.training.ablation --out /tmp/ablation [--model models/default]

Text branch alone. Features: by default the packaged MiniLM, frozen, mean-pooled over each
utterance on its own (the setting of the 50.6 logistic-regression reference); with
``--model DIR`` the [MASK] vectors of a trained model directory (past-context prompt).
Each head (concat = no cross-utterance context; MAGT, LPGNet = causal past context;
residual) is trained by the fusion stage with and without class weighting, selected on dev.
``--seeds 13,1,2,3,4`` trains each setting from several head seeds and reports their mean and
range: the best epoch of one seed is the top of a noisy curve, so settings are compared by
the mean. ``--int8`` (with ``--model``) scores every head on the text vectors of the model's
ONNX Runtime INT8 copy too (what the nodes run on a CPU; :mod:`erc_ros.training.deployed`),
and ``--select fp32+int8`` keeps each head's epoch by the worse of the two figures. Prints a
markdown table and writes ``ablation.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from erc_ros import process
from erc_ros.datasets import meld
from erc_ros.models.artefact import load_model_dir
from erc_ros.models.preprocessing import PreprocessorConfig, PromptConfig, packaged_minilm_dir
from erc_ros.paths import data_root
from erc_ros.training.deployed import SELECT_RULES, int8_text_vectors, with_text


def main(argv=None) -> int:
    from erc_ros.models.encoders.text import TextEncoderConfig
    from erc_ros.models.erc_model import ErcModelConfig, build_model
    from erc_ros.training.fusion_stage import FusionStageConfig, encode_dialogues, fit_head

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--model", help="trained model directory (default: frozen packaged MiniLM)")
    ap.add_argument("--heads", default="concat,magt,lpg,residual")
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit-train", type=int, default=0, help="use the first N train dialogues")
    ap.add_argument("--class-weights", default="0,0.5",
                    help="class-weight powers to try (comma-separated)")
    ap.add_argument("--seeds", default="13", help="head seeds per setting (comma-separated)")
    ap.add_argument("--int8", action="store_true",
                    help="also score each head on the model's ONNX Runtime INT8 text vectors")
    ap.add_argument("--select", choices=SELECT_RULES, default="fp32",
                    help="what keeps a head's epoch (fp32+int8: the worse of the two; needs "
                         "--int8)")
    args = ap.parse_args(argv)
    if (args.int8 or args.select != "fp32") and not args.model:
        ap.error("--int8 and --select score a trained model's INT8 copy: give --model")
    if args.select != "fp32" and not args.int8:
        ap.error("--select fp32+int8 needs --int8")
    process.configure(torch_threads=args.threads, by="ablation")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    root = data_root() / "meld"
    train = meld.load_meld(root / "train_sent_emo.csv")
    dev = meld.load_meld(root / "dev_sent_emo.csv")
    if args.limit_train:
        train = train[: args.limit_train]
    if args.model:

        model = load_model_dir(args.model)
        tag = Path(args.model).name
    else:
        d = packaged_minilm_dir()
        cfg = ErcModelConfig(text=TextEncoderConfig(pretrained=str(d), pooling="mean"),
                             preprocessing=PreprocessorConfig(prompt=PromptConfig(
                                 past_context=0, speaker_tags=False, template="", max_length=128)))
        model = build_model(cfg, d / "tokenizer.json").eval()
        tag = "minilm-frozen-mean"
    t0 = time.time()
    ftr = encode_dialogues(model, train, out / f"{tag}-train{args.limit_train or ''}.safetensors")
    fdv = encode_dialogues(model, dev, out / f"{tag}-dev.safetensors")
    fdv8 = None
    if args.int8:

        fdv8 = with_text(fdv, int8_text_vectors(model, dev, threads=args.threads))
    rows = []
    seeds = [int(x) for x in args.seeds.split(",")]
    for head in args.heads.split(","):
        for cw in (float(x) for x in args.class_weights.split(",")):
            for seed in seeds:
                _, _, s = fit_head(model, head, ftr, fdv,
                                   FusionStageConfig(epochs=args.epochs, class_weight_power=cw,
                                                     modality_dropout=0.0, lr=5e-4, seed=seed,
                                                     threads=args.threads), seed=seed,
                                   dev_int8=fdv8, select=args.select)
                rows.append({"features": tag, "train_dialogues": len(ftr), "head": head,
                             "class_weight_power": cw, "seed": seed,
                             **{k: s["best"][k] for k in ("weighted_f1", "accuracy", "epoch",
                                                          "weighted_f1_int8") if k in s["best"]}})
                print(rows[-1], file=sys.stderr, flush=True)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2) + "\n")
    print(summary_table(rows))
    print(f"\n{(time.time() - t0) / 60:.1f} min", file=sys.stderr)
    return 0


def summary_table(rows: list[dict]) -> str:
    """Markdown: one line per (features, head, class weighting) with dev weighted F1 and
    accuracy, as mean [min, max] over the seeds where there are several."""

    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["features"], r["head"], r["class_weight_power"]), []).append(r)
    int8 = all("weighted_f1_int8" in r for r in rows)
    lines = ["| features | head | class weighting | seeds | dev weighted F1 | dev accuracy |"
             + (" INT8 weighted F1 |" if int8 else ""),
             "|---|---|---|---|---|---|" + ("---|" if int8 else "")]
    for (feat, head, cw), rs in groups.items():
        def cell(key):
            v = np.array([r[key] for r in rs])
            return f"{v.mean():.2f}" + (f" [{v.min():.2f}, {v.max():.2f}]" if len(v) > 1 else "")
        lines.append(f"| {feat} | {head} | {f'p={cw:g}' if cw else 'off'} | {len(rs)} "
                     f"| {cell('weighted_f1')} | {cell('accuracy')} |"
                     + (f" {cell('weighted_f1_int8')} |" if int8 else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
