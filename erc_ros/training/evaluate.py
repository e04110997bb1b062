"""`python -m erc_ros evaluate`: score a model directory on a MELD-format CSV.

    python -m erc_ros evaluate --format meld --csv FILE --model DIR --json OUT

Writes OUT (JSON: ``accuracy``, ``weighted_f1``, ``macro_f1`` in %, ``per_class_f1``,
``confusion`` (rows = true, columns = predicted), ``support``, model id, CSV sha256) and a
confusion-matrix PNG beside it, and prints a summary. Each dialogue is scored utterance by
utterance with past context only, as the robot sees it (``--future-context`` for offline
scoring). ``--backend torch`` (default) runs the model's stages directly in PyTorch; any other
value (``auto``, ``onnxruntime``, ...) goes through ``erc_ros.runtime.pipeline.EmotionPipeline``,
the path the robot runs.

``--media DIR`` scores a model with its media, as the robot sees them: each utterance's clip
(MELD.Raw ``dia{D}_utt{U}.mp4``: DIR is the split's folder, or the MELD.Raw folder holding
it) is read by the same code as ``train --recipe multimodal`` (faces detected and cropped as
the perception core does, 16 kHz audio, the diarization embedding; cached in
``<cache>/media``) with the perception settings the model was trained with, one dialogue at
a time. ``--drop audio`` / ``--drop video`` scores it with that modality removed, so each
sense's share is measured, not assumed. ``--workers N`` (or ``--ray-address``) reads the
clips as Ray tasks into that cache first (:meth:`~erc_ros.training.media.MediaReader.read_on_ray`),
the same features as read here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from erc_ros import jobs
from erc_ros.datasets import emorynlp, meld, robot_views
from erc_ros.models.artefact import load_model_dir, read_manifest, sha256_file
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.training.media import MediaReader, prefetch_on_ray
from erc_ros.training.metrics import NO_PREDICTION, plot_confusion, scores


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="meld", choices=["meld", "emorynlp"])
    p.add_argument("--csv", required=True, help="MELD-format CSV (Utterance, Speaker, Emotion, "
                   "Dialogue_ID, Utterance_ID, ...)")
    p.add_argument("--model", required=True, help="model directory (e.g. models/default)")
    p.add_argument("--json", required=True, help="where to write the metrics JSON")
    p.add_argument("--png", help="confusion-matrix PNG (default: the JSON path with .png)")
    p.add_argument("--backend", default="torch",
                   help="'torch' (stages in PyTorch) or an EmotionPipeline backend name")
    p.add_argument("--future-context", action="store_true",
                   help="also show the following utterances (offline scoring, not live)")
    p.add_argument("--robot-view", default="", metavar="VIEWS",
                   help="score the text as a robot could at best have it: comma-separated "
                        "'speakers' (each dialogue's speakers as speaker_0, speaker_1, ...: "
                        "no names), 'exclamations' (every '!' read as '.'), 'all' (those "
                        "two) and 'sentences' (each turn cut after every sentence as the "
                        "node cuts it, scored once, on its longest piece)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit-dialogues", type=int, default=0)
    p.add_argument("--media", help="MELD.Raw clips (the split's folder of dia*_utt*.mp4, or the "
                   "MELD.Raw folder holding it): score with audio and faces as the robot "
                   "reads them")
    p.add_argument("--drop", action="append", default=[], choices=["audio", "video"],
                   help="with --media: remove this modality from every utterance (repeatable)")
    p.add_argument("--perception", action="append", default=None, metavar="SECTION.FIELD=VALUE",
                   help="with --media: a perception setting to read the clips with (default: "
                   "the ones the model was trained with, from its provenance)")
    jobs.add_arguments(p, "with --media: read the clips (decode, faces, voice features)")


def evaluate_dialogues(model, dialogues, future_context: bool = False, progress: bool = True,
                       total=None):
    """(true labels, predicted labels, probabilities) over the labelled utterances."""

    y_true, y_pred, probs = [], [], []
    for d in tqdm(dialogues, desc="dialogues", disable=not progress, total=total):
        p = model.predict_dialogue(d.utterances, future_context=future_context)
        for y, row in zip(d.labels, p):
            if y >= 0:
                y_true.append(y)
                y_pred.append(int(np.argmax(row)))
                probs.append(row)
    return y_true, y_pred, probs


def _pipeline_predictions(model_dir, backend, threads, dialogues, label_names, total=None):

    pipe = EmotionPipeline.from_model_dir(model_dir, backend=backend, threads=threads,
                                          prepare=True)  # a CLI: it may build
    index = {k: i for i, k in enumerate(pipe.class_names)}
    y_true, y_pred = [], []
    for d in tqdm(dialogues, desc=f"dialogues ({pipe.backend_name})", total=total):
        pipe.reset(d.conversation_id)
        for u, y in zip(d.utterances, d.labels):
            est = pipe.predict(u)
            if y >= 0:
                y_true.append(y)
                # an estimate without a label (nothing the model reads) is wrong
                y_pred.append(index.get(est.label, NO_PREDICTION))
    return y_true, y_pred, pipe.model_id


def clips_folder(media: str | Path, csv: str | Path) -> Path:
    """The folder of ``csv``'s clips: ``media`` itself when it holds ``dia*_utt*`` clips, else
    the MELD.Raw split folder under it for the CSV's split (train / dev / test by name)."""
    media = Path(media)
    if not media.is_dir():
        raise SystemExit(f"error: --media {media}: no such folder")
    if next(media.glob("dia*_utt*.mp4"), None) or next(media.glob("dia*_utt*.wav"), None):
        return media
    name = Path(csv).name.lower()
    for split in meld.MELD_SPLIT_DIRS:
        if name.startswith(split):
            found = meld.meld_split_dir(media, split)
            if found is not None:
                return found
    raise SystemExit(f"error: --media {media}: no dia*_utt*.mp4 clips there, nor in a MELD.Raw "
                     f"split folder for {Path(csv).name} ({', '.join(sum(meld.MELD_SPLIT_DIRS.values(), ()))})")


def with_media(dialogues, reader, drop=()):
    """Each dialogue with its utterances' media attached (one dialogue in memory at a time:
    they are removed again once the caller moves on), minus the ``drop``ped modalities."""

    for d, medias in reader.iter_dialogues(dialogues, desc="clips"):
        for u, m in zip(d.utterances, medias):
            if m is not None:
                m.attach(u)
            if "audio" in drop:
                u.audio = np.zeros(0, np.float32)
            if "video" in drop:
                u.faces = []
        yield d
        for u in d.utterances:
            u.audio, u.faces = np.zeros(0, np.float32), []
            u.features.pop("speaker_embedding", None)


def read_on_ray(reader, dialogues, args) -> dict:
    """``--workers`` / ``--ray-address``: the clips read into the cache as Ray tasks first."""
    try:
        return prefetch_on_ray(reader, dialogues, args.workers, args.ray_address)
    except RuntimeError as e:  # Ray not installed
        raise SystemExit(f"error: {e}") from e


def _media_reader(args, manifest: dict):
    """A MediaReader with ``--perception``, else the settings the model was trained with;
    says so when the clips will be read otherwise than in training."""
    from erc_ros.training.multimodal_stage import perception_config

    prov = manifest.get("provenance") or {}
    trained_with = (prov.get("recipe") or {}).get("perception")
    pairs = args.perception if args.perception is not None else list(trained_with or [])
    reader = MediaReader(perception_config(pairs), progress=False)
    train_key = ((prov.get("media") or {}).get("train") or {}).get("settings_sha256")
    if train_key and train_key != reader.settings_key:
        print("warning: the clips are read with other perception settings than the model "
              f"was trained with ({pairs} vs {trained_with}): scores may not be the robot's",
              file=sys.stderr)
    return reader


def run(args) -> int:

    manifest = read_manifest(args.model)
    labels = manifest["label_names"]
    if (args.drop or args.perception is not None or jobs.wanted(args)) and not args.media:
        raise SystemExit("error: --drop, --perception, --workers and --ray-address read "
                         "media: give --media DIR")
    if args.media and args.format != "meld":
        raise SystemExit(f"error: --media reads MELD.Raw clips; --format {args.format} has none")
    folder = clips_folder(args.media, args.csv) if args.media else None
    if folder is not None:
        dialogues = meld.load_meld(args.csv, folder, labels=labels)
    else:
        loader = meld.load_meld if args.format == "meld" else emorynlp.load_emorynlp
        dialogues = loader(args.csv, labels=labels)
    if args.limit_dialogues:
        dialogues = dialogues[: args.limit_dialogues]
    views: list[str] = []
    if args.robot_view:
        names = [v.strip() for v in args.robot_view.split(",") if v.strip()]
        views = [w for v in names for w in (robot_views.ROBOT_VIEWS if v == "all" else [v])]
        try:
            dialogues = robot_views.robot_view(dialogues, views, labelled="longest")
        except ValueError as e:
            raise SystemExit(f"error: --robot-view: {e}")
    n = len(dialogues)
    reader = _media_reader(args, manifest) if args.media else None
    config = manifest.get("config") or {}
    trained = config.get("trained_modalities")  # None: every modality with an encoder
    uses = [m for m in ("audio", "video")
            if (m in trained if trained is not None else bool(config.get(m)))]
    if uses and not args.media:
        print(f"note: the model was trained with {' and '.join(uses)}; without --media it is "
              "scored on the text alone", file=sys.stderr)
    ray_counts = None
    if reader is not None and jobs.wanted(args):
        ray_counts = read_on_ray(reader, dialogues, args)
    streamed = with_media(dialogues, reader, args.drop) if reader else dialogues
    t0 = time.time()
    if args.backend == "torch":
        model = load_model_dir(args.model)
        y_true, y_pred, _ = evaluate_dialogues(model, streamed, args.future_context, total=n)
        model_id = model.config.model_id
    else:
        y_true, y_pred, model_id = _pipeline_predictions(args.model, args.backend, args.threads,
                                                         streamed, labels, total=n)
    s = scores(y_true, y_pred, labels)
    s.update(model_id=model_id, model_dir=str(args.model), csv=str(args.csv),
             csv_sha256=sha256_file(args.csv), backend=args.backend,
             future_context=bool(args.future_context), robot_view=views,
             seconds=round(time.time() - t0, 1))
    if reader is not None:
        s["media"] = dict(reader.summary(), folder=str(folder),
                          dropped=sorted(set(args.drop)), on_ray=ray_counts)
        reader.report("media")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(s, indent=2) + "\n")
    png = Path(args.png) if args.png else out.with_suffix(".png")
    seen = f" as a robot has it ({', '.join(views)})" if views else ""
    plot_confusion(s["confusion"], labels, png,
                   f"{model_id} on {Path(args.csv).name}{seen}: wF1 {s['weighted_f1']} acc {s['accuracy']}")
    print(f"{model_id} on {args.csv}{seen} ({s['n']} utterances, {args.backend}): weighted F1 "
          f"{s['weighted_f1']}  accuracy {s['accuracy']}  macro F1 {s['macro_f1']}")
    print("per-class F1: " + ", ".join(f"{k} {v}" for k, v in s["per_class_f1"].items()))
    print(f"wrote {out} and {png}", file=sys.stderr)
    return 0
