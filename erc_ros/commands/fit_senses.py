"""`python -m erc_ros fit-senses`: fit the sense fusion of the published label on dev
compositions of real people (:mod:`erc_ros.training.senses` says which), print what it gives
on the part it did not learn from, and write the fusion's model directory.

    python -m erc_ros fit-senses --out models/senses --json runs/senses_fit.json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from erc_ros.core.types import FACE_CLASSES, VOICE_UNFAMILIAR
from erc_ros.datasets.voices import RAVDESS_LICENCE
from erc_ros.models.artefact import add_artefact, write_manifest
from erc_ros.assemble import perception_config
from erc_ros.bench import spoken
from erc_ros.evaluation import eval_bag
from erc_ros.evaluation.matching import assign, gold_turns
from erc_ros.evaluation.spoken_bags import spoken_bags
from erc_ros.paths import cache_root, data_root, sha256_file
from erc_ros.ros.replay import replay_bag
from erc_ros.runtime.face_expert import FaceExpert
from erc_ros.runtime.face_expert import default_model_dir as face_model_dir
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.voice_expert import default_model_dir as voice_model_dir
from erc_ros.runtime.senses import (EPS, FUSION_FILE, KIND, SENSES, SpeakerBaselines,
                                    readings_of)
from erc_ros.synth.faces import face_image
from erc_ros.training.provenance import provenance
from erc_ros.training.senses import (FITTED, GROUPS, Row, class_order, fit, meld_rows,
                                     meld_voice_rows, ravdess_rows, report, table,
                                     voice_out_of_fold)

#: ``--min-familiar-share``'s default.
MIN_FAMILIAR_SHARE = 1 / 3
#: Bumped when the spoken MELD rows would come out differently.
ROWS_VERSION = 2  # 2: the voice expert's unfamiliar utterances counted


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
    p.add_argument("--senses", default="text,voice",
                   help="the senses the fusion weighs (comma-separated; text and any of voice, "
                        "face; the others are reported beside the label). Default text,voice: "
                        "through the robot's camera path the face expert's reading of talking "
                        "faces costs spoken MELD 2-9 points of weighted F1 whatever the "
                        "weights (docs/fusion.md)")
    p.add_argument("--meld", choices=("spoken", "text"), default="spoken",
                   help="MELD dev's readings: spoken (bench-spoken --voices kokoro stage (d): "
                        "the recognizer's words, the portrait faces as the core cuts and the "
                        "expert reads them, the voices; ~12 min once, then cached) or text "
                        "(the gold text, each speaker's portrait read once: seconds)")
    p.add_argument("--fit-on", default=",".join(FITTED),
                   help="the compositions the fusion learns from (comma-separated; default "
                        f"{','.join(FITTED)}: learned from, meld+voices cost RAVDESS voices "
                        "heard through the nodes up to 4.9 points, docs/fusion.md); the others "
                        "are still scored on their check half")
    p.add_argument("--model-id", default="", help="the fusion's model_id (default "
                   "senses-YYYYMMDD)")
    p.add_argument("--l2", type=float, default=1e-3)
    p.add_argument("--floor", type=float, default=0.1,
                   help="each sense's probabilities held at least this high before pooling, "
                        f"from {EPS} (default 0.1: lower, the words of a neutral sentence veto "
                        "what a voice hears, docs/fusion.md)")
    p.add_argument("--min-familiar-share", type=float, default=MIN_FAMILIAR_SHARE,
                   help="a voice weighs in while its expert has found at least this share of "
                        "the conversation's voices familiar, this one included (default 1/3: "
                        "of spoken MELD's synthetic voices it calls 98 %% unfamiliar, and the "
                        "few it reads change the label, from right to wrong on most; real "
                        "voices through the nodes were at 1/2 or more; 0: always, "
                        "docs/fusion.md)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)


def process_settings(args) -> dict:
    return {"torch_threads": args.threads}


def spoken_meld_rows(pipeline, csv_path: Path, progress: bool = True) -> list[Row]:
    """MELD dev as ``bench-spoken --voices kokoro`` stage (d) hears it, each sense read by the
    nodes' assembly path (embedded recognizer, diarization, the portrait faces the spoken
    bags show, the experts): a row per labelled turn that an estimate answers, with that
    estimate's readings (a merged turn shares its estimate's). Kept in the cache."""
    p = argparse.ArgumentParser()
    spoken.add_arguments(p)
    a = p.parse_args(["--json", "-"])
    bags = spoken_bags(csv_path, a, None, a.seed, None, progress)
    # what the readings depend on: the bags, the text model, the core's settings as they
    # take effect (code defaults included) and the experts' manifests
    over, file = eval_bag.perception_overrides(a.config, tuple(a.set))
    cfg = perception_config(over, file, asr_type="embedded", offline=True)
    experts = [Path(cfg.faces.expression_model or face_model_dir()),
               Path(cfg.voice.model or voice_model_dir())]
    experts = [sha256_file(d / "manifest.json") if (d / "manifest.json").is_file() else str(d)
               for d in experts]
    settings = asdict(cfg)
    key = hashlib.sha256(json.dumps([str(b["bag"]) for b in bags] + [
        pipeline.model_id, settings, experts, ROWS_VERSION], default=str).encode())
    cache = cache_root() / "senses" / f"spoken-meld-{key.hexdigest()[:16]}.pkl"
    if cache.is_file():
        with open(cache, "rb") as f:
            return pickle.load(f)
    order = class_order(pipeline.class_names)
    rows, made = [], None
    for item in tqdm(bags, desc="spoken MELD dev, stage (d)", unit="dialogue",
                     disable=not progress, mininterval=2.0):
        pipeline.reset()
        core = made = eval_bag.make_core(a.config, tuple(a.set), pipeline,
                                         asr_type="embedded", reuse=made)
        try:
            res = replay_bag(item["bag"], core, pipeline)
        finally:
            core.close()
        base = SpeakerBaselines()
        readings = [readings_of(order, base, e.speaker_id, e.text_probabilities,
                                e.voice_probabilities, e.face_probabilities,
                                e.voice_reason == VOICE_UNFAMILIAR)
                    for e in res.estimates]
        of = {id(e): r for e, r in zip(res.estimates, readings)}
        turns = [t for t in gold_turns(item["bag"]) if t["label"]]
        pairs, _ = assign(turns, res.estimates)
        part = "fit" if int(item["dialogue"][3:]) % 2 == 0 else "check"
        for t, (_, e) in zip(turns, pairs):
            if e is not None and of[id(e)]:
                rows.append(Row("meld", part, FACE_CLASSES.index(t["label"].lower()),
                                of[id(e)]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    with open(cache, "wb") as f:
        pickle.dump(rows, f)
    return rows


def run(args) -> int:
    t0 = time.time()
    fit_on = tuple(g.strip() for g in args.fit_on.split(",") if g.strip())
    if not fit_on or set(fit_on) - set(GROUPS):
        raise SystemExit(f"error: --fit-on {args.fit_on}: some of {', '.join(GROUPS)}")
    senses = tuple(s.strip() for s in args.senses.split(",") if s.strip())
    if set(senses) - set(SENSES) or "text" not in senses:
        raise SystemExit(f"error: --senses {args.senses}: text and any of voice, face")
    if not EPS <= args.floor < 1.0 / len(FACE_CLASSES):
        raise SystemExit(f"error: --floor {args.floor}: from {EPS} to below "
                         f"1/{len(FACE_CLASSES)}")
    if not 0.0 <= args.min_familiar_share <= 1.0:
        raise SystemExit(f"error: --min-familiar-share {args.min_familiar_share}: from 0 to 1")
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
    meld = root / "meld" / "dev_sent_emo.csv"
    if args.meld == "spoken":
        _log("MELD dev spoken by Kokoro voices, through the nodes' assembly path")
        rows = spoken_meld_rows(pipeline, meld)
    else:
        _log("MELD dev's gold text, each speaker's portrait face")
        portraits = {i: expert.predict([face_image(i)])[0] for i in range(8)}
        rows = meld_rows(pipeline, meld, lambda i: portraits[i % len(portraits)])
    _log("RAVDESS's sentences read by the text model")
    rows += ravdess_rows(pipeline, voice, (fp, fl, fpart), args.turns, args.seed)
    _log("MELD dev's words with RAVDESS voices of their labels")
    rows += meld_voice_rows(pipeline, meld, voice, args.seed)
    fit_rows = [r for r in rows if r.part == "fit" and r.group in fit_on]
    check_rows = [r for r in rows if r.part == "check"]
    _log(f"{len(fit_rows)} turns to fit on ({', '.join(fit_on)}), {len(check_rows)} to check "
         "on")
    held = fit(fit_rows, args.l2, senses, args.floor, args.min_familiar_share)
    rep = report(held, check_rows)
    _log("fitted on one part, scored on the other (RAVDESS actors 16-18, FER faces of odd "
         "index, MELD dialogues of odd number):\n" + table(rep))
    final = fit([r for r in rows if r.group in fit_on], args.l2, senses, args.floor,
                args.min_familiar_share)
    final.text_model_id = pipeline.model_id
    out = {"text_model": pipeline.model_id, "fit_on": list(fit_on), "held_out": rep,
           "held_out_fusion": held.to_dict(),
           "fusion": final.to_dict(), "turns": {"fit": len(fit_rows), "check": len(check_rows)},
           "l2": args.l2, "floor": args.floor,
           "min_familiar_share": args.min_familiar_share, "seed": args.seed,
           "minutes": round((time.time() - t0) / 60, 1)}
    if args.out:
        o = Path(args.out)
        o.mkdir(parents=True, exist_ok=True)
        (o / FUSION_FILE).write_text(json.dumps(final.to_dict(), indent=1) + "\n")
        prov = provenance(
            args, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            data={"compositions": {g: sum(r.group == g for r in rows) for g in fit_on},
                  "meld": args.meld,
                  "sources": ["MELD dev (spoken by Kokoro voices, stage (d), or its gold "
                              "text: meld)", "RAVDESS speech, 18 actors (voice, out of fold)",
                              "MELD dev's gold text with RAVDESS voices of its labels "
                              "(meld+voices)",
                              "FER2013 public_test (faces)"],
                  "licence": [RAVDESS_LICENCE]},
            l2=args.l2, floor=args.floor, min_familiar_share=args.min_familiar_share,
            seed=args.seed, senses=list(senses))
        write_manifest(o, {"format_version": 1, "kind": KIND,
                           "model_id": args.model_id or f"senses-{time.strftime('%Y%m%d')}",
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
