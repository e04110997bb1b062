"""Does erc_ros run the same on NumPy 1.26 (what ROS 2 Jazzy's packages are built against) as
on the development machine's NumPy 2? `make check-numpy1` (tools/check_numpy1.sh) runs this
in both environments and compares.

    python tools/numpy1_check.py --json OUT      what this environment makes, as JSON
    python tools/numpy1_check.py --compare A B   the two runs agree (exit 1 with the reasons)

What it runs, none of it ROS (the PyPI ROS wheels of the development machine are built
against NumPy 2, a robot's distro ROS against 1.x; erc_ros's own code is the same either way):

- the perception core (VAD, speaker embeddings and diarization, faces and the face expert)
  on a generated three-speaker conversation (espeak-ng voices, the demo's faces), with its
  transcripts timed;
- `prepare` of the default model (ONNX export, INT8 quantization) into this environment's
  cache, then the default model on the first MELD dev dialogues in PyTorch FP32 and in ONNX
  Runtime INT8 (what the nodes run);
- the embedded recognizer (faster-whisper tiny.en on CTranslate2) on three of the
  conversation's turns.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

PACKAGES = ("numpy", "scipy", "torch", "transformers", "tokenizers", "onnx", "onnxruntime",
            "onnxscript", "opencv-python-headless", "scikit-image", "scikit-learn", "librosa",
            "numba", "h5py", "ctranslate2", "faster-whisper", "av", "silero-vad",
            "resemblyzer", "afx-audio", "matplotlib")
MELD_DIALOGUES = 6


def versions() -> dict:
    out = {"python": platform.python_version()}
    for p in PACKAGES:
        try:
            out[p] = md.version(p)
        except md.PackageNotFoundError:
            out[p] = None
    return out


def conversation():
    from erc_ros.synth import conversation as cg

    script = Path(__file__).resolve().parents[1] / "data" / "demo_script.txt"
    cache = Path(os.environ.get("ERC_ROS_CACHE", tempfile.gettempdir())) / "espeak"
    return cg.build(cg.parse_script(script.read_text()), seed=3, cache=cache, name="numpy1")


def run_core(conv) -> list[dict]:
    from erc_ros.assemble import build_core
    from erc_ros.bench.core import stream

    core = build_core({"diarization.warmup": False})
    utts, _ = stream(core, conv, asr="timed", video=True)
    return [{"start": round(u.start, 3), "end": round(u.end, 3), "speaker": u.speaker_id,
             "text": u.text, "face_status": u.face_status,
             "face": [float(x) for x in u.features.get("face_probabilities", [])],
             "embedding": [float(x) for x in u.features.get("speaker_embedding", [])[:8]]}
            for u in sorted(utts, key=lambda u: u.start)]


def run_pipeline() -> dict:
    from erc_ros.runtime.evaluation import evaluate_variant
    from erc_ros.runtime.manifest import default_model_dir

    out = {}
    for backend, precision in (("torch", "fp32"), ("onnxruntime", "int8")):
        r = evaluate_variant(default_model_dir(), backend, precision, limit=MELD_DIALOGUES,
                             progress=False)
        out[f"{backend}/{precision}"] = {"n": r["n"], "preds": r["preds"],
                                         "probs": np.round(r["probs"], 6).tolist(),
                                         "weighted_f1": round(r["weighted_f1"], 2)}
    return out


def run_asr(conv) -> list[str]:
    from erc_ros.core.asr import WhisperRecognizer
    from erc_ros.core.config import AsrConfig

    rec = WhisperRecognizer(AsrConfig(model="tiny.en")).load()
    out = []
    for t in conv.turns[:3]:
        a = conv.audio[int(t.start * conv.sample_rate):int(t.end * conv.sample_rate)]
        r = rec.transcribe(a.astype(np.float32))
        out.append(r.text)
    return out


def run() -> dict:
    conv = conversation()
    return {"versions": versions(), "core": run_core(conv), "pipeline": run_pipeline(),
            "asr": run_asr(conv)}


def compare(a: dict, b: dict) -> list[str]:
    """Where run ``b`` differs from run ``a`` beyond float noise (empty: they agree)."""
    bad = []
    ca, cb = a["core"], b["core"]
    if len(ca) != len(cb):
        bad.append(f"core: {len(ca)} vs {len(cb)} utterances")
    for x, y in zip(ca, cb):
        for k in ("speaker", "text", "face_status"):
            if x[k] != y[k]:
                bad.append(f"core {x['start']}: {k} {x[k]!r} vs {y[k]!r}")
        if abs(x["start"] - y["start"]) > 0.05 or abs(x["end"] - y["end"]) > 0.05:
            bad.append(f"core: span {x['start']}-{x['end']} vs {y['start']}-{y['end']}")
        for k, tol in (("face", 1e-3), ("embedding", 1e-3)):
            if len(x[k]) != len(y[k]) or (x[k] and np.abs(np.subtract(x[k], y[k])).max() > tol):
                bad.append(f"core {x['start']}: {k} differs")
    for v, ra in a["pipeline"].items():
        rb = b["pipeline"].get(v)
        if rb is None or ra["n"] != rb["n"]:
            bad.append(f"pipeline {v}: missing or a different number of utterances")
            continue
        agree = float(np.mean([p == q for p, q in zip(ra["preds"], rb["preds"])]))
        diff = float(np.abs(np.subtract(ra["probs"], rb["probs"])).max())
        if agree < 1.0 or diff > 1e-3:
            bad.append(f"pipeline {v}: label agreement {agree:.3f}, max |dp| {diff:.2g}")
    if a["asr"] != b["asr"]:
        bad.append(f"asr: {a['asr']} vs {b['asr']}")
    return bad


def summary(r: dict) -> str:
    v = r["versions"]
    faces = sorted({u["face_status"] for u in r["core"]})
    pipe = ", ".join(f"{k}: {p['n']} utterances, weighted F1 {p['weighted_f1']}"
                     for k, p in r["pipeline"].items())
    return (f"python {v['python']}, numpy {v['numpy']}, torch {v['torch']}, transformers "
            f"{v['transformers']}, onnxruntime {v['onnxruntime']}, scipy {v['scipy']}, opencv "
            f"{v['opencv-python-headless']}: core {len(r['core'])} utterances, "
            f"{len({u['speaker'] for u in r['core']})} speakers, faces {faces}; {pipe}; "
            f"asr {r['asr'][:1]}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", help="run here and write the results")
    p.add_argument("--compare", nargs=2, metavar=("REFERENCE", "OTHER"))
    args = p.parse_args(argv)
    if args.json:
        from erc_ros.process import configure

        configure(torch_threads=2)
        r = run()
        Path(args.json).write_text(json.dumps(r, indent=1) + "\n")
        print(summary(r))
    if args.compare:
        a, b = (json.loads(Path(f).read_text()) for f in args.compare)
        print("reference:", summary(a))
        print("other:    ", summary(b))
        bad = compare(a, b)
        for line in bad:
            print("DIFFERS:", line)
        print("the two runs agree" if not bad else f"{len(bad)} difference(s)")
        return 1 if bad else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
