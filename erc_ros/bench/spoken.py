"""`python -m erc_ros bench-spoken`: what the emotion model loses between the text of a
conversation and what a robot hears of it, stage by stage, on the same utterances.

Each dialogue of a MELD-format file is spoken (``--voices kokoro``: a natural voice per
speaker, MELD dev shipped pre-spoken in ``data/spoken/kokoro``; ``espeak``: espeak-ng) with
turn-taking as people do it (``--timing natural``: gaps of a few hundred ms, short overlaps,
back-channels; :class:`~erc_ros.synth.conversation.TurnTaking`), optionally in a room
(``--room``: reverberation and noise), into a camera + microphone bag with the gold
transcripts, speakers and labels beside it (kept in the cache, keyed by everything that
makes it). Then, on the same labelled turns:

- ``gold_text``: the model alone, on the gold text with the gold speakers (what
  ``evaluate`` measures, through the nodes' runtime);
- ``transcripts``: the bag's gold transcripts (timed, as an ASR node would send them, 0.15 s
  after each turn) through the perception core: segmentation and diarized speaker tags;
- ``asr_gold_speakers``: the embedded recognizer's utterances with each one's gold speaker
  (the speaker of the labelled turn it overlaps most): what the recognizer costs;
- ``asr``: the embedded recognizer and diarization: what a robot gets.

The perception stages run the nodes' own assembly path (:func:`erc_ros.evaluation.eval_bag.make_core`,
:func:`erc_ros.ros.replay.replay_bag`, ``config/emotion.yaml``); ``asr_gold_speakers``
re-predicts ``asr``'s utterances (the recognizer runs once).

Scoring. An estimate belongs to the labelled turn it overlaps most; a turn with an estimate
of its own is *matched*; one that shares the estimate of another turn (the recognizer or the
segmentation joined them) is *merged* and scored with that estimate; one that no estimate
overlaps is *lost* and counts as wrong (a robot gave no answer). Weighted F1 is over every
labelled turn. WER: corpus-level (:func:`erc_ros.evaluation.wer.word_errors`) over whole
conversations, every gold turn's text (back-channels included) against every estimate's
text, each in time order (:func:`conversation_text`: independent of where the segmentation
cut). DER: NIST-style, 0.25 s collar (``der``; ``der_no_collar`` without), over all gold
speech, summed over dialogues.

Latency, speech end -> estimate: the replay's measured work placed on a real-time timeline
(one worker: each poll of the core starts when its audio has arrived and the previous work
is done, the recognizer inline; then the pipeline), minus the end of the last labelled turn
the estimate answers; one figure per estimate. It is what a live robot with one core for this work would see, without the
DDS hops; ``bench-e2e`` measures through the live nodes.

    python -m erc_ros bench-spoken --voices kokoro --json runs/spoken_kokoro.json
    python -m erc_ros bench-spoken --meld-csv CSV --voices espeak --dialogues 20 --seed 1 --json OUT
    python -m erc_ros bench-spoken --voices kokoro --room --snr 15 --dialogues 10 --json OUT

Writes ``--json OUT`` (``stages.<stage>.{weighted_f1, wer, der, lost, merged, matched,
speech_end_to_estimate_ms.{p50,p95}, ...}``; F1, WER and DER in %; ``stages.<stage>.senses
.{text, voice, face, fused}.{weighted_f1, uar, accuracy, read}``: each sense of the estimate
scored alone on the same turns (:mod:`erc_ros.evaluation.senses`; ``fused`` is the published
label, the stage's own figures); ``heard_as``: every
stage's weighted F1 on the turns grouped by how the recognizer heard them,
:func:`heard_breakdown`; the machine: CPU, flags and a GEMM GFLOP/s figure measured in the
same run), ``OUT.png`` and, with ``--out DIR``, per stage: the per-turn and per-estimate
CSVs and ``report-<stage>.html``, the turns on eval-bag's page (:func:`write_reports`).
"""
from __future__ import annotations

import copy
import csv
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from erc_ros.bench import write_run
from erc_ros.core.der import der
from erc_ros.core.types import Utterance
from erc_ros.datasets.meld import load_meld
from erc_ros.evaluation import eval_bag
from erc_ros.evaluation.eval_bag import estimate_columns
from erc_ros.evaluation.eval_bag import process_settings as ps
from erc_ros.evaluation.matching import (HEARD_AS, assign, classification, conversation_text,
                                         gold_turns, heard_as, overlap, owners, percentiles,
                                         segment_ends)
from erc_ros.evaluation.report import bags_audio, write_report
from erc_ros.evaluation.senses import SENSE_FIGURES, SENSES, sense_labels, sense_scores
from erc_ros.evaluation.spoken_bags import add_spoken_arguments, enrolment_voices, spoken_bags
from erc_ros.evaluation.wer import word_errors
from erc_ros.paths import data_root
from erc_ros.ros.replay import replay_bag
from erc_ros.runtime import machine
from erc_ros.runtime.machine import line
from erc_ros.synth.room import Room
from erc_ros.synth.voices import VoicesMissing

STAGES = ("gold_text", "transcripts", "asr_gold_speakers", "asr")
#: ``rescore``'s speakers: as the run's diarization tagged them, or without its errors.
RESCORE_SPEAKERS = ("run", "gold")

STAGE_TITLES = {"gold_text": "(a) gold text, gold speakers",
                "transcripts": "(b) gold transcripts, perception",
                "asr_gold_speakers": "(c) recognizer, gold speakers",
                "asr": "(d) recognizer, diarization"}


def add_arguments(p) -> None:
    p.add_argument("--meld-csv", default=None, help="MELD-format CSV (default: MELD dev)")
    add_spoken_arguments(p, voices="kokoro")
    p.add_argument("--json", required=True, help="write the results here (and OUT.png)")
    p.add_argument("--out", default=None, help="also write per-turn CSVs into this folder")
    p.add_argument("--stages", default=",".join(STAGES),
                   help=f"comma-separated subset of {', '.join(STAGES)}")
    p.add_argument("--enroll", action="store_true",
                   help="the robot knows the household: the voices of MELD's six main "
                        "characters (kokoro), each saying a line that is in no dialogue, are "
                        "enrolled (perception.diarization.voices), so their turns can carry "
                        "their names; the other speakers stay speaker_N")
    p.add_argument("--rescore", default=None, metavar="DIR",
                   help="score another text model on what an earlier run heard: DIR is that "
                        "run's --out folder (its <stage>.csv and <stage>_estimates.csv); no "
                        "synthesis, no recognizer (a model that uses audio or video needs "
                        "the bags: run without it)")
    p.add_argument("--speakers", choices=RESCORE_SPEAKERS, default="run",
                   help="with --rescore: the speakers as the run's diarization tagged them "
                        "(run), or each estimate tagged by the labelled turn it overlaps most, "
                        "speaker_N in order of first appearance (gold: diarization without "
                        "errors, what the run's costs the model)")


def process_settings(args) -> dict:
    return ps(args)


# --- the spoken conversations ----------------------------------------------------------------


# --- scoring ---------------------------------------------------------------------------------


def timeline(polls: list, estimates: list) -> list[float]:
    """When each estimate would be out on a real-time timeline (module doc), in bag time."""
    v = -np.inf
    out = []
    k = 0
    for now, dt, n in polls:
        v = max(v, now) + dt
        for _ in range(n):
            v += estimates[k].latency_ms / 1000.0
            out.append(v)
            k += 1
    return out


class Stage:
    """One stage's per-turn results, summed over the dialogues."""

    def __init__(self, name: str):
        self.name = name
        self.y_true: list[str] = []
        # each sense's prediction of each labelled turn (:mod:`erc_ros.evaluation.senses`)
        self.pred: dict[str, list[str]] = {s: [] for s in SENSES}
        self.status = {"matched": 0, "merged": 0, "lost": 0}
        self.extra = 0
        self.estimates = 0
        self.refs: list[str] = []
        self.hyps: list[str] = []
        self.der = {"missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total": 0.0}
        self.der0 = dict(self.der)
        self.latency: list[float] = []
        self.latency_last: list[float] = []  # of the estimates that end a segment
        self.model_ms: list[float] = []
        self.rows: list[dict] = []
        self.heard: list[str] = []  # heard_as() of each labelled turn, in rows' order
        self.estimate_rows: list[dict] = []

    @property
    def y_pred(self) -> list[str]:
        """The published (fused) label of each labelled turn; :data:`NONE` when lost."""
        return self.pred["fused"]

    def add(self, dialogue: str, turns: list[dict], estimates: list,
            done_at: Optional[list[float]] = None, speech: bool = True) -> None:

        pairs, extra = assign(turns, estimates)
        when = {id(e): t for e, t in zip(estimates, done_at)} if done_at else {}
        lab = [t for t in turns if t["label"]]
        # speech end -> estimate: from the end of the last labelled turn an estimate answers
        ends: dict[int, float] = {}
        for t, (_, e) in zip(lab, pairs):
            if e is not None:
                ends[id(e)] = max(ends.get(id(e), -np.inf), t["end"])
        lat_of = {k: (when[k] - v) * 1000 for k, v in ends.items() if k in when}
        self.latency += list(lat_of.values())
        last = {id(e) for e, f in zip(estimates, segment_ends(estimates)) if f}
        self.latency_last += [v for k, v in lat_of.items() if k in last]
        for t, (status, e) in zip(lab, pairs):
            self.status[status] += 1
            self.y_true.append(t["label"].lower())
            # a lost turn, or an estimate without a label (nothing the model reads): wrong
            for sense, v in sense_labels(e).items():
                self.pred[sense].append(v)
            lat = lat_of.get(id(e), float("nan")) if e is not None else float("nan")
            self.heard.append(heard_as(t["text"], e.text if e is not None else None))
            # eval-bag's columns of the estimate (its report reads them), this latency
            self.rows.append({"dialogue": dialogue, "utterance_id": t["utterance_id"],
                              "start": f"{t['start']:.3f}", "end": f"{t['end']:.3f}",
                              "speaker": t["speaker"], "label": t["label"],
                              "text": t["text"], "status": status,
                              **estimate_columns(e),
                              "latency_ms": f"{lat:.0f}" if np.isfinite(lat) else "",
                              "heard_as": self.heard[-1]})
        self.extra += extra
        self.estimates += len(estimates)
        self.model_ms += [e.latency_ms for e in estimates]
        for e in estimates:
            self.estimate_rows.append({"dialogue": dialogue, "start": f"{e.start:.3f}",
                                       "end": f"{e.end:.3f}", "speaker": e.speaker_id,
                                       "predicted": e.label, "heard": e.text,
                                       "done_at": f"{when[id(e)]:.3f}" if id(e) in when else ""})
        if speech:
            r, h = conversation_text(turns, estimates)
            self.refs.append(r)
            self.hyps.append(h)
            ref = [(t["start"], t["end"], t["speaker"]) for t in turns]
            hyp = [(e.start, e.end, e.speaker_id or "?") for e in estimates]
            for acc, collar in ((self.der, 0.25), (self.der0, 0.0)):
                d = der(ref, hyp, collar=collar)
                for k in acc:
                    acc[k] += d[k]

    def result(self, class_names) -> dict:

        out = {**classification(self.y_true, self.y_pred, class_names),
               "turns": len(self.y_true), **self.status, "extra_estimates": self.extra,
               "estimates": self.estimates,
               "model_ms": percentiles(self.model_ms),
               "senses": sense_scores(self.y_true, self.pred, class_names, classification,
                                      SENSE_FIGURES)}
        if self.refs:
            w = word_errors(self.refs, self.hyps)
            out["wer"] = round(100 * w["wer"], 2)
            out["word_errors"] = w

            def rate(acc):
                err = sum(acc[k] for k in ("missed", "false_alarm", "confusion"))
                return round(100 * err / max(acc["total"], 1e-9), 2)
            out["der"] = rate(self.der)
            out["der_terms_s"] = {k: round(v, 2) for k, v in self.der.items()}
            out["der_no_collar"] = rate(self.der0)
            out["speech_end_to_estimate_ms"] = percentiles(self.latency)
            out["speech_end_segment_last_ms"] = percentiles(self.latency_last)
        return out


# --- the run ---------------------------------------------------------------------------------


def turn_taking(all_turns: list[list[dict]]) -> dict:
    """The timelines' turn-taking: floor-transfer offsets between labelled turns of
    different speakers (negative: overlap), pauses of a speaker going on, back-channels."""
    fto, pause, bc, n = [], [], 0, 0
    for turns in all_turns:
        lab = [t for t in turns if t["label"]]
        bc += len(turns) - len(lab)
        n += len(lab)
        for a, b in zip(lab, lab[1:]):
            (fto if a["speaker"] != b["speaker"] else pause).append(b["start"] - a["end"])
    f, p = np.asarray(fto), np.asarray(pause)

    def q(x, k):
        return round(float(np.percentile(x, k)), 3) if x.size else None
    return {"turns": n, "speaker_changes": int(f.size), "overlap_share": round(
        float(np.mean(f < 0)), 3) if f.size else None,
        "fto_s": {"p10": q(f, 10), "p50": q(f, 50), "p90": q(f, 90)},
        "gaps_under_0_5_s_share": round(float(np.mean((f >= 0) & (f < 0.5))), 3)
        if f.size else None,
        "same_speaker_pause_s": {"p10": q(p, 10), "p50": q(p, 50), "p90": q(p, 90)},
        "backchannels": bc}


def with_gold_speakers(utts: list, turns: list[dict]) -> list:
    """Copies of ``utts`` whose speaker is the gold speaker they overlap most."""
    ts = np.asarray([t["start"] for t in turns])
    te = np.asarray([t["end"] for t in turns])
    out = []
    for u in utts:
        v = copy.copy(u)
        ov = overlap(u.start, u.end, ts, te)
        if ov.size and ov.max() > 0:
            v.speaker_id = turns[int(np.argmax(ov))]["speaker"]
            v.speaker_source = "gold"
        out.append(v)
    return out


def bench(csv_path: Path, args, progress: bool = True) -> dict:

    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise ValueError(f"unknown stage(s) {bad}; choose from {', '.join(STAGES)}")
    t_start = time.perf_counter()
    mach = machine.describe(args.threads)
    enrolled = []
    if getattr(args, "enroll", False):
        voices = enrolment_voices(args.voices)
        enrolled = sorted(f.stem for f in voices.glob("*.wav"))
        args.set = [*args.set, f"perception.diarization.voices={voices}"]
    bags = spoken_bags(csv_path, args, args.dialogues, args.seed,
                       Path(args.bags) if args.bags else None, progress)
    t_bags = time.perf_counter() - t_start
    pipeline = eval_bag.make_pipeline(args.model_dir, args.backend, args.precision,
                                      args.threads)
    names = list(pipeline.class_names)
    keep_media = pipeline.model.uses("audio") or pipeline.model.uses("video")
    results = {s: Stage(s) for s in stages}
    gold = {d.conversation_id.rsplit("-", 1)[1]: d for d in load_meld(csv_path)}
    asr = {"compute_s": 0.0, "speech_s": 0.0, "segments": 0, "no_text": 0, "refused_full": 0,
           "weak_no_words": 0, "sentence_ends": 0, "stream": 0, "stream_cuts": 0,
           "early_streamed": 0, "refit": 0, "fallback": 0}
    conv_s = 0.0
    wall = {s: 0.0 for s in stages}
    timelines = []
    made: dict = {}  # the last core of each kind: the next one shares its loaded models
    bar = tqdm(bags, desc="bench-spoken", unit="dialogue", disable=not progress,
               mininterval=2.0)
    for item in bar:
        bag, d = item["bag"], item["dialogue"]
        turns = gold_turns(bag)
        timelines.append(turns)
        if "gold_text" in results:
            t = time.perf_counter()
            dlg = gold[d[3:]]
            pipeline.reset()
            ests = []
            for u, t_ in zip(dlg.utterances, [x for x in turns if x["label"]]):
                v = copy.copy(u)  # the gold text on the spoken turn's span
                v.start, v.end = t_["start"], t_["end"]
                ests.append(pipeline.predict(v))
            results["gold_text"].add(d, turns, ests, speech=False)
            wall["gold_text"] += time.perf_counter() - t
        if "transcripts" in results:
            t = time.perf_counter()
            pipeline.reset()
            core = made["transcripts"] = eval_bag.make_core(
                args.config, tuple(args.set), pipeline, asr_type=eval_bag.bag_asr_type(bag),
                reuse=made.get("transcripts"))
            try:
                res = replay_bag(bag, core, pipeline)
            finally:
                core.close()
            results["transcripts"].add(d, turns, res.estimates, timeline(res.polls,
                                                                         res.estimates))
            conv_s += res.duration_s
            item["seconds"] = res.duration_s
            wall["transcripts"] += time.perf_counter() - t
        if "asr" in results or "asr_gold_speakers" in results:
            t = time.perf_counter()
            pipeline.reset()
            core = made["asr"] = eval_bag.make_core(args.config, tuple(args.set), pipeline,
                                                    asr_type="embedded", reuse=made.get("asr"))
            try:
                res = replay_bag(bag, core, pipeline, keep_media=keep_media)
            finally:
                core.close()
            st = res.stats
            asr["compute_s"] += st["stages"].get("asr", {}).get("total_s", 0.0)
            for k in ("segments", "no_text", "refused_full", "weak_no_words", "sentence_ends",
                      "stream", "stream_cuts", "early_streamed"):
                asr[k] += st["asr"].get(k, 0)
            # the recognizer's retries: it is shared by the cores, so its counts run on
            asr["refit"] = core.recognizer.refits
            asr["fallback"] = core.recognizer.fallbacks
            asr["speech_s"] += sum(u.end - u.start for u in res.utterances)
            asr["model"] = core.recognizer.model_name
            asr["model_reason"] = core.recognizer.choice.get("reason", "")
            done = timeline(res.polls, res.estimates)
            if "asr" in results:
                results["asr"].add(d, turns, res.estimates, done)
            wall["asr"] = wall.get("asr", 0.0) + time.perf_counter() - t
            if "asr_gold_speakers" in results:
                t = time.perf_counter()
                pipeline.reset()
                ests = [pipeline.predict(u) for u in with_gold_speakers(res.utterances, turns)]
                results["asr_gold_speakers"].add(d, turns, ests, done)
                wall["asr_gold_speakers"] += time.perf_counter() - t
            if "transcripts" not in results:
                conv_s += res.duration_s
                item["seconds"] = res.duration_s
        if progress and "asr" in results and results["asr"].y_true:
            r = results["asr"]
            acc = np.mean([a == b for a, b in zip(r.y_true, r.y_pred)])
            bar.set_postfix_str(f"asr accuracy {acc:.2f}")
    out = {
        "command": getattr(args, "command_line", ""),
        "meld_csv": str(csv_path), "voices": args.voices, "timing": args.timing,
        "room": _room(args), "seed": args.seed, "dialogues": len(bags),
        "conversation_seconds": round(conv_s, 1), "model_id": pipeline.model_id,
        "backend": f"{pipeline.backend_name}/{pipeline.precision}",
        "config_overrides": eval_bag.parse_sets(tuple(args.set)),
        "enrolled": enrolled,
        "machine": mach,
        "turn_taking": turn_taking(timelines),
        "stages": {s: results[s].result(names) for s in stages},
        "heard_as": heard_breakdown(results, names),
        "asr": {**{k: round(v, 2) if isinstance(v, float) else v for k, v in asr.items()},
                "realtime_factor": round(asr["speech_s"] / asr["compute_s"], 2)
                if asr["compute_s"] else None},
        "wall_s": {"bags": round(t_bags, 1), **{k: round(v, 1) for k, v in wall.items()},
                   "total": round(time.perf_counter() - t_start, 1)},
    }
    if args.out:
        o = Path(args.out)
        o.mkdir(parents=True, exist_ok=True)
        for s in stages:
            for name, rows in ((s, results[s].rows),
                               (f"{s}_estimates", results[s].estimate_rows)):
                if rows:
                    with open(o / f"{name}.csv", "w", newline="") as f:
                        w = csv.DictWriter(f, list(rows[0]))
                        w.writeheader()
                        w.writerows(rows)
        write_reports(o, out, {s: results[s].rows for s in stages}, bags)
    return out


def _room(args) -> Optional[dict]:
    if not args.room:
        return None
    r = Room(rt60=args.rt60, snr_db=args.snr, noise=args.noise)
    return {**asdict(r), "description": r.describe()}


# --- the pages -------------------------------------------------------------------------------

#: Where each stage's estimates took their text (the page's "ASR" field).
STAGE_HEARD = {"gold_text": "none (the gold text)", "transcripts": "bag (gold transcripts)",
               "asr_gold_speakers": "embedded", "asr": "embedded"}
#: What the pages' latency is (the rows' ``latency_ms``: each turn's estimate's).
SPEECH_TO_ESTIMATE = "Speech end → estimate per turn (simulated real-time timeline)"


def write_reports(folder: Path, run: dict, rows: dict[str, list[dict]],
                  bags: list[dict]) -> list[Path]:
    """``report-<stage>.html`` in ``folder`` for each stage of ``rows`` (its :class:`Stage`
    rows): eval-bag's page (:func:`erc_ros.evaluation.report.write_report`) of the stage's
    labelled turns, ``text`` the gold MELD line, ``heard`` the text the stage's estimate
    used; a merged turn shows the estimate it is scored with, a lost one none. Each turn's
    audio comes from the bags, up to eval-bag's cap on the conversation's length (above it,
    none, and a note on stderr). A page a stage: each is eval-bag's page as it is, opened
    on its own, and one stage's figures never mix with another's."""

    names = {b["dialogue"]: Path(b["bag"]).name for b in bags}
    seconds = _seconds(bags, next(iter(rows.values()), []))
    audio = None
    if seconds <= eval_bag.REPORT_AUDIO_MAX_SECONDS:
        audio = bags_audio([b["bag"] for b in bags])
    else:
        print(f"bench-spoken: {seconds / 3600:.1f} h of conversation: the report-<stage>.html "
              f"pages without their audio (at most {eval_bag.REPORT_AUDIO_MAX_SECONDS / 3600:g} h)",
              file=sys.stderr)
    out = []
    for stage, stage_rows in rows.items():
        result, subtitle = stage_result(run, stage, bags, seconds, stage_rows)
        page_rows = [{"bag": names[r["dialogue"]],
                      **{k: v for k, v in r.items() if k not in ("dialogue", "status")}}
                     for r in stage_rows]
        out.append(write_report(folder / f"report-{stage}.html", result, page_rows, audio,
                                title=f"bench-spoken {STAGE_TITLES[stage]}",
                                subtitle=subtitle, latency_title=SPEECH_TO_ESTIMATE))
    return out


def _seconds(bags: list[dict], rows: list[dict]) -> float:
    """The conversation the pages cover: each bag's replayed length, else (no perception
    stage ran) the span of its labelled turns."""
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    for r in rows:
        d = r["dialogue"]
        first[d] = min(first.get(d, np.inf), float(r["start"]))
        last[d] = max(last.get(d, -np.inf), float(r["end"]))
    return sum(b["seconds"] if "seconds" in b else
               last[b["dialogue"]] - first[b["dialogue"]] if b["dialogue"] in last else 0.0
               for b in bags)


def stage_result(run: dict, stage: str, bags: list[dict], seconds: float,
                 rows: list[dict]) -> tuple[dict, str]:
    """One stage of :func:`bench`'s result (and its ``rows``) as eval-bag's metrics dict
    (the page's ``result``: scores as fractions, the confusion without the lost turns'
    column, which the page counts apart) and the page's subtitle."""
    m = run["stages"][stage]
    names = m["label_names"][:-1]  # the last one is NONE
    k = len(names)
    wall = run["wall_s"].get(stage)
    if stage == "asr_gold_speakers":  # re-predicts (d)'s utterances: their replay is its cost
        wall = (wall or 0.0) + run["wall_s"].get("asr", 0.0)
    lat = m.get("speech_end_to_estimate_ms") or {}
    lat = {**lat, "max": max((float(r["latency_ms"]) for r in rows if r["latency_ms"]),
                             default=None)} if lat.get("p50") is not None else {}
    heard = STAGE_HEARD[stage]
    if heard == "embedded" and run["asr"].get("model"):
        heard += f" (Whisper {run['asr']['model']})"
    result = {
        "model_id": run["model_id"], "backend": run["backend"], "mode": "offline",
        "asr": heard, "overrides": run["config_overrides"],
        "bags": [{"bag": str(b["bag"]), "duration_s": b.get("seconds")} for b in bags],
        "duration_s": seconds, "wall_s": wall,
        "realtime_factor": seconds / wall if wall else None,
        "utterances": m["turns"], "estimates": m["estimates"], "lost": m["lost"],
        "refused": {}, "latency_ms": lat,
        **{key: m[key] / 100.0 for key in ("accuracy", "weighted_f1", "macro_f1")},
        "per_class_f1": {c: v / 100.0 for c, v in m["per_class_f1"].items()},
        "senses": {sense: {k: v if k == "read" else v / 100.0 for k, v in f.items()}
                   for sense, f in m["senses"].items()},
        "support": m["support"], "confusion_labels": names,
        "confusion": [row[:k] for row in m["confusion"][:k]]}
    if "word_errors" in m:
        result["asr_word_errors"] = m["word_errors"]
    room = run["room"]["description"] if run["room"] else "no room"
    subtitle = (f"{run['dialogues']} dialogue(s) of {Path(run['meld_csv']).name}, voices "
                f"{run['voices']}, timing {run['timing']}, {room} · weighted F1 "
                f"{m['weighted_f1']:.2f} % over {m['turns']} labelled turns: {m['matched']} "
                f"matched, {m['merged']} merged (scored with the estimate they share), "
                f"{m['lost']} lost (wrong)")
    if "wer" in m:
        subtitle += f" · WER {m['wer']:.1f} %, DER {m['der']:.1f} %"
    return result, subtitle


# --- report ----------------------------------------------------------------------------------

def heard_table(hb: Optional[dict]) -> list[str]:
    """:func:`heard_breakdown` as a markdown table (no lines without a recognizer stage)."""
    if not hb:
        return []
    stages = [s for s in STAGES if any(s in g["weighted_f1"] for g in hb["groups"].values())]
    short = {s: STAGE_TITLES[s].split(" ", 1)[0] for s in stages}
    out = ["", f"turns by how {short[hb['grouped_by']]} heard them (exact / joined to another "
           "turn's words / a piece of the turn / misheard / no text / lost), weighted F1 of "
           "each stage on the same turns:", "",
           "| heard as | turns | " + " | ".join(short[s] for s in stages) + " |",
           "|---|---|" + "---|" * len(stages)]
    for cat, g in hb["groups"].items():
        out.append(f"| {cat} | {g['turns']} | " + " | ".join(
            f"{g['weighted_f1'][s]:.1f}" if s in g["weighted_f1"] else "-" for s in stages)
            + " |")
    return out


def summary(r: dict) -> str:

    room = r["room"]["description"] if r["room"] else "no room (close microphone, no noise)"
    lines = [f"bench-spoken: {r['dialogues']} dialogues of {Path(r['meld_csv']).name}, "
             f"{r['conversation_seconds'] / 60:.1f} min, voices {r['voices']}, timing "
             f"{r['timing']}, {room}; model {r['model_id']} on {r['backend']}",
             f"machine: {line(r['machine'])}", "",
             "| stage | weighted F1 | matched / merged / lost | WER | DER | speech end -> "
             "estimate p50 / p95 |", "|---|---|---|---|---|---|"]
    for s, m in r["stages"].items():
        lat, last = m.get("speech_end_to_estimate_ms"), m.get("speech_end_segment_last_ms")
        if last and last["n"] and last["n"] != lat["n"]:  # some estimates wait for others
            last = f" ({last['n']} ending a segment: {last['p50']:.0f} / {last['p95']:.0f} ms)"
        else:
            last = ""
        lines.append(
            f"| {STAGE_TITLES[s]} | {m['weighted_f1']:.2f} | {m['matched']} / "
            f"{m['merged']} / {m['lost']} | "
            + (f"{m['wer']:.1f} %" if "wer" in m else "-") + " | "
            + (f"{m['der']:.1f} %" if "der" in m else "-") + " | "
            + (f"{lat['p50']:.0f} / {lat['p95']:.0f} ms{last}" if lat and lat["p50"] is not None
               else "-") + " |")
    lines += ["", "each sense of the estimate alone, weighted F1 (the published label is the "
              "fused one):", "", "| stage | " + " | ".join(SENSES) + " |",
              "|---|" + "---|" * len(SENSES)]
    lines += [f"| {STAGE_TITLES[s]} | " + " | ".join(
        f"{m['senses'][k]['weighted_f1']:.2f}" for k in SENSES) + " |"
        for s, m in r["stages"].items()]
    lines += heard_table(r.get("heard_as"))
    a = r["asr"]
    if a.get("realtime_factor"):
        lines.append(f"\nrecognizer: Whisper {a.get('model', '?')} ({a.get('model_reason', '')}); "
                     f"{a['segments']} segments, {a['speech_s'] / 60:.1f} min of "
                     f"speech in {a['compute_s'] / 60:.1f} min: {a['realtime_factor']:.2f}x "
                     f"real time; {a['no_text']} without text, {a['refused_full']} refused "
                     f"(queue full), {a.get('weak_no_words', 0)} weak without words (dropped); "
                     f"cut at {a.get('sentence_ends', 0)} sentence ends in a pause and at "
                     f"{a.get('stream_cuts', 0)} while the speech went on (of "
                     f"{a.get('stream', 0)} decodes of speech in progress, "
                     f"{a.get('early_streamed', 0)} of them the early decode of the pause "
                     f"after it); "
                     f"{a.get('refit', 0)} fitted-window decodes read again on the full "
                     f"window, {a.get('fallback', 0)} by beam search")
    tt = r["turn_taking"]
    if tt["speaker_changes"]:
        lines.append(f"turn-taking: {tt['speaker_changes']} speaker changes, "
                     f"{100 * tt['overlap_share']:.0f} % overlapping, offsets p10/p50/p90 "
                     f"{tt['fto_s']['p10']:.2f}/{tt['fto_s']['p50']:.2f}/"
                     f"{tt['fto_s']['p90']:.2f} s; {tt['backchannels']} back-channels")
    lines.append(f"wall: {r['wall_s']}")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    st = r["stages"]
    names = list(st)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    ax = axes[0]
    f1 = [st[s]["weighted_f1"] for s in names]
    bars = ax.bar(range(len(names)), f1, color=["#4c72b0", "#55a868", "#c44e52", "#8172b2"][
        :len(names)])
    for b, v in zip(bars, f1):
        ax.text(b.get_x() + b.get_width() / 2, v + 0.5, f"{v:.1f}", ha="center", fontsize=9)
    ax.set_xticks(range(len(names)), [STAGE_TITLES[s].split(")")[0] + ")" for s in names])
    ax.set_ylabel("weighted F1 (%)")
    ax.set_title("emotion, same turns", fontsize=10)
    ax = axes[1]
    sp = [s for s in names if "wer" in st[s]]
    x = np.arange(len(sp))
    ax.bar(x - 0.2, [st[s]["wer"] for s in sp], 0.4, label="WER")
    ax.bar(x + 0.2, [st[s]["der"] for s in sp], 0.4, label="DER (0.25 s collar)")
    ax.bar(x + 0.2, [100 * st[s]["lost"] / max(st[s]["turns"], 1) for s in sp], 0.15,
           color="k", label="turns lost")
    ax.set_xticks(x, [STAGE_TITLES[s].split(")")[0] + ")" for s in sp])
    ax.set_ylabel("%")
    ax.legend(fontsize=8)
    ax.set_title("what was heard", fontsize=10)
    ax = axes[2]
    for s in sp:
        lat = st[s].get("speech_end_to_estimate_ms", {})
        if lat.get("p50") is not None:
            ax.bar(STAGE_TITLES[s].split(")")[0] + ")", lat["p95"] / 1000, color="#dd8452",
                   label="p95" if s == sp[0] else None)
            ax.bar(STAGE_TITLES[s].split(")")[0] + ")", lat["p50"] / 1000, color="#4c72b0",
                   label="p50" if s == sp[0] else None)
    ax.set_ylabel("speech end -> estimate (s)")
    ax.legend(fontsize=8)
    ax.set_title("latency (simulated real time)", fontsize=10)
    room = "room + noise" if r["room"] else "no room"
    fig.suptitle(f"bench-spoken: {r['dialogues']} dialogues, {r['voices']} voices, "
                 f"{r['timing']} turn-taking, {room}; {r['machine']['cpu']}, "
                 f"{r['machine']['gemm_gflops']:.0f} GFLOP/s", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def gold_tags(estimates: list, lab: list[dict]) -> list[str]:
    """The speaker of each estimate (``start``, ``end``, ``speaker_id``) of one dialogue as
    a diarization without errors would tag a stranger: the labelled turn it belongs to
    (:func:`owners`) names the speaker (one that overlaps none keeps its own speaker, apart
    from those), and each speaker becomes ``speaker_N`` in order of first appearance
    (``--robot-view speakers``)."""
    owner, _ = owners(lab, estimates)
    who = [("gold", lab[i]["speaker"]) if i >= 0 else ("run", e.speaker_id)
           for e, i in zip(estimates, owner)]
    order: dict[tuple[str, str], int] = {}
    return [f"speaker_{order.setdefault(w, len(order))}" for w in who]


def rescore(folder: Path, stages: list[str], model_dir: str = "", backend: str = "auto",
            precision: str = "auto", threads: int = 2, speakers: str = "run") -> dict:
    """Each stage of an earlier run scored again with another model, from what that run
    recorded (``<stage>_estimates.csv``: each estimate's span, diarized speaker and text, in
    order; ``<stage>.csv``: the labelled turns): the model predicts the estimates as the
    nodes would (the pipeline, past context by conversation), and the turns are matched to
    them as in the run (:func:`assign`). Valid for a model that reads text alone, scored
    alone (``fusion`` text: the recorded runs keep no audio or faces): with the same model it
    gives the run's text sense (``senses.text``). WER and DER are the run's (not recomputed).
    ``speakers="gold"``: each estimate tagged as diarization without errors would
    (:func:`gold_tags`), what the run's diarization costs the model."""
    if speakers not in RESCORE_SPEAKERS:
        raise ValueError(f"speakers must be one of {', '.join(RESCORE_SPEAKERS)}, got "
                         f"{speakers!r}")

    pipeline = eval_bag.make_pipeline(model_dir, backend, precision, threads)
    pipeline.set_fusion("text")
    used = [m for m in ("audio", "video") if pipeline.model.uses(m)]
    if used:
        raise ValueError(f"model {pipeline.model_id} uses {' and '.join(used)}: rescoring "
                         "reads the recorded text only; run bench-spoken on the bags")
    out = {"model_id": pipeline.model_id, "backend": pipeline.backend_name,
           "rescored": str(folder), "speakers": speakers, "stages": {}}
    scored: dict[str, Stage] = {}
    for stage in stages:
        turns_csv, est_csv = folder / f"{stage}.csv", folder / f"{stage}_estimates.csv"
        if not (turns_csv.is_file() and est_csv.is_file()):
            raise FileNotFoundError(f"{folder} has no {turns_csv.name} and {est_csv.name} "
                                    f"(bench-spoken --out of the run to rescore)")
        with open(turns_csv, newline="", encoding="utf-8") as f:
            turns = list(csv.DictReader(f))
        with open(est_csv, newline="", encoding="utf-8") as f:
            ests = list(csv.DictReader(f))
        by_dialogue: dict[str, list[dict]] = {}
        for e in ests:
            by_dialogue.setdefault(e["dialogue"], []).append(e)
        lab_of: dict[str, list[dict]] = {}
        for t in turns:
            lab_of.setdefault(t["dialogue"], []).append(
                {"utterance_id": t["utterance_id"], "start": float(t["start"]),
                 "end": float(t["end"]), "speaker": t["speaker"], "label": t["label"],
                 "text": t["text"]})
        st = scored[stage] = Stage(stage)
        for dialogue, lab in lab_of.items():
            pipeline.reset()
            got = []
            utts = [Utterance(f"{dialogue}_e{k}", f"rescore-{dialogue}", e["speaker"],
                              float(e["start"]), float(e["end"]), text=e["heard"])
                    for k, e in enumerate(by_dialogue.get(dialogue, []))]
            if speakers == "gold":
                for u, tag in zip(utts, gold_tags(utts, lab)):
                    u.speaker_id = tag
            for u in utts:
                got.append(pipeline.predict(u))
            st.add(dialogue, lab, got, speech=False)
        out["stages"][stage] = st.result(pipeline.class_names)
    out["heard_as"] = heard_breakdown(scored, pipeline.class_names)
    return out


def run(args) -> int:

    if args.speakers != "run" and not args.rescore:
        print("bench-spoken: --speakers gold needs --rescore DIR (a run's --out folder)",
              file=sys.stderr)
        return 2
    if args.rescore:
        stages = [x.strip() for x in args.stages.split(",") if x.strip()]
        # the stages the run wrote (all of them, unless --stages names some)
        stages = [x for x in stages if (Path(args.rescore) / f"{x}_estimates.csv").is_file()] \
            or stages
        try:
            r = rescore(Path(args.rescore), stages, args.model_dir, args.backend,
                        args.precision, args.threads, args.speakers)
        except (ValueError, FileNotFoundError) as e:
            print(f"bench-spoken: {e}", file=sys.stderr)
            return 2
        except KeyError as e:  # a CSV that is not bench-spoken's
            print(f"bench-spoken: {args.rescore}: a row file without the column {e} (not a "
                  f"bench-spoken --out folder)", file=sys.stderr)
            return 2
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=2))
        for name, m in r["stages"].items():
            print(f"{name}: {r['model_id']} weighted F1 {m['weighted_f1']:.2f} over "
                  f"{m['turns']} turns ({m['matched']} matched, {m['merged']} merged, "
                  f"{m['lost']} lost" + ("; the gold speakers as speaker_N tags)"
                                         if r["speakers"] == "gold" else ")"))
        for line in heard_table(r["heard_as"]):
            print(line)
        print(f"wrote {out}")
        return 0

    if eval_bag.sets_refused(args, "bench-spoken"):
        return 2
    csv_path = Path(args.meld_csv) if args.meld_csv else data_root() / "meld" / "dev_sent_emo.csv"
    if not csv_path.is_file():
        print(f"bench-spoken: no such file {csv_path}", file=sys.stderr)
        return 2
    if getattr(args, "enroll", False) and args.voices != "kokoro":
        print("bench-spoken: --enroll needs --voices kokoro (espeak's voices follow each "
              "dialogue's order of speakers, not their names)", file=sys.stderr)
        return 2
    try:
        r = bench(csv_path, args)
    except VoicesMissing as e:
        print(f"bench-spoken: {e}", file=sys.stderr)
        return 2
    out, png = write_run(r, args.json, plot)
    print(summary(r))
    print(f"wrote {out} and {png}" + (f"; {args.out}/: per-turn CSVs and report-<stage>.html"
                                      if args.out else ""))
    return 0


def heard_breakdown(stages: dict[str, "Stage"], class_names) -> Optional[dict]:
    """The labelled turns grouped by how the recognizer heard them (:func:`heard_as` in the
    ``asr`` stage, else ``asr_gold_speakers``), and every stage's weighted F1 on each group:
    where, between the text and the ears, the loss is (the other stages score the same
    turns, matched by utterance id). None without a recognizer stage."""
    by = next((s for s in ("asr", "asr_gold_speakers") if s in stages), None)
    if by is None:
        return None
    at = {name: {r["utterance_id"]: i for i, r in enumerate(st.rows)}
          for name, st in stages.items()}
    groups = {}
    for cat in HEARD_AS:
        ids = [r["utterance_id"] for r, h in zip(stages[by].rows, stages[by].heard) if h == cat]
        if not ids:
            continue
        f1 = {}
        for name, st in stages.items():
            idx = [at[name][u] for u in ids if u in at[name]]
            if len(idx) == len(ids):
                f1[name] = classification([st.y_true[i] for i in idx],
                                          [st.y_pred[i] for i in idx],
                                          class_names)["weighted_f1"]
        groups[cat] = {"turns": len(ids), "weighted_f1": f1}
    return {"grouped_by": by, "groups": groups}
