"""``python -m erc_ros export --model DIR [--check-dev]``: the export command.

The exporting itself is :func:`erc_ros.runtime.export.export_model`; the command sits above
the pipeline (``--check-dev`` scores the ONNX export against PyTorch on MELD dev through
:class:`~erc_ros.runtime.pipeline.EmotionPipeline`), so that ``export`` stays below it.
"""
from __future__ import annotations

from .evaluation import compare_backends
from .export import export_model
from .manifest import open_for_cli
from .stages import STAGES


def add_arguments(p) -> None:
    p.add_argument("--model", required=True, help="model directory (manifest.json inside)")
    p.add_argument("--stages", default="", help="comma-separated subset of " + ",".join(STAGES))
    p.add_argument("--check-dev", action="store_true",
                   help="then compare the ONNX pipeline with PyTorch on all of MELD dev "
                        "(label agreement, max abs diff of probabilities)")
    p.add_argument("--limit", type=int, default=0, help="with --check-dev: first N dialogues")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--in-place", action="store_true",
                   help="write into DIR even if it is versioned in git (default: its overlay)")


def run(args) -> int:
    model, out_dir = open_for_cli(args)
    stages = [s for s in args.stages.split(",") if s] or None
    report = export_model(model, out_dir, stages=stages)
    print(f"{'stage':<15} {'max abs diff':>14} {'labels agree':>13}  file")
    for name, r in report.items():
        c = r["check"]
        d = max(c["max_abs_diff"].values()) if c["max_abs_diff"] else 0.0
        la = "-" if c["label_agreement"] is None else f"{100 * c['label_agreement']:.1f}%"
        print(f"{name:<15} {d:>14.2e} {la:>13}  {r['path']}")
    if args.check_dev:
        res = compare_backends(out_dir, ("torch", "fp32"), ("onnxruntime", "fp32"),
                               limit=args.limit, threads=args.threads)
        print(f"MELD dev ONNX vs PyTorch: {res['n']} utterances, label agreement "
              f"{100 * res['label_agreement']:.2f}%, max abs diff of probabilities "
              f"{res['max_abs_diff_prob']:.2e}")
        return 0 if res["label_agreement"] >= 0.995 else 1
    return 0
