"""GoEmotions (Ekman mapping, MELD's 7 classes): ``train.tsv``/``dev.tsv``, one-utterance
dialogues (extra supervision for the rare classes; no context, no speakers)."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from erc_ros.core.types import Utterance
from erc_ros.datasets.dialogues import Dialogue, clean_text
from erc_ros.models.labels import MELD_LABELS

#: GoEmotions' Ekman classes onto other label sets (by lower-cased name; unmapped = dropped).
GOEMOTIONS_MAP = {"joyful": "joy", "mad": "anger", "sad": "sadness", "scared": "fear",
                  "happy": "joy", "angry": "anger"}


def load_goemotions(tsv_path: str | Path, labels: Sequence[str] = MELD_LABELS,
                    split: str = "") -> list[Dialogue]:
    """GoEmotions (Ekman mapping: ``text<TAB>label ids<TAB>comment id`` rows, class names in
    ``labels.txt`` beside the file) as one-utterance dialogues with no speaker. Comments with
    several labels are dropped (their class is ambiguous), as are classes ``labels`` lacks
    (``GOEMOTIONS_MAP`` names the equivalents, e.g. EmoryNLP's Scared = fear)."""
    tsv_path = Path(tsv_path)
    split = split or tsv_path.stem
    names = (tsv_path.parent / "labels.txt").read_text().split()
    ours = {}
    for i, k in enumerate(labels):
        key = k.lower()
        ours[GOEMOTIONS_MAP.get(key, key)] = i
    idx = {j: ours[n] for j, n in enumerate(names) if n in ours}
    out = []
    with open(tsv_path, newline="", encoding="utf-8") as f:
        for row in csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            if len(row) < 3 or "," in row[1] or not row[1].strip().isdigit():
                continue
            y = idx.get(int(row[1]), -1)
            text = clean_text(row[0])
            if y < 0 or not text:
                continue
            cid = f"goemotions-{split}-{row[2]}"
            out.append(Dialogue(cid, [Utterance(f"{cid}-0", cid, "", 0.0, 0.0, text=text)], [y]))
    return out
