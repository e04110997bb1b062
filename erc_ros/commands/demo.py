"""`python -m erc_ros demo` (`make demo`): the sample conversation through the live nodes.

Starts the utterance and emotion nodes composed in this process (in-memory hand-off), plays
the sample bag in the repo (``data/demo_bag``: a generated multi-speaker conversation
with speech, faces, ASR transcripts and labels) into them with ``/clock``, prints one line
per published estimate -- the fused label and, beside it, what the face-expression expert
said of the speaker's face on its own (its label and probability; ``uncertain`` when it
cannot read the face, ``-`` when no face was seen) and what the voice expert said of the
utterance's audio (the same: its label and probability, or why it cannot read the voice:
``unfamiliar`` for the bag's espeak voices, ``-`` when it did not run) -- and a summary scored against the bag's labels.

``--asr embedded`` (``make demo-asr``) does not read the bag's transcripts: the node's own
recognizer listens to the bag's audio, as on a robot with only a camera and a microphone.

Regenerate the sample bag: ``python -m erc_ros make-bag --script data/demo_script.txt
--out data/demo_bag --fps 3 --jpeg-quality 60``.
"""
from __future__ import annotations

import sys
from pathlib import Path

from erc_ros.assemble import torch_threads
from erc_ros.core.types import FACE_UNCERTAIN, VOICE_UNCERTAIN
from erc_ros.evaluation.eval_bag import evaluate, read_labels, summary_markdown
from erc_ros.paths import demo_bag


def add_arguments(p) -> None:
    p.add_argument("--bag", default=str(demo_bag()), help="bag to replay (default: sample bag)")
    p.add_argument("--model-dir", default="", help="model directory (default models/default)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--rate", type=float, default=1.0, help="replay speed (1 = real time)")
    p.add_argument("--offline", action="store_true",
                   help="skip the nodes: the offline replay eval-bag uses (same pipeline)")
    p.add_argument("--out", default=None, help="also write eval-bag outputs here")
    p.add_argument("--asr", choices=["bag", "embedded"], default="bag",
                   help="bag: the bag's transcripts; embedded: ignore them, the node's own "
                        "recognizer hears the audio")


def process_settings(args) -> dict:
    """The perception core runs in this process: torch's pool is the speaker embedder's
    (:func:`erc_ros.assemble.torch_threads`)."""
    return {"torch_threads": torch_threads()}


def run(args) -> int:

    bag = Path(args.bag)
    if not bag.exists():
        print(f"demo: sample bag {bag} missing (see `python -m erc_ros demo --help`)",
              file=sys.stderr)
        return 2
    truth = read_labels(bag / "labels.csv") if (bag / "labels.csv").is_file() else []

    def truth_of(est):
        best, ov_best = None, 0.0
        for t in truth:
            ov = min(t["end"], est.end) - max(t["start"], est.start)
            if ov > ov_best:
                best, ov_best = t, ov
        return best["label"] if best else ""

    print(f"{'time':>8}  {'speaker':<10} {'label':<9} {'conf':>4}  {'face':<13} "
          f"{'voice':<13} {'truth':<9} text")

    def face(est) -> str:

        if est.face_label:
            return f"{est.face_label} {est.face_confidence:.2f}"
        return FACE_UNCERTAIN if est.face_status == FACE_UNCERTAIN else "-"

    def voice(est) -> str:
        if est.voice_label:
            return f"{est.voice_label} {est.voice_confidence:.2f}"
        # uncertain: its reason (a synthetic voice is "unfamiliar")
        return (est.voice_reason or VOICE_UNCERTAIN) if est.voice_status == VOICE_UNCERTAIN \
            else "-"

    def line(_utt, est):
        print(f"{est.end:7.2f}s  {est.speaker_id[:10]:<10} {est.label:<9} "
              f"{est.confidence:4.2f}  {face(est):<13} {voice(est):<13} {truth_of(est):<9} "
              f"{est.text[:60]}", flush=True)

    r = evaluate([str(bag)], None, args.model_dir, args.backend, live=not args.offline,
                 rate=args.rate, out=Path(args.out) if args.out else None, on_estimate=line,
                 progress_bar=False, asr=args.asr)  # the per-estimate lines are the progress
    print()
    print(summary_markdown(r))
    return 0 if r["lost"] == 0 else 1
