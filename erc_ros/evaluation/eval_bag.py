"""`python -m erc_ros eval-bag BAG... [--labels CSV] [--json OUT]`: score recorded sessions.

Offline (default): each bag goes through :func:`erc_ros.ros.replay.replay_bag` — the same
Ingest -> PerceptionCore -> EmotionPipeline the nodes run, configured from the same
``config/emotion.yaml`` — deterministic and as fast as the machine allows. ``--live``:
through the running nodes (composed, in this process) with ``/clock`` from the bag.

Labels: ``--labels CSV`` (utterance_id,start,end[,speaker,text],label), else the
``labels.csv`` inside each bag folder, else the bag's ``/erc_ros/ground_truth`` topic.
Each labelled turn is matched to the estimate whose span overlaps it most (ids are used
when they agree); a labelled turn without an estimate is *lost*.

Many bags: ``--workers N`` scores them on a local Ray of N CPUs, ``--ray-address`` on a
cluster, one task per bag (:mod:`erc_ros.jobs`), with the same results. A bag that cannot be
scored is listed with its reason (``failed``; exit status 1) and the others are scored. Each
bag's offline result is kept in ``<cache>/eval_bag`` under the sha256 of the bag, the model's
manifest, the labels and the settings: a run over the same bags reads it back (``resumed``)
instead of scoring the bag again (``--fresh``: score all).

Writes into ``--out`` (default ``runs/eval_bag/<time>``): ``report.html`` (the conversations
to look at: :mod:`erc_ros.evaluation.report`), ``utterances.csv``, ``summary.md``,
``confusion.png``, ``latency.png`` and ``metrics.json`` (also ``--json OUT``: keys
``realtime_factor``, ``utterances``, ``estimates``, ``lost``, ``accuracy``, ``weighted_f1``,
``uar``, ``per_class_f1``, ``senses``, ``latency_ms``, ``failed``, ``resumed``). The scores
are of the published label; ``senses.{text, voice, face, fused}.{weighted_f1, uar,
accuracy, read}`` score each sense of the estimate alone on the same utterances
(:mod:`erc_ros.evaluation.senses`: a sense that did not read is wrong; ``fused`` is the
published label), and ``utterances.csv`` has each sense's label (``text_label``,
``voice_label``, ``face_label``).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml
from tqdm import tqdm

from erc_ros import jobs, process
from erc_ros.assemble import (asr_type_of, build_core, load_pipeline, perception_config,
                              torch_threads)
from erc_ros.core.asr import WhisperRecognizer
from erc_ros.core.config import AUTO
from erc_ros.evaluation.report import bags_audio, write_report
from erc_ros.evaluation.senses import SENSE_FIGURES, SENSES, sense_labels, sense_scores
from erc_ros.evaluation.wer import word_errors
from erc_ros.jobs import describe, run_piece
from erc_ros.paths import CHECKOUT, cache_root, sha256_file, share_path
from erc_ros.ros.launch_config import load_config
from erc_ros.ros.live import bag_connections, live_replay
from erc_ros.ros.replay import GROUND_TRUTH_TOPIC, bag_span, replay_bag
from erc_ros.runtime import machine
from erc_ros.runtime.machine import line
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.runtime.voice_expert import default_model_dir as default_voice_model_dir

#: The nodes' parameter file (checkout or colcon install).
DEFAULT_CONFIG = share_path("config", "emotion.yaml") or CHECKOUT / "config" / "emotion.yaml"


def add_arguments(p) -> None:
    p.add_argument("bags", nargs="+", help="rosbag2 folders (MCAP or sqlite3)")
    p.add_argument("--labels", default=None, help="labels CSV for all bags (else per bag)")
    p.add_argument("--json", default=None, help="write the metrics JSON here too")
    p.add_argument("--out", default=None, help="output folder (default runs/eval_bag/<time>)")
    p.add_argument("--model-dir", default="", help="model directory (default models/default)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--config", default=str(DEFAULT_CONFIG),
                   help="node parameter YAML (the perception.* of utterance_node are used)")
    p.add_argument("--live", action="store_true",
                   help="replay through the live nodes with /clock instead of offline")
    p.add_argument("--rate", type=float, default=1.0, help="--live replay rate")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a utterance_node parameter of --config, e.g. "
                        "perception.diarization.enabled=false (what the node would get)")
    p.add_argument("--quiet", action="store_true", help="no per-estimate lines")
    p.add_argument("--asr", choices=["bag", "embedded"], default="bag",
                   help="bag: the bag's own ASR topic; embedded: ignore it and recognize the "
                        "bag's audio with the node's recognizer (a bag with only a camera and "
                        "a microphone)")
    jobs.add_arguments(p, "score the bags, one task per bag,")
    p.add_argument("--fresh", action="store_true",
                   help="score every bag again, ignoring results kept from an earlier "
                        "run with the same bag, model and settings")


def process_settings(args) -> dict:
    """The perception core runs in this process: torch's pool is the speaker embedder's."""
    over, _ = perception_overrides(args.config, tuple(args.set))
    return {"torch_threads": torch_threads(over)}


# --- shared set-up ---------------------------------------------------------------------------

def perception_overrides(config: str | Path, sets: tuple = ()) -> tuple[dict, str]:
    """The perception.* parameters and perception_config file of the utterance node."""
    params = dict(load_config(config).get("utterance_node", {}) if config else {})
    params.update(parse_sets(sets))
    over = {k[len("perception."):]: v for k, v in params.items() if k.startswith("perception.")}
    return over, params.get("perception_config", "") or ""


def check_sets(config: str | Path, sets: tuple = ()) -> None:
    """ValueError naming the first ``--set`` the utterance node would not take (a key neither
    one of its parameters nor ``perception.<section>.<field>``, or a value its configuration
    refuses), before any work: a typo is not a run with the setting silently left out."""
    known = set(load_config(DEFAULT_CONFIG).get("utterance_node", {}))
    if config:
        known |= set(load_config(config).get("utterance_node", {}))
    for key in parse_sets(sets):
        if not key.startswith("perception.") and key not in known:
            hint = (f"; perception settings are perception.<section>.<field>, e.g. "
                    f"perception.{key}") if "." in key else ""
            raise ValueError(f"--set {key}: not a parameter of the utterance node{hint}")
    over, file = perception_overrides(config, sets)
    try:
        perception_config(over, file)
    except (TypeError, ValueError) as e:
        raise ValueError(f"--set: {e}") from None


def sets_refused(args, prog: str) -> bool:
    """:func:`check_sets` on ``args``: True, said on stderr, when the node would not take them."""
    try:
        check_sets(args.config, tuple(args.set))
    except ValueError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return True
    return False


def parse_sets(sets) -> dict:
    out = {}
    for item in sets or ():
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set needs KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def make_core(config: str | Path = DEFAULT_CONFIG, sets: tuple = (), pipeline=None,
              asr_type: str = "transcript", reuse=None):
    """The utterance node's perception core for an offline replay, assembled as the
    composed node does (:mod:`erc_ros.assemble`): segmentation for ``asr_type``, no face
    crops when the ``pipeline``'s model does not use video (unless faces.enabled is set);
    ``embedded``: the node's own recognizer, inline (deterministic). ``reuse``: an earlier
    core of the same settings whose loaded face and voice experts and recognizer this one
    shares (one core per bag without loading them again)."""
    over, file = perception_overrides(config, sets)
    return build_core(over, file, asr_type=asr_type,
                      uses_video=None if pipeline is None else pipeline.model.uses("video"),
                      publish_utterances=False, offline=True,
                      face_expert=getattr(reuse, "face_expert", None),
                      voice_expert=getattr(reuse, "voice_expert", None),
                      recognizer=getattr(reuse, "recognizer", None))


def make_pipeline(model_dir: str = "", backend: str = "auto", precision: str = "auto",
                  threads: int = 2):
    return load_pipeline(model_dir, backend, precision, threads, prepare=True)  # a CLI


def bag_asr_type(bag: str | Path) -> str:
    """The asr_type the node would be given for this bag's ASR topic (as live replay)."""
    conns = bag_connections(bag)
    conns.pop(GROUND_TRUTH_TOPIC, None)
    return asr_type_of(conns)


# --- labels and matching ---------------------------------------------------------------------

def read_labels(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        out.append({"utterance_id": r.get("utterance_id", ""), "start": float(r["start"]),
                    "end": float(r["end"]), "speaker": r.get("speaker", ""),
                    "text": r.get("text", ""), "label": r.get("label", r.get("emotion", ""))})
    return out


def _face_columns(est) -> dict:
    """What the face-expression expert said on the utterance, beside the fused label:
    ``face_status`` (seen / no_face / no_camera / disabled / error / uncertain), its top
    class and probability ("" unless seen)."""
    if est is None:
        return {"face_status": "", "face_label": "", "face_confidence": ""}
    label = est.face_label
    return {"face_status": est.face_status, "face_label": label,
            "face_confidence": f"{est.face_confidence:.4f}" if label else ""}


def _voice_columns(est) -> dict:
    """What the voice expert said on the utterance, beside the fused label and the face's:
    ``voice_status`` (ok / uncertain / no_audio / disabled / error), why it is uncertain
    (``voice_reason``), its top class and probability ("" unless ok)."""
    if est is None:
        return {"voice_status": "", "voice_reason": "", "voice_label": "",
                "voice_confidence": ""}
    label = est.voice_label
    return {"voice_status": est.voice_status, "voice_reason": est.voice_reason,
            "voice_label": label,
            "voice_confidence": f"{est.voice_confidence:.4f}" if label else ""}


def labels_for(bag: Path, labels: Optional[str], ground_truth: list[dict]) -> list[dict]:
    if labels:
        return read_labels(labels)
    if (bag / "labels.csv").is_file():
        return read_labels(bag / "labels.csv")
    return [{k: g.get(k, "") for k in ("utterance_id", "start", "end", "speaker", "text",
                                       "label")} for g in ground_truth]


def match(labels: list[dict], estimates: list) -> list[tuple[dict, Any]]:
    """Each labelled turn -> the estimate overlapping it most (one estimate per turn)."""
    by_id = {e.utterance_id: e for e in estimates}
    used: set[int] = set()
    out = []
    starts = np.asarray([e.start for e in estimates]) if estimates else np.zeros(0)
    ends = np.asarray([e.end for e in estimates]) if estimates else np.zeros(0)
    for lab in labels:
        est = by_id.get(lab["utterance_id"]) if lab["utterance_id"] else None
        if est is None and len(starts):
            ov = np.minimum(ends, lab["end"]) - np.maximum(starts, lab["start"])
            ov[list(used)] = -np.inf
            i = int(np.argmax(ov))
            if ov[i] > 0:
                est = estimates[i]
                used.add(i)
        out.append((lab, est))
    return out


def metrics(pairs: list[tuple[dict, Any]], class_names: list[str]) -> dict:
    """Metrics of (label, estimate) pairs; those without an estimate or a label are left
    out (a lost turn is counted apart)."""
    got = [(lab["label"], est.label) for lab, est in pairs if est is not None and lab["label"]]
    return label_metrics([y for y, _ in got], [p for _, p in got], class_names)


def label_metrics(y_true: list[str], y_pred: list[str], class_names: list[str]) -> dict:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, recall_score
    if not y_true:
        return {}
    y = [t.lower() for t in y_true]
    p = [t.lower() for t in y_pred]
    names = [c.lower() for c in class_names]
    extra = sorted(set(y) - set(names))
    labels = names + extra
    f1s = f1_score(y, p, labels=labels, average=None, zero_division=0)
    return {"accuracy": float(accuracy_score(y, p)),
            "weighted_f1": float(f1_score(y, p, labels=labels, average="weighted",
                                          zero_division=0)),
            "macro_f1": float(f1_score(y, p, labels=labels, average="macro", zero_division=0)),
            # the mean recall over the classes present
            "uar": float(recall_score(y, p, labels=sorted(set(y)), average="macro",
                                      zero_division=0)),
            "per_class_f1": {c: float(f) for c, f in zip(labels, f1s)},
            "support": {c: int(sum(1 for t in y if t == c)) for c in labels},
            "confusion": confusion_matrix(y, p, labels=labels).tolist(),
            "confusion_labels": labels}


def plot_confusion(m: dict, path: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    cm = np.asarray(m["confusion"], float)
    labels = m["confusion_labels"]
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * len(labels), 0.8 + 0.6 * len(labels)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_latency(lat: np.ndarray, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(lat, bins=40)
    ax.axvline(np.percentile(lat, 50), color="k", ls="--", label="p50")
    ax.axvline(np.percentile(lat, 95), color="r", ls="--", label="p95")
    ax.set_xlabel("pipeline latency per utterance (ms)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_stats(values) -> dict:
    v = np.asarray([x for x in values if np.isfinite(x)], float)
    if not v.size:
        return {}
    return {"p50": float(np.percentile(v, 50)), "p95": float(np.percentile(v, 95)),
            "mean": float(v.mean()), "max": float(v.max())}


def format_line(utt_or_est: Any, est: Any) -> str:
    return (f"[{est.end:9.2f}s] {est.speaker_id or '?':>8}  {est.label:<9} "
            f"{est.confidence:4.2f}  {est.text[:70]!r}")


# --- one bag -----------------------------------------------------------------------------

#: report.html inlines each utterance's audio up to this much conversation (~16 MB an hour).
REPORT_AUDIO_MAX_SECONDS = 2 * 3600.0
#: Bumped when what a stored per-bag result holds, or how it is made, changes.
RESULT_FORMAT = 3


@dataclass(frozen=True)
class Settings:
    """What scoring a bag depends on, besides the bag: picklable, sent to each worker."""
    labels: Optional[str] = None
    model_dir: str = ""
    backend: str = "auto"
    precision: str = "auto"
    threads: int = 2
    config: str = str(DEFAULT_CONFIG)
    sets: tuple = ()
    asr: str = "bag"

    @cached_property
    def digest(self) -> str:
        """What a stored result depends on besides the bag (read once per run): the model's
        manifest (which holds the sha256 of each of its files), the voice expert's (none:
        the expert is off), the labels and the perception parameters the bag is replayed
        with."""
        model = Path(self.model_dir or default_model_dir())
        over, file = perception_overrides(self.config, self.sets)
        voice = Path(over.get("voice.model") or default_voice_model_dir()) / "manifest.json"
        parts = {"format": RESULT_FORMAT, "model": sha256_file(model / "manifest.json"),
                 "voice": sha256_file(voice) if voice.is_file() else "",
                 "backend": self.backend, "precision": self.precision, "asr": self.asr,
                 "perception": over, "perception_config": sha256_file(file) if file else "",
                 "labels": sha256_file(self.labels) if self.labels else ""}
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                              ).hexdigest()

    def key(self, bag: Path) -> str:
        """The stored result's name: the bag's bytes and :attr:`digest`."""
        return hashlib.sha256(f"{tree_sha256(bag)} {self.digest}".encode()).hexdigest()


def tree_sha256(folder: Path) -> str:
    """sha256 over a bag folder's files (names and bytes, in name order)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(f)))
    return h.hexdigest()


def score_bag(bag: Path, s: Settings, pipeline=None, on_estimate=None,
              progress=None) -> dict:
    """Replay one bag offline and match its labels: a plain dict (the rows of
    utterances.csv and what the metrics need), the same in a worker as here."""
    bag = Path(bag)
    if pipeline is None:
        pipeline = _worker_pipeline(s)
    pipeline.reset()
    cpu0 = time.process_time()
    asr_type = "embedded" if s.asr == "embedded" else bag_asr_type(bag)
    core = make_core(s.config, s.sets, pipeline, asr_type=asr_type)
    res = replay_bag(bag, core, pipeline, on_estimate=on_estimate, progress=progress)
    out = bag_record(bag, res, s.labels)
    out["cpu_s"] = time.process_time() - cpu0
    out.update(model_id=pipeline.model_id, backend=pipeline.backend_name,
               class_names=list(pipeline.class_names))
    return out


def bag_record(bag: Path, res, labels: Optional[str]) -> dict:
    """A replay's estimates matched to the bag's labels, as plain data."""
    labs = labels_for(bag, labels, res.ground_truth)
    pairs = match(labs, res.estimates)
    rows = []
    matched = {id(e) for _, e in pairs if e is not None}
    for lab, est in pairs:
        rows.append({"bag": bag.name, "utterance_id": lab["utterance_id"],
                     "start": lab["start"], "end": lab["end"], "speaker": lab["speaker"],
                     "text": lab["text"], "label": lab["label"], **estimate_columns(est)})
    for est in res.estimates:
        if id(est) not in matched:
            rows.append({"bag": bag.name, "utterance_id": est.utterance_id, "start": "",
                         "end": "", "speaker": "", "text": "", "label": "",
                         **estimate_columns(est)})
    return {"bag": str(bag), "duration_s": res.duration_s, "wall_s": res.wall_s,
            "estimates": len(res.estimates), "labelled": len(labs),
            "lost": sum(1 for _, e in pairs if e is None),
            # why utterances came out as they did (timed_audio_incomplete, ...)
            "perception": res.stats.get("counters", {}), "refused": dict(res.refused),
            "rows": rows, "latency_ms": [e.latency_ms for e in res.estimates],
            "pairs": [[lab["label"], est.label if est is not None else None]
                      for lab, est in pairs],
            # each sense's label of the pairs metrics() scores (a labelled turn's estimate)
            "senses": [[lab["label"], sense_labels(est)] for lab, est in pairs
                       if est is not None and lab["label"]],
            "heard": [[lab["text"], est.text] for lab, est in pairs if est is not None]}


def estimate_columns(est) -> dict:
    return {"predicted": est.label if est else "",
            "confidence": f"{est.confidence:.4f}" if est else "",
            "text_label": est.text_label if est else "",  # the text model alone
            "heard": est.text if est else "",
            "est_speaker": est.speaker_id if est else "",
            "est_start": f"{est.start:.3f}" if est else "",
            "est_end": f"{est.end:.3f}" if est else "",
            "latency_ms": f"{est.latency_ms:.2f}" if est else "", "lost": est is None,
            **_face_columns(est), **_voice_columns(est)}


_PIPELINES: dict = {}


def _worker_pipeline(s: Settings):
    """A worker's pipeline, loaded once per process for the settings it serves (a Ray
    worker runs many bags); the process's thread counts are set by its first piece."""
    key = (s.model_dir, s.backend, s.precision, s.threads)
    if key not in _PIPELINES:
        over, _ = perception_overrides(s.config, s.sets)
        process.configure(torch_threads=torch_threads(over), by="erc_ros eval-bag worker")
        _PIPELINES.clear()
        _PIPELINES[key] = make_pipeline(s.model_dir, s.backend, s.precision, s.threads)
    return _PIPELINES[key]


def _score_stored(bag: str, s: Settings, key: str, store: Optional[str]) -> dict:
    """A worker's piece: score the bag and keep the result under ``store`` (the job's
    stored results, when the worker shares the file system; the caller keeps it too)."""
    out = score_bag(Path(bag), s)
    if store:
        save_result(Path(store), key, out)
    return out


def results_dir() -> Path:
    return cache_root() / "eval_bag"


def load_result(store: Path, key: str) -> Optional[dict]:
    f = store / f"{key}.json"
    try:
        return json.loads(f.read_text()) if f.is_file() else None
    except (OSError, ValueError):  # a torn file: scored again
        return None


def save_result(store: Path, key: str, result: dict) -> None:
    try:
        store.mkdir(parents=True, exist_ok=True)
        tmp = store / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(result))
        os.replace(tmp, store / f"{key}.json")
    except OSError as e:  # a full disk costs the resume, not the run
        print(f"eval-bag: warning: cannot keep the result in {store} ({e})", file=sys.stderr)


# --- many bags -------------------------------------------------------------------------------

def evaluate(bags: list[str], labels: Optional[str] = None, model_dir: str = "",
             backend: str = "auto", precision: str = "auto", threads: int = 2,
             config: str | Path = DEFAULT_CONFIG, live: bool = False, rate: float = 1.0,
             out: Optional[Path] = None, quiet: bool = True, on_estimate=None,
             sets: tuple = (), progress_bar: bool = True, asr: str = "bag",
             workers: int = 0, ray_address: Optional[str] = None, resume: bool = True,
             store: Optional[Path] = None, machine: Optional[dict] = None) -> dict:
    """Score ``bags``; ``asr``: ``bag`` reads the bag's own ASR topic, ``embedded`` ignores
    it and recognizes the bag's audio with the node's recognizer (asr_type embedded).

    ``workers`` (a local Ray of that many CPUs) or ``ray_address`` (a cluster): one Ray
    task per bag (:mod:`erc_ros.jobs`), the same :func:`score_bag`. A bag that fails is
    listed in ``failed`` with its reason; the others are scored. Offline, each bag's
    result is kept under ``store`` (default ``<cache>/eval_bag``) by :meth:`Settings.key`,
    and ``resume`` reads it back instead of scoring the bag again."""
    if asr not in ("bag", "embedded"):
        raise ValueError(f"asr must be 'bag' or 'embedded', got {asr!r}")
    parallel = bool(workers) or bool(ray_address)
    if live and parallel:
        raise ValueError("--live replays through this machine's nodes in real time; "
                         "--workers / --ray-address score offline")

    t_start = time.perf_counter()
    s = Settings(labels, model_dir, backend, precision, threads, str(config), tuple(sets), asr)
    s, asr_choice = pin_recognizer(s)
    store = Path(store) if store else results_dir()
    bags = [Path(b) for b in bags]
    spans = {}
    for b in bags:
        try:
            start, end = bag_span(b)
            spans[b] = end - start
        except Exception:  # noqa: BLE001 -- unreadable: reported when it is scored
            spans[b] = 0.0
    bar = tqdm(total=sum(spans.values()), unit="bag-s", desc="eval-bag", mininterval=2.0,
               disable=not progress_bar)
    records: dict[Path, dict] = {}
    failed: list[dict] = []
    resumed = 0
    keys: dict[Path, str] = {}
    todo = []
    for b in bags:
        if live:
            todo.append(b)
            continue
        try:
            keys[b] = s.key(b)
        except Exception as e:  # noqa: BLE001 -- e.g. a bag folder that cannot be read
            failed.append({"bag": str(b), "error": describe(e)})
            continue
        got = load_result(store, keys[b]) if resume else None
        if got is not None:
            records[b] = got
            resumed += 1
            bar.update(spans[b])
        else:
            todo.append(b)
    if resumed:
        tqdm.write(f"eval-bag: {resumed} bag(s) already scored with these settings "
                   f"(kept in {store}); {len(todo)} to go", file=sys.stderr)

    def on_est(utt, est):
        if on_estimate is not None:
            on_estimate(utt, est)
        elif not quiet:
            tqdm.write(format_line(utt, est))

    pipeline = None
    ray_info: dict = {}
    if parallel and todo:
        with jobs.RayJobs(workers, ray_address, cpus_per_piece=1) as ray_jobs:
            ray_info = {"address": ray_address or "local", "cpus": ray_jobs.cpus,
                        "start_s": ray_jobs.start_seconds}
            pieces = [(b, (str(b), s, keys[b], str(store))) for b in todo]
            for o in ray_jobs.map(_score_stored, pieces):
                bar.update(spans[o.key])
                if o.ok:
                    records[o.key] = o.value
                    if not (store / f"{keys[o.key]}.json").is_file():  # a worker's own disks
                        save_result(store, keys[o.key], o.value)
                else:
                    failed.append({"bag": str(o.key), "error": o.error})
                    tqdm.write(f"eval-bag: {o.key}: {o.error}", file=sys.stderr)
            ray_info["pieces"] = len(pieces)
    else:
        for b in todo:
            if pipeline is None:
                pipeline = make_pipeline(model_dir, backend, precision, threads)
            done = [0.0]

            def progress(sec, done=done):
                bar.update(sec - done[0])
                done[0] = sec

            o = run_piece(_score_one, b, (b, s, pipeline, live, rate, on_est, progress))
            bar.update(spans[b] - done[0])
            if o.ok:
                records[b] = o.value
                if not live:
                    save_result(store, keys[b], o.value)
            else:
                failed.append({"bag": str(b), "error": o.error})
                tqdm.write(f"eval-bag: {b}: {o.error}", file=sys.stderr)
    bar.close()
    per_bag = [records[b] for b in bags if b in records]  # in the order given
    if pipeline is None and not per_bag:
        pipeline = make_pipeline(model_dir, backend, precision, threads)
    info = ({"model_id": pipeline.model_id, "backend": pipeline.backend_name,
             "class_names": list(pipeline.class_names)} if pipeline is not None else per_bag[0])
    result, rows = aggregate(per_bag, info, live=live, asr=asr, sets=sets)
    result.update(failed=failed, resumed=resumed, elapsed_s=time.perf_counter() - t_start,
                  workers=ray_info)
    if asr_choice:
        result["asr_model"] = asr_choice
    if machine:
        result["machine"] = machine
    if out is not None:
        write_outputs(Path(out), result, rows, bags)
    return result


def pin_recognizer(s: Settings) -> tuple[Settings, Optional[dict]]:
    """``--asr embedded`` with ``perception.asr.model: auto``: the recognizer chosen once,
    here, for the whole run (by the timed decodes of :class:`~erc_ros.core.asr
    .WhisperRecognizer`) and pinned in the settings, so every bag and every worker runs the
    same model, and a stored result names the model it was scored with."""
    if s.asr != "embedded":
        return s, None
    over, file = perception_overrides(s.config, s.sets)
    cfg = perception_config(over, file).asr
    if cfg.model != AUTO:
        return s, {"model": cfg.model, "reason": "configured"}
    rec = WhisperRecognizer(cfg).load()
    choice = dict(rec.choice)
    rec.close()
    print(f"eval-bag: recognizer {choice['model']} for every bag ({choice['reason']})",
          file=sys.stderr)
    return replace(s, sets=s.sets + (f"perception.asr.model={choice['model']}",)), choice


def _score_one(bag: Path, s: Settings, pipeline, live: bool, rate: float, on_est,
               progress) -> dict:
    if not live:
        return score_bag(bag, s, pipeline, on_estimate=on_est, progress=progress)
    cpu0 = time.process_time()
    res = live_replay(bag, config=s.config, model_dir=s.model_dir, backend=s.backend,
                      precision=s.precision, threads=s.threads, rate=rate,
                      on_estimate=on_est, progress=progress, sets=parse_sets(s.sets),
                      asr_type="embedded" if s.asr == "embedded" else "")
    out = bag_record(bag, res, s.labels)
    out["cpu_s"] = time.process_time() - cpu0  # this process (not the nodes' threads)
    return out


def aggregate(per_bag: list[dict], info: dict, live: bool = False, asr: str = "bag",
              sets: tuple = ()) -> tuple[dict, list[dict]]:
    """The run's metrics and utterance rows from its bags' records (in order)."""
    rows = [r for b in per_bag for r in b["rows"]]
    lat = [x for b in per_bag for x in b["latency_ms"]]
    refused: dict[str, int] = {}
    for b in per_bag:
        for k, v in b["refused"].items():
            refused[k] = refused.get(k, 0) + v
    dur = sum(b["duration_s"] for b in per_bag)
    wall = sum(b["wall_s"] for b in per_bag)
    cpu_s = sum(b.get("cpu_s", 0.0) for b in per_bag)
    n_utt = sum(b["labelled"] for b in per_bag)
    n_est = sum(b["estimates"] for b in per_bag)
    keep = ("bag", "duration_s", "wall_s", "estimates", "labelled", "lost", "perception")
    result = {"bags": [{k: b[k] for k in keep} for b in per_bag],
              "mode": "live" if live else "offline", "asr": asr,
              "overrides": parse_sets(sets),
              "model_id": info["model_id"], "backend": info["backend"],
              "duration_s": dur, "wall_s": wall,
              "realtime_factor": dur / wall if wall else float("inf"),
              # conversation seconds per CPU second: the speed on an idle machine if the
              # work parallelised perfectly over the CPUs it used
              "cpu_s": cpu_s, "realtime_factor_per_cpu": dur / cpu_s if cpu_s else 0.0,
              "utterances": n_utt if n_utt else n_est, "estimates": n_est,
              "lost": sum(b["lost"] for b in per_bag),
              "refused": refused, "latency_ms": latency_stats(lat),
              # the machine is shared: the load during the run says how to read the speed
              "load_average_1m_after": os.getloadavg()[0], "cpus": os.cpu_count()}
    pairs = [p for b in per_bag for p in b["pairs"] if p[1] is not None and p[0]]
    result.update(label_metrics([t for t, _ in pairs], [p for _, p in pairs],
                                info["class_names"]))
    senses = [p for b in per_bag for p in b["senses"]]
    if senses:
        result["senses"] = sense_scores([t for t, _ in senses],
                                        {s: [g[s] for _, g in senses] for s in SENSES},
                                        info["class_names"], label_metrics, SENSE_FIGURES)
    if asr == "embedded":  # how well the recognizer heard the labelled turns
        heard = [h for b in per_bag for h in b["heard"]]
        result["asr_word_errors"] = word_errors([r for r, _ in heard], [h for _, h in heard])
    return result, rows


def write_outputs(out: Path, result: dict, rows: list[dict], bags: list[Path] = ()) -> None:
    """utterances.csv, metrics.json, summary.md, the two PNGs and report.html (with each
    utterance's audio from ``bags``)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "utterances.csv", "w", newline="") as f:
        w = csv.DictWriter(f, list(rows[0]) if rows else ["bag"])
        w.writeheader()
        w.writerows(rows)
    if "weighted_f1" in result:
        plot_confusion(result, out / "confusion.png",
                       f"{result['model_id']}: weighted F1 {result['weighted_f1']:.3f}")
    lat = [float(r["latency_ms"]) for r in rows if r.get("latency_ms") not in ("", None)]
    if lat and np.isfinite(lat).any():
        plot_latency(np.asarray([x for x in lat if np.isfinite(x)]), out / "latency.png")
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    (out / "summary.md").write_text(summary_markdown(result))
    scored = {Path(b["bag"]).name for b in result["bags"]}
    audio = None
    if result["duration_s"] <= REPORT_AUDIO_MAX_SECONDS:
        audio = bags_audio([b for b in bags if Path(b).name in scored])
    else:
        print(f"eval-bag: {result['duration_s'] / 3600:.1f} h of conversation: report.html "
              f"without its audio (at most {REPORT_AUDIO_MAX_SECONDS / 3600:g} h, ~4.5 kB a "
              f"second of speech)", file=sys.stderr)
    write_report(out / "report.html", result, rows, audio=audio)


def machine_line(m: dict) -> str:
    return line(m)


def summary_markdown(r: dict) -> str:
    lines = [f"# eval-bag ({r['mode']}, ASR: {r.get('asr', 'bag')})", "",
             f"- model `{r['model_id']}` on `{r['backend']}`",
             f"- {len(r['bags'])} bag(s), {r['duration_s'] / 60:.1f} min of conversation in "
             f"{r['wall_s']:.1f} s: **{r['realtime_factor']:.1f}x real time** (load average "
             f"{r.get('load_average_1m_after', float('nan')):.1f} on {r.get('cpus')} CPUs; "
             f"{r.get('realtime_factor_per_cpu', 0):.1f}x per CPU-second)",
             *([f"- machine: {machine_line(r['machine'])}"] if r.get("machine") else []),
             f"- {r['utterances']} labelled utterances, {r['estimates']} estimates, "
             f"**{r['lost']} lost**"]
    w = r.get("workers") or {}
    on = (f" ({w['pieces']} bag(s) scored on Ray: {w['address']}, {w['cpus']} CPUs, started "
          f"in {w['start_s']:.1f} s)") if w else " (in this process)"
    if "elapsed_s" in r:
        lines.append(f"- the whole run took {r['elapsed_s']:.1f} s{on}")
    if r.get("resumed"):
        lines.append(f"- {r['resumed']} bag(s) read back from an earlier run (same bag, "
                     f"model and settings; --fresh scores them again)")
    if r.get("failed"):
        lines.append(f"- **{len(r['failed'])} bag(s) failed** and are not in the figures:")
        lines += [f"  - `{f['bag']}`: {f['error']}" for f in r["failed"]]
    if r.get("latency_ms"):
        L = r["latency_ms"]
        lines.append(f"- pipeline latency per utterance: p50 {L['p50']:.1f} ms, "
                     f"p95 {L['p95']:.1f} ms")
    if r.get("refused"):
        lines.append(f"- refused input: {r['refused']}")
    if r.get("asr_word_errors"):
        w = r["asr_word_errors"]
        a = r.get("asr_model") or {}
        if a:
            lines.append(f"- recognizer: {a['model']} ({a['reason']})")
        lines.append(f"- embedded ASR: word error rate {100 * w['wer']:.1f} % against the labels' "
                     f"text ({w['words']} words of the matched turns)")
    if "weighted_f1" in r:
        lines += [f"- accuracy {r['accuracy']:.3f}, **weighted F1 {r['weighted_f1']:.3f}**, "
                  f"macro F1 {r['macro_f1']:.3f}", "", "| class | F1 | support |",
                  "|---|---|---|"]
        lines += [f"| {c} | {f:.3f} | {r['support'][c]} |" for c, f in r["per_class_f1"].items()]
    if r.get("senses"):
        sv = r["senses"]
        lines += ["", "each sense of the estimate alone on the same utterances (fused: the "
                  "published label; a sense that did not read is wrong):", "",
                  "| | " + " | ".join(sv) + " |", "|---|" + "---|" * len(sv)]
        lines += [f"| {name} | " + " | ".join(f"{m[k]:.3f}" for m in sv.values()) + " |"
                  for k, name in (("weighted_f1", "weighted F1"), ("uar", "UAR"),
                                  ("accuracy", "accuracy"))]
        lines.append("| read on | " + " | ".join(str(m["read"]) for m in sv.values()) + " |")
    return "\n".join(lines) + "\n"


def run(args) -> int:
    out = Path(args.out) if args.out else Path("runs") / "eval_bag" / time.strftime(
        "%Y%m%d-%H%M%S")
    for b in args.bags:
        if not Path(b).exists():
            print(f"eval-bag: no such bag {b}", file=sys.stderr)
            return 2
    if jobs.wanted(args) and args.live:
        print("eval-bag: --live replays through this machine's nodes in real time; "
              "--workers / --ray-address score offline", file=sys.stderr)
        return 2
    if sets_refused(args, "eval-bag"):
        return 2
    m = machine.describe(args.threads)  # the speed figures' machine, measured first
    try:
        r = evaluate(args.bags, args.labels, args.model_dir, args.backend, args.precision,
                     args.threads, args.config, args.live, args.rate, out, quiet=args.quiet,
                     sets=tuple(args.set), asr=args.asr, workers=args.workers,
                     ray_address=args.ray_address, resume=not args.fresh, machine=m)
    except RuntimeError as e:  # e.g. Ray not installed
        print(f"eval-bag: {e}", file=sys.stderr)
        return 2
    print(summary_markdown(r))
    print(f"wrote {out}/ (report.html, utterances.csv, summary.md, metrics.json, "
          f"confusion.png)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(r, indent=2))
    if r["failed"]:
        print(f"eval-bag: {len(r['failed'])} of {len(args.bags)} bag(s) failed (listed above)",
              file=sys.stderr)
        return 1
    return 0
