"""`python -m erc_ros fit-senses`: fit the sense fusion of the published label on dev
compositions of real people (:mod:`erc_ros.training.senses` says which), print what it gives
on the part it did not learn from, and write the fusion's model directory.

    python -m erc_ros fit-senses --out models/senses --json runs/senses_fit.json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np

from erc_ros.core.types import FACE_CLASSES
from erc_ros.datasets.voices import RAVDESS_LICENCE
from erc_ros.models.artefact import add_artefact, write_manifest
from erc_ros.paths import data_root
from erc_ros.runtime.face_expert import FaceExpert
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.senses import FUSION_FILE, KIND
from erc_ros.synth.faces import face_image
from erc_ros.training.provenance import provenance
from erc_ros.training.senses import (GROUPS, fit, meld_rows, ravdess_rows, report, table,
                                     voice_out_of_fold)


def _log(s: str) -> None:
    print(f"fit-senses: {s}", flush=True)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="", help="write the fitted fusion model directory here "
                   "(default: only report)")
    p.add_argument("--json", default="", help="write the figures here")
    p.add_argument("--model-dir", default="", help="the text model (default models/default)")
    p.add_argument("--voice-features", default="",
                   help="the voice recipe's cached features of RAVDESS (voice_features.npz, "
                        "written by `train --recipe voice`; default: runs/voice_tiny)")
    p.add_argument("--turns", type=int, default=8, help="turns per RAVDESS conversation")
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)


def process_settings(args) -> dict:
    return {"torch_threads": args.threads}


def run(args) -> int:
    t0 = time.time()
    root = data_root()
    feats = Path(args.voice_features or "runs/voice_tiny/voice_features.npz")
    if not feats.is_file():
        raise SystemExit(f"error: {feats}: no voice features (run `python -m erc_ros train "
                         "--recipe voice --out runs/voice_tiny` first, or --voice-features)")
    model_dir = args.model_dir or default_model_dir()
    pipeline = EmotionPipeline.from_model_dir(model_dir, threads=args.threads, fusion="text")
    expert = FaceExpert(threads=args.threads)
    _log("voice readings out of fold (6 folds by actor)")
    voice = voice_out_of_fold(root / "ravdess_speech", feats)
    _log("face readings of FER2013 public_test")
    fer = np.load(root / "fer2013" / "public_test.npz")
    crops = [cv2.cvtColor(im, cv2.COLOR_GRAY2RGB) for im in fer["images"]]
    fp = expert.predict(crops)
    fl = np.array([FACE_CLASSES.index(str(x).lower()) for x in fer["labels"]])
    fpart = np.where(np.arange(len(fl)) % 2 == 0, "fit", "check")
    portraits = {i: expert.predict([face_image(i)])[0] for i in range(8)}
    _log("text readings of MELD dev and of RAVDESS's sentences")
    rows = meld_rows(pipeline, root / "meld" / "dev_sent_emo.csv",
                     lambda i: portraits[i % len(portraits)])
    rows += ravdess_rows(pipeline, voice, (fp, fl, fpart), args.turns, args.seed)
    fit_rows = [r for r in rows if r.part == "fit"]
    check_rows = [r for r in rows if r.part == "check"]
    _log(f"{len(fit_rows)} turns to fit on, {len(check_rows)} to check on")
    held = fit(fit_rows, args.l2)
    rep = report(held, check_rows)
    _log("fitted on one part, scored on the other (RAVDESS actors 16-18, FER faces of odd "
         "index, MELD dialogues of odd number):\n" + table(rep))
    final = fit(rows, args.l2)
    final.text_model_id = pipeline.model_id
    out = {"text_model": pipeline.model_id, "held_out": rep, "held_out_fusion": held.to_dict(),
           "fusion": final.to_dict(), "turns": {"fit": len(fit_rows), "check": len(check_rows)},
           "l2": args.l2, "seed": args.seed, "minutes": round((time.time() - t0) / 60, 1)}
    if args.out:
        o = Path(args.out)
        o.mkdir(parents=True, exist_ok=True)
        (o / FUSION_FILE).write_text(json.dumps(final.to_dict(), indent=1) + "\n")
        prov = provenance(
            args, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            data={"compositions": {g: sum(r.group == g for r in rows) for g in GROUPS},
                  "sources": ["MELD dev (text)", "RAVDESS speech, 18 actors (voice, out of "
                              "fold)", "FER2013 public_test (faces)"],
                  "licence": [RAVDESS_LICENCE]},
            l2=args.l2, seed=args.seed)
        write_manifest(o, {"format_version": 1, "kind": KIND,
                           "model_id": f"senses-{time.strftime('%Y%m%d')}",
                           "text_model_id": pipeline.model_id, "provenance": prov,
                           "dev_metrics": {"split": "fitted on RAVDESS actors 1-15, FER "
                                           "faces of even index, MELD dialogues of even "
                                           "number; scored on the rest", **rep},
                           "artefacts": {}})
        add_artefact(o, FUSION_FILE, "fusion")
        _log(f"wrote {o}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")
    _log(f"done in {out['minutes']} min")
    return 0
