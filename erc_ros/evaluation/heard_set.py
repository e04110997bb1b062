"""`python -m erc_ros heard-set --meld-csv CSV --out FILE`: a MELD file as a robot hears it.

Every dialogue is spoken (``--voices espeak`` by default: Kokoro stays for evaluation, so a
model trained on this never learns the test voices), with natural turn-taking, into the same
bags as ``bench-spoken`` (cached), and replayed through the nodes' own assembly path with the
embedded recognizer and diarization (:func:`erc_ros.evaluation.eval_bag.make_core`,
:func:`erc_ros.ros.replay.replay_bag`): what comes out is what the emotion model would read on
a robot. One row per utterance the robot made, in a MELD-format CSV that
:func:`erc_ros.datasets.meld.load_meld` reads as it is:

- ``Dialogue_ID``, ``Utterance_ID`` (the robot's order), ``StartTime``/``EndTime`` (on the
  bag's clock), ``Speaker`` (the diarized id), ``Utterance`` (the recognized text);
- ``Emotion``/``Sentiment``: the labels of the gold turn the utterance overlaps most
  (:func:`erc_ros.evaluation.matching.assign`'s owner rule), empty where it overlaps none;
- ``Gold_Utterance_IDs``: every gold turn it overlaps (``;``), ``Gold_Text`` of its owner,
  ``Predicted``: the current model's label for it.

It resumes: dialogues already in ``--out`` are skipped, and each dialogue is appended whole
once heard, so an interrupted run loses at most one dialogue's work. Progress per dialogue;
a summary (dialogues, utterances, labelled, WER) at the end.

    python -m erc_ros heard-set --meld-csv ../shared/data/meld/train_sent_emo.csv \\
        --out data/heard/meld_train_espeak.csv
"""
from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

from tqdm import tqdm

from erc_ros.evaluation import eval_bag
from erc_ros.evaluation.eval_bag import process_settings as ps
from erc_ros.evaluation.matching import conversation_text, gold_turns, owners
from erc_ros.evaluation.spoken_bags import add_spoken_arguments, spoken_bags
from erc_ros.evaluation.wer import word_errors
from erc_ros.ros.replay import replay_bag
from erc_ros.synth.voices import VoicesMissing

COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Utterance", "Emotion", "Sentiment",
           "StartTime", "EndTime", "Gold_Utterance_IDs", "Gold_Text", "Predicted")


def add_arguments(p) -> None:

    p.add_argument("--meld-csv", required=True, help="MELD-format CSV to hear")
    p.add_argument("--out", required=True, help="the heard CSV (appended to; resumes)")
    add_spoken_arguments(p, voices="espeak")


def process_settings(args) -> dict:
    return ps(args)


def _clock(t: float) -> str:
    """Seconds -> MELD's "hh:mm:ss,mmm"."""
    ms = int(round(t * 1000))
    return f"{ms // 3_600_000:02d}:{ms // 60_000 % 60:02d}:{ms // 1000 % 60:02d},{ms % 1000:03d}"


def rows_of(dialogue: str, turns: list[dict], estimates: list, sentiments: dict) -> list[dict]:
    """The heard CSV's rows of one dialogue: one per estimate, labelled by its owner turn."""

    lab = [t for t in turns if t["label"]]
    owner, overlaps = owners(lab, estimates)
    out = []
    for k, est in enumerate(estimates):
        o = lab[owner[k]] if owner[k] >= 0 else None
        out.append({
            "Dialogue_ID": dialogue[3:], "Utterance_ID": k, "Speaker": est.speaker_id,
            "Utterance": est.text, "Emotion": o["label"] if o else "",
            "Sentiment": sentiments.get(o["utterance_id"], "") if o else "",
            "StartTime": _clock(est.start), "EndTime": _clock(est.end),
            "Gold_Utterance_IDs": ";".join(lab[i]["utterance_id"].rsplit("utt", 1)[1]
                                           for i in overlaps[k]),
            "Gold_Text": o["text"] if o else "", "Predicted": est.label})
    return out


def done_dialogues(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    with open(path, newline="", encoding="utf-8") as f:
        return {r["Dialogue_ID"] for r in csv.DictReader(f)}


#: What heard-set reads of its input (MELD's train/dev/test CSV columns).
MELD_COLUMNS = ("Dialogue_ID", "Utterance_ID", "Speaker", "Utterance", "Emotion")


def run(args) -> int:

    src, out = Path(args.meld_csv), Path(args.out)
    if not src.is_file():
        print(f"heard-set: no such file {src}", file=sys.stderr)
        return 2
    with open(src, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f), [])
    missing = [c for c in MELD_COLUMNS if c not in header]
    if missing:
        print(f"heard-set: {src} is not a MELD-format CSV: no {', '.join(missing)} column "
              f"(it has {', '.join(header[:8]) or 'no header'})", file=sys.stderr)
        return 2
    if eval_bag.sets_refused(args, "heard-set"):
        return 2
    try:
        bags = spoken_bags(src, args, args.dialogues, args.seed,
                                        Path(args.bags) if args.bags else None)
    except VoicesMissing as e:
        print(f"heard-set: {e}", file=sys.stderr)
        return 2
    done = done_dialogues(out)
    todo = [b for b in bags if b["dialogue"][3:] not in done]
    print(f"heard-set: {len(bags)} dialogues of {src.name}, {len(bags) - len(todo)} already in "
          f"{out}, {len(todo)} to hear")
    with open(src, newline="", encoding="utf-8") as f:
        sentiments = {f"dia{r['Dialogue_ID']}_utt{r['Utterance_ID']}": r.get("Sentiment", "")
                      for r in csv.DictReader(f)}
    pipeline = eval_bag.make_pipeline(args.model_dir, args.backend, args.precision,
                                      args.threads)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.is_file() or out.stat().st_size == 0
    refs, hyps, n_rows, n_lab, t0, core = [], [], 0, 0, time.perf_counter(), None
    with open(out, "a", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, COLUMNS)
        if new:
            w.writeheader()
        for item in tqdm(todo, desc="heard-set", unit="dialogue", mininterval=5.0):
            turns = gold_turns(item["bag"])
            pipeline.reset()
            core = eval_bag.make_core(args.config, tuple(args.set), pipeline,
                                      asr_type="embedded", reuse=core)
            try:
                res = replay_bag(item["bag"], core, pipeline)
            finally:
                core.close()
            rows = rows_of(item["dialogue"], turns, res.estimates, sentiments)
            w.writerows(rows)
            f.flush()
            ref, hyp = conversation_text(turns, res.estimates)
            refs.append(ref)
            hyps.append(hyp)
            n_rows += len(rows)
            n_lab += sum(bool(r["Emotion"]) for r in rows)
    wer = word_errors(refs, hyps)["wer"] if refs else float("nan")
    print(f"heard-set: {len(todo)} dialogues heard in {time.perf_counter() - t0:.0f} s: "
          f"{n_rows} utterances, {n_lab} labelled, WER {100 * wer:.1f} %; {out}")
    return 0
