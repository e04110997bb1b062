"""`python -m erc_ros train`: train a model directory from a recipe.

    python -m erc_ros train --recipe default --out models/default

Recipes (``RECIPES``) fix every choice; command-line flags override a few for ablations
(``--past-context``, ``--class-weight-power``, ``--self-distill``, ``--epochs``, ...). Stage 1
fine-tunes the prompt text encoder end to end with the concat head (:mod:`text_stage`), in
cycles (warm restarts, optionally distilled from ``--teacher`` models or the previous
cycle); a recipe's ``fusion_stage`` then fits a fresh head over the encoder's cached vectors
(:mod:`fusion_stage`). The saved model uses text only (``trained_modalities``): MELD here has
no audio/video to train those branches. ``--recipe multimodal --media DIR`` trains them over a
trained text model from the user's MELD.Raw or IEMOCAP media (:mod:`multimodal_stage`,
docs/multimodal.md).
The output directory is self-describing (see :mod:`erc_ros.models.artefact`), with dev
metrics and the data sha256s in its provenance, a ``train_log.json`` and a dev
confusion-matrix PNG.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from erc_ros.training.deployed import SELECT_RULES

RECIPES = {
    # The shipped model: packaged MiniLM-L6, fine-tuned on the context prompt, distilled
    # (on MELD) from the shipped teacher models/large: its logits (KD 0.5 at temperature 2)
    # and its text vectors (feature distillation 1.0), both computed once and cached. Every
    # layer trains (only the word embeddings stay frozen): with two frozen, the same
    # distillation gave 59.65 on MELD dev, without any 59.95 (docs/results.md).
    "default": dict(
        encoder="minilm", pooling="mask", past_context=4, max_length=128,
        epochs=2, batch_size=16, lr=6e-5, head_lr=1e-3, warmup=0.06,
        class_weight_power=0.25, label_smoothing=0.0, ema_decay=0.999, self_distill=0.0,
        freeze_word_embeddings=True, freeze_layers=0, audio=True, video=True, seed=13,
        distill_from={"meld": ["large"]}, feature_distill=1.0,
        # Then short cycles (warm restarts at a lower rate; a cycle's weights are kept only
        # if dev improves): one more toward the teacher, then one distilled from the model as
        # it stands (born-again; the teacher's vectors still in the loss).
        then=[dict(epochs=1, lr=2e-5, warmup=0.0),
              dict(epochs=1, lr=2e-5, warmup=0.0, seed=7, distill=0.5, teacher="previous")],
        # Stage 2: fresh concat heads over the fine-tuned encoder's cached [MASK] vectors,
        # one per head seed (the best kept; their mean judges a round), class weights
        # (n/n_c)^0.375: over the 61.28 model's encoder the mean of five head seeds peaks
        # there, in FP32 (61.51; p=0.5, which made that model, 61.27) and in INT8
        # (docs/results.md, "Stage-2 class weights").
        fusion_stage=dict(head="concat", class_weight_power=0.375, epochs=12, head_seeds=5),
        # What keeps a stage-2 epoch, a stage-2 head and a round: the worse of the dev
        # weighted F1 of the FP32 model and of its ONNX Runtime INT8 copy, what the nodes run
        # on a CPU (training/deployed.py). Selected on FP32 alone, a round kept at 61.78
        # scored 60.84 in INT8.
        select="fp32+int8",
        # Then rounds over the finished model: the cycle toward the teacher again, from the
        # encoder and head as they stand, then a fresh stage 2; each round is kept only if
        # that beats the model before it on dev. MELD dev 60.73 after stage 2, then rounds
        # 61.10 / 61.28 kept, the third 61.21 undone (p=0.5, FP32 selection; a born-again
        # round from 61.10 gave 60.60: rounds distil from the teacher). Over the 61.28
        # model, with p=0.375, five head seeds and the rule above, kept by the heads' mean:
        # 61.24 and 60.93 undone, then 61.58 (from 61.27) kept: the shipped model's encoder
        # (its best head 61.85 FP32, 61.68 INT8 through the nodes). About 11 min a round. A
        # round after an undone one takes the next seed (the same one would repeat it).
        rounds=[dict(epochs=1, lr=2e-5, warmup=0.0)] * 3),
    # The teacher (models/large): packaged all-mpnet-base-v2 (110M, RoBERTa-base size; `make
    # setup-train`). The bottom 10 of 12 layers stay frozen and run once per prompt (cached);
    # the top two layers and the head train, 3 epochs on the corpus.
    # Measured and left out (MELD dev, docs/results.md): a GoEmotions stage first (one
    # epoch over a class-capped subset, `--goemotions stage`: 60.81 against 62.12 without),
    # a warm restart after epoch 3 (2 epochs at 3e-5: 59.72, 59.99) and a stage-2 head refit
    # over the teacher's vectors (60.69: its top already fits the training set, loss 0.16).
    "teacher": dict(
        encoder="mpnet", pooling="mask", past_context=4, max_length=128,
        epochs=3, batch_size=16, lr=8e-5, head_lr=1e-3, warmup=0.06,
        class_weight_power=0.25, label_smoothing=0.0, ema_decay=0.0, self_distill=0.0,
        freeze_word_embeddings=True, freeze_layers=10, cache_frozen=True,
        audio=False, video=False, seed=13,
        goemotions=dict(mode="off", per_class=2000, epochs=1)),
    # The reference "plain recipe" of the issue (previous 4 utterances, 3 epochs, no extras).
    "plain": dict(
        encoder="minilm", pooling="mask", past_context=4, max_length=128,
        epochs=3, batch_size=16, lr=4e-5, head_lr=4e-5, warmup=0.0,
        class_weight_power=0.0, label_smoothing=0.0, ema_decay=0.0, self_distill=0.0,
        freeze_word_embeddings=False, freeze_layers=0, audio=False, video=False, seed=13),
    # The audio and video branches over a trained text model (--init, default models/default;
    # its text encoder frozen), from the user's MELD.Raw or IEMOCAP media (--media):
    # erc_ros.training.multimodal_stage. The encoders and the head train together; lr is
    # the head's (the encoders' too), modality dropout 0.3, class weights (n/n_c)^0.5.
    # audio_dim / video_dim: the encoders' widths where the init model has none.
    "multimodal": dict(
        stage="multimodal", epochs=15, batch_size=8, lr=5e-4, modality_dropout=0.3,
        class_weight_power=0.5, audio_dim=64, video_dim=64, seed=13),
    # A face-expression expert for 48x48 grey faces (erc_ros.training.face_stage): a VGG-style
    # CNN trained from scratch on --faces (default FER2013 train), chosen on --faces-dev
    # (default FER2013 public_test), SGD + Nesterov, cosine, label smoothing, camera-like
    # augmentation. The rest: FaceStageConfig's defaults. FP32: on the 2-core AMX Xeon here
    # a step of 64 faces took 1.4 s in FP32 and 2.6 s under bf16 autocast (docs/faces.md).
    "face": dict(stage="face", epochs=30, batch_size=64, lr=0.02, seed=13, precision="fp32"),
    # Tests: the same with a tiny network.
    "face-tiny": dict(stage="face", epochs=1, batch_size=8, lr=0.05, seed=13, warmup_epochs=0,
                      net=dict(channels=(8, 16), convs_per_stage=1, hidden=0, dropout=0.0)),
    # Tests: a tiny random BERT over the MiniLM vocabulary.
    "tiny": dict(
        encoder="tiny", pooling="mask", past_context=2, max_length=48,
        epochs=1, batch_size=8, lr=1e-3, head_lr=1e-3, warmup=0.1,
        class_weight_power=0.0, label_smoothing=0.0, ema_decay=0.9, self_distill=0.5,
        freeze_word_embeddings=False, freeze_layers=0, audio=True, video=True, seed=13),
}


#: --robot-view-copy's copies: the share of the dialogues whose copy keeps the speakers' names,
#: and the cuts of the robot's own (data.CUT_VIEWS) it makes.
ROBOT_COPIES = {"tags": (0.0, ()), "names": (1.0, ()), "mixed": (0.5, ()),
                "sentences": (0.0, ("sentences",))}
COPY_HELP = {"tags": "speaker_N", "names": "speakers' names", "mixed": "half with names",
             "sentences": "speaker_N, one utterance a sentence"}


def _copies(value: str) -> str:
    """An argparse type: --robot-view-copy's comma list, each name of ROBOT_COPIES once."""
    names = [c.strip() for c in value.split(",") if c.strip()]
    bad = sorted(set(names) - set(ROBOT_COPIES)) or ([] if names else [value])
    if bad or len(set(names)) < len(names):
        raise argparse.ArgumentTypeError(
            f"a comma list of {', '.join(ROBOT_COPIES)}, each once; got {value!r}")
    return ",".join(names)


def _number(kind, lo=None, hi=None, lo_open=False):
    """An argparse type: ``kind`` (int or float) within [lo, hi] (``lo_open``: lo excluded),
    so that an out-of-range flag is a usage error naming the flag, not a silent no-op or a
    failure an hour into training."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n' if kind is int else ''} "
                                             f"{kind.__name__}") from None
        if v != v or (lo is not None and (v <= lo if lo_open else v < lo)) or \
                (hi is not None and v > hi):
            rng = f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, " \
                  f"{'inf' if hi is None else hi}]"
            raise argparse.ArgumentTypeError(f"{text} is outside {rng}")
        return v
    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recipe", default="default", choices=sorted(RECIPES))
    p.add_argument("--out", required=True, help="output model directory")
    p.add_argument("--format", default="meld", choices=["meld", "emorynlp", "iemocap"])
    p.add_argument("--train", help="training CSV (default: $ERC_ROS_DATA/meld/train_sent_emo.csv)")
    p.add_argument("--dev", help="dev CSV for selection (default: MELD dev)")
    p.add_argument("--iemocap-root", help="IEMOCAP_full_release folder (--format iemocap)")
    p.add_argument("--encoder", help="'minilm' (packaged), 'tiny', or a local checkpoint dir")
    p.add_argument("--past-context", type=_number(int, 0))
    p.add_argument("--max-length", type=_number(int, 8))
    p.add_argument("--freeze-layers", type=_number(int, 0),
                   help="freeze the embeddings and the first N encoder layers (0: only the "
                        "word embeddings); a new model only, not with --init")
    p.add_argument("--epochs", type=_number(int, 1))
    p.add_argument("--lr", type=_number(float, 0, lo_open=True))
    p.add_argument("--class-weight-power", type=_number(float, 0))
    p.add_argument("--self-distill", type=_number(float, 0, 1))
    p.add_argument("--distill", type=_number(float, 0, 1),
                   help="weight of KD toward --teacher models' mean prediction (0-1)")
    p.add_argument("--feature-distill", type=_number(float, 0),
                   help="weight of feature distillation toward the --teacher models' text "
                        "vectors (cosine hint + relational, losses.feature_distillation)")
    p.add_argument("--teacher", action="append", default=[],
                   help="trained model directory to distill from (repeat for an ensemble); "
                        "'large' = the shipped teacher models/large; 'none' = no teacher, "
                        "whatever the recipe names")
    p.add_argument("--goemotions", choices=["recipe", "off", "stage", "mix"], default="recipe",
                   help="GoEmotions use: the recipe's, none, a first stage on it, or mixed "
                        "into the training data (ablations)")
    p.add_argument("--seed", type=int)
    p.add_argument("--select", choices=SELECT_RULES,
                   help="what keeps a stage-2 epoch, a stage-2 head and a round: the dev "
                        "weighted F1 of the PyTorch FP32 model, or the worse of that and its "
                        "ONNX Runtime INT8 copy's (what the nodes run on a CPU)")
    p.add_argument("--max-steps", type=_number(int, 0), default=0, help="stop after N steps (smoke runs)")
    p.add_argument("--max-minutes", type=_number(float, 0), default=0.0,
                   help="stop training after this long, evaluate and keep the best")
    p.add_argument("--limit-dialogues", type=_number(int, 0), default=0, help="use only N dialogues")
    p.add_argument("--threads", type=_number(int, 1), default=2)
    p.add_argument("--model-id", default="")
    p.add_argument("--fp32", action="store_true", help="store float32 weights (default fp16)")
    p.add_argument("--init", help="start from this model directory's weights (resume); "
                   "--recipe multimodal: the text model to add audio and video to "
                   "(default: the shipped models/default)")
    p.add_argument("--media", help="--recipe multimodal: the MELD.Raw folder (train_splits/, "
                   "dev_splits_complete/ of dia{D}_utt{U}.mp4) or, with --format iemocap, the "
                   "IEMOCAP root (docs/multimodal.md)")
    p.add_argument("--perception", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="--recipe multimodal: a perception parameter the robot runs with "
                   "other than its default (e.g. faces.detect_width=512), so training reads "
                   "the media as the robot will (repeat for several)")
    from erc_ros import jobs
    jobs.add_arguments(p, "--recipe multimodal: read the clips (decode, faces, voice features)")
    from erc_ros.training import face_stage
    face_stage.add_arguments(p)
    p.add_argument("--cycle", type=_number(int, 1), default=1,
                   help="first training cycle to run (2 = from the recipe's second cycle; "
                   "its rounds number on after its cycles; past the last, with --init: only "
                   "the fusion stage over the init model)")
    p.add_argument("--cycles", type=_number(int, 0), default=0,
                   help="run at most this many of the recipe's cycles and rounds (0 = all; "
                        "ablations compare single cycles)")
    p.add_argument("--robot-view-copy", nargs="?", const="tags", default=None,
                   type=_copies, metavar="COPIES",
                   help="train on each dialogue also as a robot could at best have it, every "
                        "'!' read as '.': one copy per name of the comma list, 'tags' "
                        "(speakers as speaker_0, ...: strangers; the default), 'names' "
                        "(names kept: a household the robot knows by voice), 'mixed' (each "
                        "dialogue one of the two, half each, drawn with --seed) or 'sentences' "
                        "(as 'tags', each turn cut after every sentence as the node cuts it, "
                        "every piece with its turn's label)")
    p.add_argument("--heard", action="append", default=[], metavar="CSV",
                   help="also train on these MELD-format files of what the robot heard "
                        "(heard-set: the recognizer's words, diarization's speaker_N, each "
                        "piece labelled by the gold turn it overlaps most; unlabelled pieces "
                        "are context only), added as they are, after any --robot-view-copy "
                        "(they are the robot's view already); dev is not touched")
    p.add_argument("--keep-rounds", action="store_true",
                   help="keep every round, and the refitted head of a run past the last "
                        "cycle, whatever dev says (the rule still reports it, against the "
                        "init's recorded figure: its heads are not refitted first): for arms "
                        "scored on other data, e.g. bench-spoken --rescore")


def _datasets(args, recipe):
    from erc_ros.training import data

    root = data.data_root()
    if args.format == "meld":
        tr = Path(args.train or root / "meld" / "train_sent_emo.csv")
        dv = Path(args.dev or root / "meld" / "dev_sent_emo.csv")
        return data.load_meld(tr), data.load_meld(dv), data.MELD_LABELS, [tr, dv]
    if args.format == "emorynlp":
        tr = Path(args.train or root / "emorynlp" / "emorynlp_train_final.csv")
        dv = Path(args.dev or root / "emorynlp" / "emorynlp_dev_final.csv")
        return data.load_emorynlp(tr), data.load_emorynlp(dv), data.EMORYNLP_LABELS, [tr, dv]
    if not args.iemocap_root:
        raise SystemExit("--format iemocap needs --iemocap-root")
    d = data.load_iemocap(args.iemocap_root)
    return ([x for x in d if not x.conversation_id.startswith("iemocap-Ses05")],
            [x for x in d if x.conversation_id.startswith("iemocap-Ses05")],
            data.IEMOCAP6_LABELS, [])


def _heard(paths: list[str], fmt: str) -> list:
    """--heard's dialogues: each file read as MELD (``heard-set`` writes that format), its
    conversations named after the file and its place in the list, so that they never share
    an id with MELD's own or another file's. Read before the corpus, so that a bad file is
    refused first."""
    import csv

    from erc_ros.training import data

    if paths and fmt != "meld":  # heard-set speaks and hears MELD
        raise SystemExit(f"error: --heard is MELD text heard by the robot: not for --format "
                         f"{fmt}")
    out = []
    for i, f in enumerate(paths):
        if not Path(f).is_file():
            raise SystemExit(f"error: --heard {f}: no such file")
        try:
            d = data.load_meld(f, split=f"heard{i}-{Path(f).stem}")
        except (KeyError, ValueError, csv.Error) as e:
            raise SystemExit(f"error: --heard {f}: not a MELD-format CSV ({e!r})") from None
        labelled = sum(lab >= 0 for x in d for lab in x.labels)
        if not labelled:
            raise SystemExit(f"error: --heard {f}: no utterance has a MELD emotion label")
        print(f"heard: {len(d)} dialogues, {labelled} labelled utterances from {f}",
              file=sys.stderr)
        out += d
    return out


#: GoEmotions use when a recipe names none and ``--goemotions`` asks for it: a subset of at
#: most 2000 comments per class (all of the rare ones), one epoch when it is a stage.
GOEMOTIONS_DEFAULT = dict(mode="off", per_class=2000, epochs=1)


def _goemotions(args, r: dict, labels) -> tuple[str, list, list]:
    """(mode, dialogues, files) of the GoEmotions use (``goemotions`` in the recipe, or
    ``--goemotions``): a class-capped, seeded subset of its train split."""
    import random

    from erc_ros.training import data

    spec = dict(GOEMOTIONS_DEFAULT, **(r.get("goemotions") or {}))
    mode = spec.get("mode", "off") if args.goemotions == "recipe" else args.goemotions
    if mode == "stage" and args.init:  # the stage comes first: the init model had its turn
        print("GoEmotions stage: skipped, the run continues from --init", file=sys.stderr)
        mode = "off"
    if mode == "off":
        return mode, [], []
    f = data.data_root() / "goemotions_ekman" / "train.tsv"
    d = data.load_goemotions(f, labels)
    cap = int(spec.get("per_class", 0))
    if cap:
        rng = random.Random(r["seed"])
        rng.shuffle(d)
        seen: dict[int, int] = {}
        keep = []
        for x in d:
            seen[x.labels[0]] = seen.get(x.labels[0], 0) + 1
            if seen[x.labels[0]] <= cap:
                keep.append(x)
        d = keep
    if args.limit_dialogues:
        d = d[: 4 * args.limit_dialogues]
    print(f"GoEmotions ({mode}): {len(d)} comments, per class "
          f"{data.class_counts(d, len(labels)).tolist()}", file=sys.stderr)
    return mode, d, [f]


def resolve_teachers(names) -> list[str]:
    """Teacher model directories from ``--teacher`` values (or a recipe's ``distill_from``):
    a path, ``large`` (the shipped ``models/large``) or ``none`` (no teacher at all)."""
    from erc_ros.paths import share_path

    if "none" in names:
        return []
    out = []
    for n in names:
        if n == "large":
            d = share_path("models", "large")
            if d is None:
                raise SystemExit("error: --teacher large: no models/large in this checkout or "
                                 "install")
            n = str(d)
        out.append(n)
    return out


def cached_teacher_logits(teacher_dirs, parts, labels, features: bool = False):
    """The teachers' logits over the training dialogues (``parts``: lists of dialogues, e.g.
    MELD and GoEmotions, concatenated in order), computed once and kept in the cache, keyed by
    the teachers' manifest sha256s and the training utterances (ids, texts, labels). Each
    teacher runs over whole dialogues, past only, as ``evaluate`` scores it. The same pass
    caches the teachers' text vectors (float16); ``features`` returns (logits, vectors)."""
    import hashlib

    import numpy as np

    from erc_ros.models.artefact import load_model_dir, sha256_file
    from erc_ros.paths import cache_root
    from erc_ros.training.fusion_stage import dialogue_teacher_logits

    h = hashlib.sha256(b"whole-dialogues")
    for d in teacher_dirs:
        h.update(sha256_file(Path(d) / "manifest.json").encode())
    for dlg in (d for part in parts for d in part):
        for u, y in zip(dlg.utterances, dlg.labels):
            h.update(f"{u.utterance_id}\t{u.speaker_id}\t{u.text}\t{y}\n".encode())
    path = cache_root() / "train" / f"teacher-logits-{h.hexdigest()[:20]}.npy"
    fpath = path.with_name(path.name.replace("teacher-logits-", "teacher-vectors-"))
    if path.is_file() and (fpath.is_file() or not features):
        print(f"teacher logits from the cache: {path}", file=sys.stderr)
        out = np.load(path)
        return (out, np.load(fpath).astype(np.float32)) if features else out
    teachers = [load_model_dir(d).eval() for d in teacher_dirs]
    for d, t in zip(teacher_dirs, teachers):
        if list(t.label_names) != list(labels):
            raise SystemExit(f"teacher {d} has labels {list(t.label_names)}, the data {list(labels)}")
    got = [dialogue_teacher_logits(teachers, part, prefix_cache_dir=path.parent, features=True)
           for part in parts if part]
    out = np.concatenate([g[0] for g in got])
    # The vectors are kept in float16: this run trains on the same rounded values as every
    # later run that reads them back (with float32 ones the first run's rounds took another
    # path: 61.25 undone where the cached run kept 61.41).
    vecs = np.concatenate([g[1] for g in got]).astype(np.float16)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(fpath, vecs)
    np.save(path, out)  # last: its presence says both files are whole
    return (out, vecs.astype(np.float32)) if features else out


def build_from_recipe(r: dict, label_names, model_id: str):
    from erc_ros.models.encoders.audio import AudioEncoderConfig
    from erc_ros.models.encoders.text import TextEncoderConfig
    from erc_ros.models.encoders.video import VideoEncoderConfig
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
    from erc_ros.models.preprocessing import PreprocessorConfig, PromptConfig, packaged_minilm_dir

    enc = r["encoder"]
    if enc == "tiny":
        text = tiny_text_config()
        tok = packaged_minilm_dir() / "tokenizer.json"
    else:
        from erc_ros.models.packaged import PackagedModelError, mpnet_dir

        try:
            path = {"minilm": packaged_minilm_dir, "mpnet": mpnet_dir}.get(enc, lambda: Path(enc))()
        except PackagedModelError as e:
            raise SystemExit(f"error: {e}") from None
        text = TextEncoderConfig(pretrained=str(path))
        tok = path / "tokenizer.json"
    text.pooling = r["pooling"]
    text.freeze_word_embeddings = r["freeze_word_embeddings"]
    text.freeze_layers = r.get("freeze_layers", 0)
    small = enc == "tiny"
    cfg = ErcModelConfig(
        model_id=model_id, label_names=tuple(label_names), text=text,
        audio=AudioEncoderConfig(dim=8 if small else 64) if r["audio"] else None,
        video=VideoEncoderConfig(dim=8 if small else 64) if r["video"] else None,
        fusion_head="concat", fusion={"dropout": 0.1},
        preprocessing=PreprocessorConfig(prompt=PromptConfig(
            max_length=r["max_length"], past_context=r["past_context"])))
    model = build_model(cfg, tok)
    model.config.text.pretrained = None  # weights travel in the model directory
    return model


def model_reference(model_dir: str | Path) -> dict:
    """A trained model named by id, dev metrics and manifest sha256, not by path: provenance
    travels with the model, a path on the training machine means nothing elsewhere."""
    from erc_ros.models.artefact import read_manifest
    from erc_ros.models.artefact import sha256_file

    m = read_manifest(model_dir)
    return {"model_id": m.get("model_id", ""),
            "dev_metrics": m.get("provenance", {}).get("dev_metrics", {}),
            "manifest_sha256": sha256_file(Path(model_dir) / "manifest.json")}


def lineage(model_dir: str | Path) -> dict:
    """How the ``--init`` model was made, for the provenance of a model trained from it: its
    id, when, by which command (portable: no machine paths) at which commit, its dev figure,
    its training minutes, and its own ``init_provenance`` in turn: the whole chain back to a
    model trained from scratch."""
    from erc_ros.models.artefact import read_manifest

    ref = model_reference(model_dir)
    p = read_manifest(model_dir).get("provenance", {})
    return {"model_id": ref["model_id"],
            **{k: p[k] for k in ("created", "command", "git_commit", "git_modified",
                                 "dev_metrics", "train_minutes", "init_provenance") if k in p},
            "manifest_sha256": ref["manifest_sha256"]}


def provenance(args, init=None, **fields) -> dict:
    """The provenance a trained model directory records: the command as given (portable),
    the lineage of the model it was trained from (``init``, else ``--init``; none from
    scratch), and ``fields``."""
    prov = dict(fields)
    if getattr(args, "command_line", None):
        prov["command"] = args.command_line
    init = init or getattr(args, "init", None)
    if init:
        prov["init_provenance"] = lineage(init)
    return prov


def _figure(record: dict) -> str:
    """A dev record's weighted F1 for a message: FP32, and INT8 where it was measured."""
    f = f"{record.get('weighted_f1')}"
    f += f" (INT8 {record['weighted_f1_int8']})" if "weighted_f1_int8" in record else ""
    if "head_mean" in record:
        f += f", {len(record['heads'])} heads' mean {record['head_mean']}"
    return f


def _snapshot(model):
    """What :func:`_restore` needs to undo a round: every tensor, and the fusion head as a
    module with its config (stage 2 may put a head of another kind in its place)."""
    import copy

    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            copy.deepcopy(model.fusion), model.config.fusion_head,
            copy.deepcopy(model.config.fusion))


def _restore(model, snapshot) -> None:
    state, fusion, name, fusion_config = snapshot
    model.fusion, model.config.fusion_head, model.config.fusion = fusion, name, fusion_config
    model.load_state_dict(state)


def _fusion_stage(model, r: dict, train, dev, best: dict, history: list, threads: int,
                  prefix_dir: str = "", teacher=None, store=None, keep: bool = False,
                  cache_vectors: bool = False):
    """Stage 2: fresh heads over the fine-tuned encoder's cached vectors (encoder frozen),
    one per head seed (the recipe's ``fusion_stage.head_seeds``, default 1); the best of them
    by the recipe's rule (``select``: FP32, or the worse of FP32 and the ONNX Runtime INT8
    copy, where the model as it stands is scored by that rule too) replaces the stage-1 head
    only if it beats it on dev. ``teacher``: trained teachers' logits over ``train``'s
    labelled utterances, distilled into the head with the weight the recipe's
    ``fusion_stage`` gives as ``distill``. ``store``: see :func:`_int8_dev`. Returns (best,
    dev scores or None); with several head seeds ``best`` carries each head's figures and
    ``head_mean``, the mean of their selection figures: what the encoder is worth, where one
    head's figure is partly its seed's luck. ``keep``: the best new head replaces the stage-1
    head whatever dev says (said so). ``cache_vectors``: the encoder's vectors are kept in the
    training cache (``prefix_dir``), keyed by model and data: a head refit over a finished
    model, run again with another seed over the same data, reads them back."""
    import numpy as np

    from erc_ros.training.deployed import selection_figure
    from erc_ros.training.fusion_stage import (FusionStageConfig, dev_figures, encode_dialogues,
                                               fit_head, per_dialogue, predict_cached, use_head)
    from erc_ros.training.metrics import scores

    fs = r["fusion_stage"]
    select = r.get("select", "fp32")
    model.eval()
    kw = dict(prefix_cache_dir=prefix_dir) if r.get("cache_frozen") else {}
    if cache_vectors and prefix_dir:
        kw["cache_dir"] = prefix_dir
    ftr, fdv = encode_dialogues(model, train, **kw), encode_dialogues(model, dev, **kw)
    fdv8 = _int8_dev(model, dev, fdv, select, threads, store)
    rule = select if fdv8 is not None else "fp32"
    if fdv8 is not None:  # the model as it stands, by the same rule as the new heads
        best = dict(best, **dev_figures(model.fusion, fdv, model.label_names, fdv8))
    # Off unless the recipe's fusion_stage names a weight: over models/default's encoder, KD
    # 0.5 toward models/large gave 59.30 against 59.95 without (docs/results.md).
    distill = fs.get("distill", 0.0) if teacher is not None else 0.0
    fitted = []
    for seed in range(r["seed"], r["seed"] + int(fs.get("head_seeds", 1))):
        cfg = FusionStageConfig(epochs=fs["epochs"], class_weight_power=fs["class_weight_power"],
                                lr=fs.get("lr", 5e-4), modality_dropout=0.0, threads=threads,
                                seed=seed, distill=distill)
        head, hcfg, s2 = fit_head(model, fs["head"], ftr, fdv, cfg, seed=seed, progress=True,
                                  teacher=per_dialogue(teacher, ftr) if distill > 0 else None,
                                  dev_int8=fdv8, select=rule)
        history += [dict(h, stage=2, head=fs["head"], head_seed=seed) for h in s2["history"]]
        fitted.append((head, hcfg, dict(s2["best"], head_seed=seed)))
    head, hcfg, got = max(fitted, key=lambda f: selection_figure(f[2], rule))  # first of ties
    spread = dict(head_mean=round(float(np.mean([selection_figure(f[2], rule)
                                                 for f in fitted])), 2),
                  heads=[f[2] for f in fitted]) if len(fitted) > 1 else {}
    if selection_figure(got, rule) <= selection_figure(best, rule):
        if not keep:
            print(f"stage 2 ({fs['head']}) did not beat stage 1 on dev; keeping the stage-1 "
                  "head", file=sys.stderr)
            return dict(best, select=select, **spread), None
        print(f"stage 2 ({fs['head']}) did not beat stage 1 on dev: its head kept by "
              "--keep-rounds", file=sys.stderr)
    use_head(model, fs["head"], head, hcfg)
    yt, yp = predict_cached(head, fdv)
    return dict(got, stage=2, head=fs["head"], select=select, **spread), \
        scores(yt, yp, model.label_names)


def _beats(a: dict, b: dict, select: str) -> bool:
    """Whether round ``a`` beats the model as it stood (``b``): by the mean of their stage-2
    heads' figures where both have one (the encoders compared, not two heads' seeds), else
    by the recipe's selection figure."""
    from erc_ros.training.deployed import selection_figure

    if "head_mean" in a and "head_mean" in b:
        return a["head_mean"] > b["head_mean"]
    return selection_figure(a, select) > selection_figure(b, select)


def _int8_dev(model, dev, fdv, select: str, threads: int, store=None):
    """``fdv`` (the dev dialogues' cached vectors) with the text vectors of ``model``'s ONNX
    Runtime INT8 copy, where the recipe selects by it (``select: fp32+int8``), else None.
    ``store(model, directory)``: how the run saves the model; the INT8 copy is then made from
    the weights as saved (float16), as ``prepare`` will make it. Dynamic INT8's error is a
    draw that any perturbation re-rolls: the same head scored 61.81 over the INT8 copy of the
    unrounded weights and 60.75 over that of the float16 ones (docs/results.md).
    None too when that copy is one the runtime rejects (its vectors' mean cosine to FP32
    below ``quantize.MIN_COSINE``, as for MPNet): the nodes then run the encoder in FP32,
    so the FP32 figure is the robot's."""
    import torch

    from erc_ros.runtime.quantize import MIN_COSINE, row_cosines
    from erc_ros.training.deployed import SELECT_RULES, int8_text_vectors, with_text

    if select not in SELECT_RULES:
        raise SystemExit(f"error: recipe select {select!r}: one of {', '.join(SELECT_RULES)}")
    if select != "fp32+int8":
        return None
    if store is None:
        vecs = int8_text_vectors(model, dev, threads=threads)
    else:
        import tempfile

        from erc_ros.models.artefact import load_model_dir

        with tempfile.TemporaryDirectory(prefix="erc-stored-") as tmp:
            store(model, Path(tmp) / "model")
            vecs = int8_text_vectors(load_model_dir(Path(tmp) / "model"), dev, threads=threads)
    cos = float(row_cosines(torch.cat([c.text for c in fdv]).numpy(),
                            torch.cat(vecs).numpy()).mean())
    if cos < MIN_COSINE:
        print(f"the INT8 text encoder's dev vectors have a mean cosine of {cos:.3f} to FP32 "
              f"(< {MIN_COSINE}): the runtime would run it in FP32, so selection is on FP32",
              file=sys.stderr)
        return None
    return with_text(fdv, vecs)


def _model_figures(model, r: dict, dev, threads: int, prefix_dir: str) -> dict:
    """The dev figures of ``model`` as it stands (its own head over whole dialogues), by the
    recipe's rule: FP32 weighted F1 and accuracy, and the INT8 copy's weighted F1 where the
    rule needs it."""
    from erc_ros.training.fusion_stage import dev_figures, encode_dialogues

    kw = dict(prefix_cache_dir=prefix_dir) if r.get("cache_frozen") else {}
    fdv = encode_dialogues(model, dev, progress=False, **kw)
    fdv8 = _int8_dev(model, dev, fdv, r.get("select", "fp32"), threads)
    out = dev_figures(model.fusion, fdv, model.label_names, fdv8)
    model.train()
    return out


def run(args) -> int:
    from erc_ros.models.artefact import add_artefact, check_model_id, save_trained_model_dir
    from erc_ros.models.artefact import sha256_file
    from erc_ros.paths import cache_root
    from erc_ros.training.deployed import selection_figure
    from erc_ros.training.distributed import DistContext
    from erc_ros.training.metrics import plot_confusion
    from erc_ros.training.text_stage import TextStageConfig, teacher_logits, train_text_stage

    if args.select and args.recipe == "multimodal":
        raise SystemExit("error: --select picks stage-2 heads and rounds of the text recipes; "
                         "--recipe multimodal keeps its best epoch by dev weighted F1")
    if RECIPES[args.recipe].get("stage") == "face":
        from erc_ros.training.face_stage import run as run_face

        return run_face(args, RECIPES[args.recipe], provenance)
    if args.faces or args.faces_dev or args.batch_size or args.precision or args.limit_faces:
        raise SystemExit("error: --faces, --faces-dev, --batch-size, --precision and "
                         "--limit-faces are read by --recipe face only")
    if args.recipe == "multimodal":
        from erc_ros.training.multimodal_stage import run as run_multimodal

        return run_multimodal(args, dict(RECIPES[args.recipe]), model_reference, provenance)
    if args.media or args.workers or args.ray_address:
        raise SystemExit("error: --media (and its --workers / --ray-address) is read by "
                         "--recipe multimodal only")
    r = dict(RECIPES[args.recipe])
    for k in ("encoder", "past_context", "max_length", "freeze_layers", "epochs", "lr",
              "class_weight_power", "self_distill", "distill", "feature_distill", "seed",
              "select"):
        v = getattr(args, k)
        if v is not None:
            r[k] = v
    if args.init and args.freeze_layers is not None:
        raise SystemExit("error: --freeze-layers builds a new encoder; with --init the init "
                         "model's own freezing applies")
    heard = _heard(args.heard, args.format)
    train, dev, labels, files = _datasets(args, r)
    if args.limit_dialogues:
        train, dev = train[: args.limit_dialogues], dev[: max(1, args.limit_dialogues // 4)]
    if args.robot_view_copy:
        r["robot_view_copy"] = args.robot_view_copy
    if r.get("robot_view_copy"):
        # Each training dialogue also as a robot could at best have it (no '!'; speaker_N
        # tags or names: docs/spoken.md), with the same labels; dev is not copied.
        from erc_ros.training.data import robot_copy

        copies = "tags" if r["robot_view_copy"] is True else r["robot_view_copy"]
        names = _copies(copies).split(",")
        original = train
        for name in names:
            share, cuts = ROBOT_COPIES[name]
            train = train + robot_copy(original, share, r["seed"], cuts=cuts,
                                       suffix="-robot" if name == "tags" else f"-robot-{name}")
        print(f"robot-view copy: {len(original)} training dialogues, each also without '!' "
              f"as {' and as '.join(names)} ({', '.join(f'{n}: {COPY_HELP[n]}' for n in names)})",
              file=sys.stderr)
    if heard:
        r["heard"] = [Path(f).name for f in args.heard]
        train, files = train + heard, files + [Path(f) for f in args.heard]
    from erc_ros.training.text_stage import seed_everything

    seed_everything(r["seed"])
    model_id = check_model_id(args.model_id or f"erc-{args.recipe}-{time.strftime('%Y%m%d')}")
    if args.init:
        from erc_ros.models.artefact import load_model_dir, read_manifest

        model = load_model_dir(args.init).train()
        model.config.model_id = model_id
        prior = read_manifest(args.init)["provenance"].get("dev_metrics", {})
        prompt = model.preprocessor.config.prompt
        changed = {k: getattr(args, k) for k in ("past_context", "max_length")
                   if getattr(args, k) is not None and getattr(args, k) != getattr(prompt, k)}
        for k, v in changed.items():  # continue training on another prompt
            setattr(prompt, k, v)
        if changed:  # the init's dev figures were measured with the old prompt
            prior = {}
        elif prior and r.get("select", "fp32") != "fp32":
            # The rule compares this run's models with the init by their INT8 copies too,
            # measured here: a figure in its manifest may come from another copy (the INT8
            # error moves with any rounding of the weights) or another machine's kernels.
            prior = dict(prior, **_model_figures(model, r, dev, args.threads,
                                                 str(cache_root() / "train")))
    else:
        model = build_from_recipe(r, labels, model_id)
        prior = {}
    ge_mode, ge, ge_files = _goemotions(args, r, labels)
    files += ge_files
    r["goemotions_used"] = {"mode": ge_mode, "comments": len(ge)}
    parts = [train, ge] if ge_mode == "mix" else [train]
    if ge_mode == "mix":
        train = train + ge
    teacher = teacher_vectors = None
    # A recipe names its teachers per corpus (their labels must be the corpus's): where it
    # names none for this one, the recipe trains without distillation, and says so.
    recipe_teachers = (r.get("distill_from") or {}).get(args.format, [])
    teacher_dirs = resolve_teachers(args.teacher or recipe_teachers)
    if r.get("feature_distill") and not teacher_dirs:
        if args.feature_distill:
            raise SystemExit("error: --feature-distill needs a --teacher")
        print(f"recipe {args.recipe}: no teacher for --format {args.format} (or --teacher "
              "none): training without distillation (--teacher DIR distils from one)",
              file=sys.stderr)
        r["feature_distill"] = 0.0
    if teacher_dirs:
        if r.get("feature_distill"):
            teacher, teacher_vectors = cached_teacher_logits(teacher_dirs, parts, labels,
                                                             features=True)
        else:
            teacher = cached_teacher_logits(teacher_dirs, parts, labels)
        r.setdefault("distill", 0.5)
        r["teachers"] = [model_reference(d) for d in teacher_dirs]
    external = bool(r["freeze_word_embeddings"] or r.get("freeze_layers")) and \
        r["encoder"] in ("minilm", "mpnet")

    def store(m, directory, prov=None):
        """Save ``m`` as this run's model directory holds it (float16 unless --fp32, the
        frozen packaged tensors referenced): the final save, and the copy whose INT8 export
        selection scores (the export of unrounded weights is another draw of INT8's noise)."""
        save_trained_model_dir(m, directory, provenance=prov, external_word_embeddings=external,
                               dtype="float32" if args.fp32 else "float16")

    cycles = [{}, *r.get("then", [])]
    rounds = r.get("rounds", [])
    n_all = len(cycles) + len(rounds)
    if args.cycle > len(cycles) and not args.init:
        raise SystemExit(f"error: --cycle {args.cycle}: the recipe's cycles 1-{len(cycles)} "
                         "build the model; a later one (a round, or past the last: the fusion "
                         "stage only) needs --init DIR")
    prefix_dir = str(cache_root() / "train")
    t0 = time.time()
    first = max(1, args.cycle) - 1
    last = n_all if not args.cycles else min(n_all, first + args.cycles)
    # A prior measured after a fusion stage (a refitted head) is not comparable with a
    # cycle's own head: then this run's cycles compete among themselves, the fusion stage
    # runs on the best, and that result must beat the prior, else the init model is kept.
    # A prior from a cycle's own head competes with this run's cycles.
    two_stage = bool(r.get("fusion_stage") and dev)
    select = r.get("select", "fp32")
    best, best_state, best_scores, history = dict(prior), None, None, []
    if prior and two_stage and prior.get("stage") == 2:
        best = {}
    elif prior:
        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    cfg = None
    undone = 0  # rounds undone so far in this run: the next round's seed offset

    def cycle(ci):
        rc = dict(r, **(cycles + rounds)[ci])
        if ci >= len(cycles) and "seed" not in rounds[ci - len(cycles)]:
            # After an undone round the model is as it was, and the same seed would repeat
            # that round to the bit (61.48 twice, docs/results.md): each undone round moves
            # the next one to the next seed (a run of kept rounds keeps the recipe's seed).
            rc["seed"] = r["seed"] + undone
        c = TextStageConfig(**{k: rc[k] for k in TextStageConfig.__dataclass_fields__ if k in rc},
                            max_steps=args.max_steps, max_minutes=args.max_minutes,
                            threads=args.threads, prefix_cache_dir=prefix_dir)
        cycle_teacher = teacher
        if rc.get("teacher") == "previous":
            # Self-distillation across cycles: the model as the previous cycle left it
            # teaches this one (born-again networks; seed 004's EMA teacher, one level up).
            cycle_teacher = teacher_logits([model.eval()], train)
            model.train()
        s = train_text_stage(model, train, dev, c, teacher=cycle_teacher,
                             teacher_features=teacher_vectors)
        history.extend(dict(h, cycle=ci + 1) for h in s["history"])
        return c, s

    if ge_mode == "stage":
        # A first stage on GoEmotions alone (selected on the real dev set), then the cycles.
        rs = dict(r, **{k: v for k, v in r.get("goemotions", {}).items()
                        if k in TextStageConfig.__dataclass_fields__})
        gcfg = TextStageConfig(**{k: rs[k] for k in TextStageConfig.__dataclass_fields__ if k in rs},
                               max_steps=args.max_steps, max_minutes=args.max_minutes,
                               threads=args.threads, prefix_cache_dir=prefix_dir)
        s = train_text_stage(model, ge, dev, gcfg)
        history += [dict(h, cycle=0, data="goemotions") for h in s["history"]]
    for ci in range(first, min(last, len(cycles))):
        cfg, s = cycle(ci)
        if s["best"].get("weighted_f1", -1) > best.get("weighted_f1", -1) or best_state is None:
            best = dict(s["best"], cycle=ci + 1)
            best_scores = s["best_scores"]
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:  # None: no cycle ran (--cycle past the last: stage 2 only)
        model.load_state_dict(best_state)
    # Stage 2's head learns over whole dialogues: the corpus's own, without GoEmotions'
    # one-comment "dialogues" (mixed in, 11k of them outweighed MELD's 1k dialogues and
    # stage 2 fell to 58.16 on MELD dev from the cycle's 58.53).
    n0 = sum(int(y >= 0) for d in parts[0] for y in d.labels)  # the corpus's rows
    s2_teacher = None if teacher is None else teacher[:n0]
    run_rounds = two_stage and last > len(cycles) and first < n_all
    if two_stage and (first < len(cycles) or not run_rounds):
        # a run past the last cycle is this head alone: --keep-rounds keeps it
        best, s2_scores = _fusion_stage(model, r, parts[0], dev, best, history, args.threads,
                                        prefix_dir, s2_teacher, store,
                                        keep=args.keep_rounds and first >= n_all,
                                        cache_vectors=first >= n_all)
        best_scores = s2_scores or best_scores
        behind = prior and selection_figure(best, select) <= selection_figure(prior, select)
        if behind and args.keep_rounds:
            print(f"dev {_figure(best)} does not beat the init model's {_figure(prior)}: "
                  "kept by --keep-rounds", file=sys.stderr)
        elif behind:
            from erc_ros.models.artefact import load_model_dir

            print(f"dev {_figure(best)} does not beat the init model's "
                  f"{_figure(prior)}: keeping the init model", file=sys.stderr)
            model = load_model_dir(args.init).train()
            model.config.model_id = model_id
            best, best_scores = dict(prior, kept_init=True), None
    elif run_rounds and prior:  # rounds over the init model: they must beat its figure
        best = dict(prior, kept_init=True)
        if int(r["fusion_stage"].get("head_seeds", 1)) > 1 and not args.keep_rounds:
            # What its encoder is worth over the head seeds, for the rounds to compare with
            # (and one of those heads in place of its own where it beats it).
            best, s2_scores = _fusion_stage(model, r, parts[0], dev, best, history,
                                            args.threads, prefix_dir, s2_teacher, store)
            best_scores = s2_scores or best_scores
    # Rounds over the finished model (encoder and stage-2 head): a cycle, then a fresh stage-2
    # head; the round is kept only if that beats the model as it stood on dev, else the model
    # is restored (the next round starts from it again). Selected after stage 2, because a
    # cycle's own head can rank encoders otherwise: over models/default, a cycle whose own
    # head scored 60.36 against the previous cycle's 60.65 gave 61.10 after stage 2.
    for ci in range(max(first, len(cycles)), last if run_rounds else 0):
        kept = _snapshot(model)
        cfg, s = cycle(ci)
        got, s2_scores = _fusion_stage(model, r, parts[0], dev, s["best"], history,
                                       args.threads, prefix_dir, s2_teacher, store)
        if _beats(got, best, select) or args.keep_rounds:
            verdict = "kept" if _beats(got, best, select) else \
                f"kept by --keep-rounds (the model before it: {_figure(best)})"
            best, best_scores = dict(got, cycle=ci + 1), s2_scores or s["best_scores"]
            print(f"round (cycle {ci + 1}): dev {_figure(got)}: {verdict}", file=sys.stderr)
        else:
            print(f"round (cycle {ci + 1}): dev {_figure(got)} does not beat "
                  f"{_figure(best)}: restoring the model before it", file=sys.stderr)
            _restore(model, kept)
            undone += 1
    # Both stages train the head on text alone: audio/video stay unused until a fusion stage
    # trains it with them (their projections are zero until then).
    model.config.trained_modalities = ("text",)
    summary = {"history": history, "best": best, "best_scores": best_scores,
               # the cache folder by name, not this machine's path (the log travels)
               "config": dict(cfg.to_dict(), prefix_cache_dir="<cache>/train")
               if cfg is not None else {}}
    summary["recipe"] = {"name": args.recipe, **r, "cycle": args.cycle,
                         "init": model_reference(args.init) if args.init else ""}
    summary["wall_minutes"] = round((time.time() - t0) / 60, 1)
    if DistContext.from_env().rank != 0:
        return 0
    out = Path(args.out)
    prov = provenance(args, recipe=summary["recipe"],
                      data={str(f.name): sha256_file(f) for f in files},
                      dev_metrics=summary["best"], train_minutes=summary["wall_minutes"])
    store(model, out, prov)
    log = {k: v for k, v in summary.items() if k != "best_scores"}
    (out / "train_log.json").write_text(json.dumps(log, indent=2) + "\n")
    add_artefact(out, "train_log.json", "report")
    if summary.get("best_scores"):
        s = summary["best_scores"]
        plot_confusion(s["confusion"], s["label_names"], out / "dev_confusion.png",
                       f"{model_id} dev: wF1 {s['weighted_f1']} acc {s['accuracy']}")
        add_artefact(out, "dev_confusion.png", "report")
    b = summary["best"]
    print(f"\nsaved {out}  best dev: weighted F1 {_figure(b)}  accuracy "
          f"{b.get('accuracy')}  (epoch {b.get('epoch')}, "
          f"{'stage-2 ' + b['head'] + ' head' if b.get('stage') == 2 else str(b.get('weights')) + ' weights'})  "
          f"in {summary['wall_minutes']} min", file=sys.stderr)
    return 0
