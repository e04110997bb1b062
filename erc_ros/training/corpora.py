"""What a text recipe trains and selects on: the corpus of ``--format`` (MELD, EmoryNLP or
IEMOCAP; its train and dev dialogues, labels and files), robot-view copies of the training
dialogues (``--robot-view-copy``), what the robot heard (``--heard``) and GoEmotions
(``--goemotions``)."""
from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

from erc_ros.datasets import emorynlp, goemotions, iemocap, meld, robot_views
from erc_ros.datasets.dialogues import class_counts
from erc_ros.models.labels import MELD_LABELS
from erc_ros.paths import data_root

#: --robot-view-copy's copies: the share of the dialogues whose copy keeps the speakers' names,
#: and the cuts of the robot's own (robot_views.CUT_VIEWS) it makes.
ROBOT_COPIES = {"tags": (0.0, ()), "names": (1.0, ()), "mixed": (0.5, ()),
                "sentences": (0.0, ("sentences",))}
COPY_HELP = {"tags": "speaker_N", "names": "speakers' names", "mixed": "half with names",
             "sentences": "speaker_N, one utterance a sentence"}

#: GoEmotions use when a recipe names none and ``--goemotions`` asks for it: a subset of at
#: most 2000 comments per class (all of the rare ones), one epoch when it is a stage.
GOEMOTIONS_DEFAULT = dict(mode="off", per_class=2000, epochs=1)


def copy_names(value: str) -> list[str]:
    """--robot-view-copy's comma list as names of :data:`ROBOT_COPIES`, each once; else
    ValueError."""
    names = [c.strip() for c in value.split(",") if c.strip()]
    bad = sorted(set(names) - set(ROBOT_COPIES)) or ([] if names else [value])
    if bad or len(set(names)) < len(names):
        raise ValueError(f"a comma list of {', '.join(ROBOT_COPIES)}, each once; got {value!r}")
    return names


def read_corpus(args) -> tuple[list, list, tuple, list[Path]]:
    """(train, dev, label names, files read) of ``--format``: MELD or EmoryNLP from
    ``--train`` / ``--dev`` (default: the data root's copies), IEMOCAP from ``--iemocap-root``
    (sessions 1-4 train, session 5 dev)."""
    root = data_root()
    if args.format == "meld":
        tr = Path(args.train or root / "meld" / "train_sent_emo.csv")
        dv = Path(args.dev or root / "meld" / "dev_sent_emo.csv")
        return meld.load_meld(tr), meld.load_meld(dv), MELD_LABELS, [tr, dv]
    if args.format == "emorynlp":
        tr = Path(args.train or root / "emorynlp" / "emorynlp_train_final.csv")
        dv = Path(args.dev or root / "emorynlp" / "emorynlp_dev_final.csv")
        return (emorynlp.load_emorynlp(tr), emorynlp.load_emorynlp(dv), emorynlp.EMORYNLP_LABELS,
                [tr, dv])
    if not args.iemocap_root:
        raise SystemExit("--format iemocap needs --iemocap-root")
    d = iemocap.load_iemocap(args.iemocap_root)
    return ([x for x in d if not x.conversation_id.startswith("iemocap-Ses05")],
            [x for x in d if x.conversation_id.startswith("iemocap-Ses05")],
            iemocap.IEMOCAP6_LABELS, [])


def read_heard(paths: list[str], fmt: str) -> list:
    """--heard's dialogues: each file read as MELD (``heard-set`` writes that format), its
    conversations named after the file and its place in the list, so that they never share
    an id with MELD's own or another file's. Read before the corpus, so that a bad file is
    refused first."""
    if paths and fmt != "meld":  # heard-set speaks and hears MELD
        raise SystemExit(f"error: --heard is MELD text heard by the robot: not for --format "
                         f"{fmt}")
    out = []
    for i, f in enumerate(paths):
        if not Path(f).is_file():
            raise SystemExit(f"error: --heard {f}: no such file")
        try:
            d = meld.load_meld(f, split=f"heard{i}-{Path(f).stem}")
        except (KeyError, ValueError, csv.Error) as e:
            raise SystemExit(f"error: --heard {f}: not a MELD-format CSV ({e!r})") from None
        labelled = sum(lab >= 0 for x in d for lab in x.labels)
        if not labelled:
            raise SystemExit(f"error: --heard {f}: no utterance has a MELD emotion label")
        print(f"heard: {len(d)} dialogues, {labelled} labelled utterances from {f}",
              file=sys.stderr)
        out += d
    return out


def add_robot_copies(train: list, copies: str, seed: int) -> list:
    """``train`` and, after it, each dialogue as a robot could at best have it (no '!';
    speaker_N tags or names, cut into sentences: docs/spoken.md) once per name of
    ``copies``, with the same labels."""
    names = copy_names(copies)
    original = train
    for name in names:
        share, cuts = ROBOT_COPIES[name]
        train = train + robot_views.robot_copy(
            original, share, seed, cuts=cuts,
            suffix="-robot" if name == "tags" else f"-robot-{name}")
    print(f"robot-view copy: {len(original)} training dialogues, each also without '!' "
          f"as {' and as '.join(names)} ({', '.join(f'{n}: {COPY_HELP[n]}' for n in names)})",
          file=sys.stderr)
    return train


def training_data(args, r: dict) -> tuple[list, list, tuple, list[Path]]:
    """(train, dev, label names, files read) of a text recipe's run: the corpus (its first
    ``--limit-dialogues``, and a quarter as many of dev), its robot-view copies (the recipe's
    ``robot_view_copy`` or the flag's, recorded in ``r``) and, last, ``--heard``'s dialogues
    (recorded in ``r`` by file name). Dev is never copied nor extended."""
    heard = read_heard(args.heard, args.format)
    train, dev, labels, files = read_corpus(args)
    if args.limit_dialogues:
        train, dev = train[: args.limit_dialogues], dev[: max(1, args.limit_dialogues // 4)]
    if args.robot_view_copy:
        r["robot_view_copy"] = args.robot_view_copy
    if r.get("robot_view_copy"):
        copies = "tags" if r["robot_view_copy"] is True else r["robot_view_copy"]
        train = add_robot_copies(train, copies, r["seed"])
    if heard:
        r["heard"] = [Path(f).name for f in args.heard]
        train, files = train + heard, files + [Path(f) for f in args.heard]
    return train, dev, labels, files


def read_goemotions(args, r: dict, labels) -> tuple[str, list, list]:
    """(mode, dialogues, files) of the GoEmotions use (``goemotions`` in the recipe, or
    ``--goemotions``): a class-capped, seeded subset of its train split."""
    spec = dict(GOEMOTIONS_DEFAULT, **(r.get("goemotions") or {}))
    mode = spec.get("mode", "off") if args.goemotions == "recipe" else args.goemotions
    if mode == "stage" and args.init:  # the stage comes first: the init model had its turn
        print("GoEmotions stage: skipped, the run continues from --init", file=sys.stderr)
        mode = "off"
    if mode == "off":
        return mode, [], []
    f = data_root() / "goemotions_ekman" / "train.tsv"
    d = goemotions.load_goemotions(f, labels)
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
          f"{class_counts(d, len(labels)).tolist()}", file=sys.stderr)
    return mode, d, [f]
