"""`python -m erc_ros <command>` (also installed as `erc-ros`).

Each command lives in its own module exposing ``add_arguments(parser)`` and ``run(args) ->
int``; it is imported only when chosen, so `--help` stays fast and a command's heavy
dependencies (torch, rclpy) load only for the commands that need them.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from erc_ros import process
from erc_ros.models.artefact import ArtefactError, portable_command
from erc_ros.models.packaged import PackagedModelError

# name -> (module, one-line help). Keep sorted by the workflow: data, train, deploy, run.
COMMANDS: dict[str, tuple[str, str]] = {}


def register(name: str, module: str, help: str) -> None:
    COMMANDS[name] = (module, help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m erc_ros",
        description="Emotion recognition in conversation for social robots.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(_module=module)
        # Arguments are added lazily (see main) so that `--help` does not import torch.
        p.set_defaults(_name=name)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help()
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    name = argv[0]
    process.set_environment()  # before any command imports torch
    module = importlib.import_module(COMMANDS[name][0])
    sub = argparse.ArgumentParser(prog=f"python -m erc_ros {name}",
                                  description=COMMANDS[name][1])
    module.add_arguments(sub)
    args = sub.parse_args(argv[1:])
    # The command as given (not the interpreter's argv: main may be called from Python), for
    # the provenance of what it writes; without this machine's paths.

    args.command_line = portable_command(argv)
    # The process-wide settings, once, from the command's arguments: a command that runs
    # the perception core says so with process_settings(args); else torch gets --threads
    # (a command without it does not configure torch).
    wanted = module.process_settings(args) if hasattr(module, "process_settings") else \
        {"torch_threads": getattr(args, "threads", None)}
    process.configure(**wanted, by=f"erc_ros {name}")

    try:
        return int(module.run(args) or 0)
    except (ArtefactError, PackagedModelError) as e:
        # A model directory that cannot be used (missing or damaged file, weights from the
        # training extra not set up, ...): the message says what to do; a traceback would
        # only hide it. ERC_ROS_DEBUG=1 shows the traceback too.
        if os.environ.get("ERC_ROS_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 1


# The commands. Each module documents its own arguments.
register("info", "erc_ros.commands.info", "print versions, interfaces and the models found")
register("export", "erc_ros.runtime.export_command", "export a model directory's stages to ONNX, checked against PyTorch")
register("quantize", "erc_ros.runtime.quantize", "make INT8 / weight-only INT8 / FP16 ONNX variants, registered in the manifest")
register("prepare", "erc_ros.runtime.prepare", "make a model's ONNX / INT8 files into the cache, once (loading never builds)")
register("build-engines", "erc_ros.runtime.engines", "build TensorRT engines on this device (bucketed profiles, cached)")
register("bench", "erc_ros.bench.model", "latency per stage, size and MELD dev accuracy of each backend/precision")
register("train", "erc_ros.training.train_cli", "train a model directory from a recipe (default: models/default)")
register("evaluate", "erc_ros.training.evaluate", "score a model directory on a MELD-format CSV (JSON + confusion PNG)")
register("evaluate-face", "erc_ros.training.evaluate_face",
         "score face-expression models (and today's expert) on labelled faces: accuracy, UAR, per-class F1")
register("make-bag", "erc_ros.bags.make_bag", "generate a labelled conversation rosbag2 (speech, faces, ASR, labels)")
register("eval-bag", "erc_ros.evaluation.eval_bag", "score rosbag2 recordings through the node pipeline (CSV, metrics, confusion PNG)")
register("bench-e2e", "erc_ros.bench.e2e", "end-to-end latency through the live nodes: final ASR result -> EmotionEstimate")
register("demo", "erc_ros.commands.demo", "replay the sample bag through the composed nodes, one line per estimate")
register("play", "erc_ros.bags.play", "play a bag into nodes already running, with /clock")
register("record", "erc_ros.bags.record", "record the topics erc_ros uses into a rosbag2 (a labelled session)")
register("gen-conversation", "erc_ros.synth.conversation",
         "synthesize a multi-speaker conversation (WAV + JSON + faces) from a script or MELD CSV")
register("bench-core", "erc_ros.bench.core",
         "perception core: DER (synthetic + real speech) and real-time factor, per stage")
register("soak-core", "erc_ros.bench.soak_core",
         "perception core: stream a long synthetic conversation, check memory stays flat")
register("lifecycle-memory", "erc_ros.bench.lifecycle_memory",
         "composed nodes: RSS over lifecycle cycles driven over ROS, checked flat")
register("transcribe", "erc_ros.commands.transcribe",
         "speech to text with the embedded Whisper (WAV files; --prepare readies the models)")
register("bench-spoken", "erc_ros.bench.spoken",
         "the model's loss from gold text to what a robot hears, stage by stage (spoken MELD)")
register("fit-senses", "erc_ros.commands.fit_senses",
         "learn how text, voice and face weigh in the published label, on dev compositions "
         "of real people")
register("bench-senses", "erc_ros.bench.senses",
         "each sense of the estimate (text, voice, face, fused) on real people's labelled clips")
register("heard-set", "erc_ros.evaluation.heard_set",
         "a MELD file as a robot hears it (spoken, recognized, diarized): training text")
register("voices", "erc_ros.synth.voices",
         "voices for generated conversations: prepare Kokoro (the voices extra), list, say")
register("spoken-set", "erc_ros.synth.spoken_set",
         "MELD dialogues spoken with natural voices, kept in the checkout (build, verify); "
         "marks: does a voice say the `!` the recognizer drops")
register("bench-asr", "erc_ros.bench.asr",
         "embedded ASR: WER on real English prompts, real-time factor, end-of-speech latency")
register("egemaps-agreement", "erc_ros.bench.egemaps_agreement",
         "packaged eGeMAPS audio features vs openSMILE on real clips; --timing: cost per utterance")
register("predict-voice", "erc_ros.commands.predict_voice",
         "the emotion in a voice, per audio file (the voice expert: Whisper states, RAVDESS)")
register("bench-voice", "erc_ros.bench.voice",
         "the voice expert on synthetic voices, held-out actors in a room, and its cost")
register("predict-face", "erc_ros.commands.predict_face",
         "facial expression of the faces in images (pretrained FER2013 expert, MELD classes)")
