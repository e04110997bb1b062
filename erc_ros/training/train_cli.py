"""`python -m erc_ros train`: train a model directory from a recipe.

    python -m erc_ros train --recipe default --out models/default

Recipes (:mod:`erc_ros.training.recipes`) fix every choice; command-line flags override a
few for ablations (``--past-context``, ``--class-weight-power``, ``--self-distill``,
``--epochs``, ...). The text recipes run in :mod:`erc_ros.training.trainer` (cycles of the
prompt text encoder and its head, a fusion stage, rounds); ``--recipe multimodal --media DIR``
trains the audio and video branches over a trained text model from the user's MELD.Raw or
IEMOCAP media (:mod:`multimodal_stage`, docs/multimodal.md); ``--recipe face`` trains a
face-expression expert (:mod:`face_stage`), ``--recipe voice`` the voice expert
(:mod:`voice_stage`).
"""
from __future__ import annotations

import argparse

from erc_ros import jobs
from erc_ros.training import face_stage, multimodal_stage, trainer, voice_stage
from erc_ros.training.corpora import copy_names
from erc_ros.training.deployed import SELECT_RULES
from erc_ros.training.provenance import model_reference, provenance
from erc_ros.training.recipes import RECIPES


def _copies(value: str) -> str:
    """An argparse type: --robot-view-copy's comma list, each name of ROBOT_COPIES once."""
    try:
        return ",".join(copy_names(value))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


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
    jobs.add_arguments(p, "--recipe multimodal: read the clips (decode, faces, voice features)")
    face_stage.add_arguments(p)
    voice_stage.add_arguments(p)
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


def run(args) -> int:
    if args.select and args.recipe == "multimodal":
        raise SystemExit("error: --select picks stage-2 heads and rounds of the text recipes; "
                         "--recipe multimodal keeps its best epoch by dev weighted F1")
    if RECIPES[args.recipe].get("stage") == "face":
        return face_stage.run(args, RECIPES[args.recipe], provenance)
    if RECIPES[args.recipe].get("stage") == "voice":
        return voice_stage.run(args, RECIPES[args.recipe], provenance)
    if args.voices or args.folds is not None or args.augment or args.copies is not None or \
            args.speakers or args.ablate:
        raise SystemExit("error: --voices, --folds, --augment, --copies, --speakers and "
                         "--ablate are read by --recipe voice only")
    if args.faces or args.faces_dev or args.batch_size or args.precision or args.limit_faces:
        raise SystemExit("error: --faces, --faces-dev, --batch-size, --precision and "
                         "--limit-faces are read by --recipe face only")
    if args.recipe == "multimodal":
        return multimodal_stage.run(args, dict(RECIPES[args.recipe]), model_reference,
                                    provenance)
    if args.media or args.workers or args.ray_address:
        raise SystemExit("error: --media (and its --workers / --ray-address) is read by "
                         "--recipe multimodal only")
    return trainer.train(args)
