"""EmoryNLP: ``emorynlp_*_final.csv`` (``Speaker`` is a list literal; a dialogue is a
``Scene_ID`` of an episode)."""
from __future__ import annotations

import ast
import csv
from pathlib import Path
from typing import Sequence

from erc_ros.core.types import Utterance
from erc_ros.datasets.dialogues import Dialogue, clean_text

EMORYNLP_LABELS = ("Neutral", "Joyful", "Peaceful", "Powerful", "Scared", "Mad", "Sad")


def load_emorynlp(csv_path: str | Path, labels: Sequence[str] = EMORYNLP_LABELS,
                  split: str = "") -> list[Dialogue]:
    csv_path = Path(csv_path)
    split = split or csv_path.stem
    index = {k.lower(): i for i, k in enumerate(labels)}
    rows: dict[str, list[dict]] = {}
    with open(csv_path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            key = f"s{r['Season']}e{r['Episode']}c{r['Scene_ID']}"
            rows.setdefault(key, []).append(r)
    out = []
    for key in rows:
        cid = f"emorynlp-{split}-{key}"
        utts, labs = [], []
        for r in sorted(rows[key], key=lambda r: int(r["Utterance_ID"])):
            try:
                spk = ast.literal_eval(r["Speaker"])
                spk = ", ".join(spk) if isinstance(spk, (list, tuple)) else str(spk)
            except (ValueError, SyntaxError):
                spk = r["Speaker"]
            utts.append(Utterance(f"{cid}-{r['Utterance_ID']}", cid, spk.strip(), 0.0, 0.0,
                                  text=clean_text(r["Utterance"])))
            labs.append(index.get(r["Emotion"].strip().lower(), -1))
        out.append(Dialogue(cid, utts, labs))
    return out
