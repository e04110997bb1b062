"""The HTML report of an eval-bag run: one self-contained file to open in any browser.

:func:`write_report` renders ``templates/report.html.j2`` (Jinja2, autoescaped: the texts
are user data) with eval-bag's metrics and the rows of its ``utterances.csv``: a header of
the run's figures and failed bags; a timeline per bag, one lane per speaker, each turn a box
coloured by the predicted emotion with the true label beside it (wrong ones outlined, lost
turns grey); the confusion matrix, per-class F1 and latency histogram (plotly, its
JavaScript inlined once); the most confident errors; the table of every utterance; filters
(speaker, true class, predicted class, wrong only) in plain JavaScript. Nothing is loaded
from the network.

Audio: :func:`bag_audio` reads a bag's audio topics through the nodes' own input path
(:class:`erc_ros.ros.ingest.Ingest` into the perception core's
:class:`~erc_ros.core.audio_buffer.AudioBuffer`), so a span ``[start, end]`` on the time axis
of eval-bag's labels and estimates (the audio header stamps, bag seconds) is the audio the
core cut that utterance from. Each utterance's clip is embedded as Ogg/Vorbis in a ``data:``
URI.
"""
from __future__ import annotations

import base64
import dataclasses
import io
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import soundfile as sf

from erc_ros.core.audio_buffer import AudioBuffer
from erc_ros.core.config import AudioConfig
from erc_ros.core.types import SAMPLE_RATE
from erc_ros.ros.ingest import KIND_OF_TYPE, Ingest
from erc_ros.ros.live import bag_connections
from erc_ros.ros.replay import bag_span, message_class, read_bag

#: ``audio(bag_name, start_s, end_s)`` -> float32 mono 16 kHz samples of that span, or None.
AudioSource = Callable[[str, float, float], Optional[np.ndarray]]

#: Audio kept around each utterance's span in its clip (seconds, each side).
CLIP_PAD_S = 0.1
#: Longest clip embedded (seconds from the span's start): a page stays a few MB per hour.
MAX_CLIP_S = 30.0
#: libsndfile's compression level of the Vorbis clips (0 best quality .. 1 smallest).
CLIP_COMPRESSION = 0.8
#: The most confident wrong predictions listed.
WORST_ERRORS = 20
#: What eval-bag's ``latency_ms`` measures (the latency histogram's title).
PIPELINE_LATENCY = "Pipeline latency per utterance"

#: Colours of the emotion classes (MELD's seven; others take the fallback colours in turn).
EMOTION_COLOURS = {"anger": "#e53935", "disgust": "#7cb342", "fear": "#8e24aa",
                   "joy": "#fdd835", "neutral": "#90a4ae", "sadness": "#1e88e5",
                   "surprise": "#fb8c00"}
_FALLBACK_COLOURS = ("#00897b", "#d81b60", "#6d4c41", "#3949ab", "#c0ca33", "#5e35b1",
                     "#f4511e", "#039be5")


# --- audio -----------------------------------------------------------------------------------

class _AudioTrack:
    """What an :class:`~erc_ros.ros.ingest.Ingest` feeds (a
    :class:`~erc_ros.ros.ingest.PerceptionInput`) where only the audio is wanted: keeps
    every audio chunk it is given in the core's AudioBuffer (``config``: the core's
    AudioConfig), sized to hold the whole bag (64 kB a second of it). An epoch the buffer
    ends (a clock jump or reset) is kept aside."""

    def __init__(self, capacity_s: float, config=None):
        a = dataclasses.replace(config or AudioConfig(), capacity_seconds=capacity_s)
        self.ended: list[tuple[float, np.ndarray]] = []  # (time of sample 0, samples)
        self.buffer = AudioBuffer(a, on_discontinuity=self._end_epoch)

    def _end_epoch(self, _kind: str) -> None:
        b = self.buffer
        if b.n_end > b.n_start:
            self.ended.append((b.t_start, b.read_index(b.n_start, b.n_end)))

    def push_audio(self, chunk) -> None:
        self.buffer.push(chunk)

    def push_frame(self, frame) -> None:  # only audio topics are fed
        pass

    def push_transcript(self, ev) -> None:
        pass

    def read(self, start: float, end: float) -> Optional[np.ndarray]:
        """[start, end) of the epoch that holds most of it (zeros where nothing was
        recorded), None when none holds any."""
        b = self.buffer
        best, overlap = None, 0.0
        for t0, x in self.ended:
            ov = min(end, t0 + len(x) / SAMPLE_RATE) - max(start, t0)
            if ov > overlap:
                best, overlap = (t0, x), ov
        if b.n_end > b.n_start and min(end, b.t_end) - max(start, b.t_start) > overlap:
            return b.read(start, end)
        if best is None:
            return None
        t0, x = best
        i0, i1 = (int(round((t - t0) * SAMPLE_RATE)) for t in (start, end))
        out = np.zeros(i1 - i0, np.float32)
        lo, hi = max(i0, 0), min(i1, len(x))
        out[lo - i0:hi - i0] = x[lo:hi]
        return out


#: Ingest kinds that carry or describe the microphone's audio.
_AUDIO_KINDS = ("audio_stamped", "audio", "audio_info")


class BagAudio:
    """The audio of one bag as the perception core buffered it, read on first use.

    Call it as ``audio(bag_name, start_s, end_s)`` (an :data:`AudioSource`; ``bag_name`` is
    not checked): float32 mono 16 kHz samples of that span on the bag's audio time axis
    (zeros where nothing was recorded), or None when the span holds no recorded audio.
    :meth:`release` drops the samples (read again on the next call)."""

    def __init__(self, bag: Path, topics: Iterable[str], config=None):
        self.bag = Path(bag)
        self.topics = set(topics)
        self.config = config
        self._track: Optional[_AudioTrack] = None
        #: Audio input the nodes would refuse, by reason (left out here as there).
        self.refused: dict[str, int] = {}

    def load(self) -> _AudioTrack:
        if self._track is None:
            from rclpy.serialization import deserialize_message

            start, end = bag_span(self.bag)
            track = _AudioTrack(end - start + 10.0, self.config)
            ingest = Ingest(track)
            classes: dict[str, Any] = {}
            for topic, typename, t_ns, raw in read_bag(self.bag, self.topics):
                cls = classes.get(typename) or classes.setdefault(typename,
                                                                  message_class(typename))
                try:
                    msg = deserialize_message(raw, cls)
                except Exception:  # a corrupt record, as the replay counts it
                    ingest.health.refuse("deserialize", topic)
                    continue
                # the replay's receipt time: the record time (unstamped audio is placed by it)
                ingest.feed(KIND_OF_TYPE[typename], msg, t_ns / 1e9, topic)
            track.buffer.flush()
            self.refused = dict(ingest.health.refused)
            self._track = track
        return self._track

    def release(self) -> None:
        self._track = None

    def __call__(self, bag_name: str, start_s: float, end_s: float) -> Optional[np.ndarray]:
        return self.load().read(start_s, end_s) if end_s > start_s else None


def bag_audio(bag: Path, config=None) -> Optional[BagAudio]:
    """An :data:`AudioSource` for ``bag``'s audio topics (every ``audio_common_msgs``
    AudioData / AudioDataStamped topic and its AudioInfo, merged as the node merges them),
    or None when the bag has none. ``config``: the perception core's
    :class:`~erc_ros.core.config.AudioConfig` (its defaults when None). The bag is read on the
    first call: building one per bag costs nothing until the report asks for clips."""
    kinds = {t: KIND_OF_TYPE.get(typ) for t, typ in bag_connections(bag).items()}
    topics = {t for t, k in kinds.items() if k in _AUDIO_KINDS}
    if all(kinds[t] == "audio_info" for t in topics):
        return None
    return BagAudio(bag, topics, config)


def bags_audio(bags: Iterable[Path], config=None) -> Optional[AudioSource]:
    """One :data:`AudioSource` for several bags, by bag folder name; only the bag asked for
    last stays in memory (:func:`write_report` asks bag by bag). None when no bag has audio."""
    sources = {Path(b).name: bag_audio(Path(b), config) for b in bags}
    sources = {k: v for k, v in sources.items() if v is not None}
    if not sources:
        return None
    current: list[Optional[BagAudio]] = [None]

    def audio(bag_name: str, start_s: float, end_s: float) -> Optional[np.ndarray]:
        src = sources.get(bag_name)
        if src is None:
            return None
        if current[0] is not src:
            if current[0] is not None:
                current[0].release()
            current[0] = src
        return src(bag_name, start_s, end_s)

    return audio


def clip_uri(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> str:
    """Mono float samples -> ``data:audio/ogg;base64,...`` (Ogg/Vorbis at ~26 kbit/s for 16
    kHz speech: ~4.5 kB a second of base64; libsndfile's Opus encoder is 13x slower)."""
    x = np.clip(np.asarray(samples, np.float32), -1.0, 1.0)
    buf = io.BytesIO()
    with sf.SoundFile(buf, "w", sample_rate, 1, format="OGG", subtype="VORBIS",
                      compression_level=CLIP_COMPRESSION) as f:
        f.write(x)
    return "data:audio/ogg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --- rows ------------------------------------------------------------------------------------

def _num(v: Any) -> Optional[float]:
    """A CSV cell or a number -> float, None when missing ("", None, NaN)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def _flag(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _text(v: Any) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def utterances(rows: list[dict]) -> list[dict]:
    """eval-bag's rows (strings as in utterances.csv, or numbers) -> the report's records:
    ``said`` (the label's text) and ``heard`` (the estimate's), ``true`` / ``pred`` (lower
    case, "" when missing), the span drawn (``t0``, ``t1``: the label's, else the
    estimate's), the lane, and whether it is ``lost``, ``unlabelled`` or ``wrong``."""
    out = []
    for i, r in enumerate(rows):
        true = _text(r.get("label")).strip().lower()
        pred = _text(r.get("predicted")).strip().lower()
        lost = _flag(r.get("lost")) or (bool(true) and not pred)
        start, end = _num(r.get("start")), _num(r.get("end"))
        est_start, est_end = _num(r.get("est_start")), _num(r.get("est_end"))
        said, heard = _text(r.get("text")), r.get("heard")
        if heard is None and not true and not lost:  # an older CSV: no `heard` column
            said, heard = "", said
        t0 = start if start is not None else est_start
        t1 = end if end is not None else est_end
        if t0 is None or t1 is None:
            t0 = t1 = None
        speaker = _text(r.get("speaker")) if true or lost else ""
        est_speaker = _text(r.get("est_speaker"))
        out.append({
            "idx": i, "bag": _text(r.get("bag")), "id": _text(r.get("utterance_id")),
            "lane": speaker or est_speaker or "unknown", "speaker": speaker,
            "est_speaker": est_speaker, "start": start, "end": end, "est_start": est_start,
            "est_end": est_end, "t0": t0, "t1": t1, "said": said, "heard": _text(heard),
            "true": true, "pred": pred, "conf": _num(r.get("confidence")),
            "latency": _num(r.get("latency_ms")), "text_label": _text(r.get("text_label")),
            "face_status": _text(r.get("face_status")),
            "face_label": _text(r.get("face_label")), "face_conf": _num(r.get("face_confidence")),
            "voice_status": _text(r.get("voice_status")),
            "voice_reason": _text(r.get("voice_reason")),
            "voice_label": _text(r.get("voice_label")),
            "voice_conf": _num(r.get("voice_confidence")),
            "lost": lost, "unlabelled": not true and not lost,
            "wrong": bool(true) and bool(pred) and true != pred,
            # set by _bag_views: seconds from the bag's first turn, place on its timeline
            "rel0": None, "rel1": None, "left": None, "width": None, "est_left": None,
            "est_width": None})
    return out


def _clip_span(u: dict) -> Optional[tuple[float, float]]:
    """The labelled span and the estimate's together, padded: what was said and what the
    model heard."""
    ends = [(a, b) for a, b in ((u["start"], u["end"]), (u["est_start"], u["est_end"]))
            if a is not None and b is not None and b > a]
    if not ends:
        return None
    t0 = min(a for a, _ in ends) - CLIP_PAD_S
    t1 = max(b for _, b in ends) + CLIP_PAD_S
    return t0, min(t1, t0 + MAX_CLIP_S)


def attach_clips(utts: list[dict], audio: AudioSource, bag_order: list[str]) -> dict:
    """Each utterance's clip as ``u["clip"]`` (a data URI, or "" without audio), bag by bag
    (an :data:`AudioSource` over several bags keeps one in memory). A bag whose audio cannot
    be read gets no clips: {bag name: the error}."""
    problems: dict[str, str] = {}
    order = {b: i for i, b in enumerate(bag_order)}
    for u in sorted(utts, key=lambda u: (order.get(u["bag"], len(order)), u["idx"])):
        u["clip"] = ""
        span = _clip_span(u)
        if span is None or u["bag"] in problems:
            continue
        try:
            x = audio(u["bag"], *span)
        except Exception as err:  # the report still comes out, without this bag's audio
            problems[u["bag"]] = f"{type(err).__name__}: {err}"
            continue
        if x is not None and len(x):
            u["clip"] = clip_uri(x)
    return problems


# --- page ------------------------------------------------------------------------------------

def emotion_colours(names: Iterable[str]) -> dict[str, str]:
    """A colour per class name (the fixed ones first, the fallback colours in turn)."""
    out, k = {}, 0
    for n in names:
        if n and n not in out:
            out[n] = EMOTION_COLOURS.get(n) or _FALLBACK_COLOURS[k % len(_FALLBACK_COLOURS)]
            k += n not in EMOTION_COLOURS
    return out


def _ink(colour: str) -> str:
    """Black or white text, whichever reads better on ``colour`` (#rrggbb)."""
    r, g, b = (int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))
    lum = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return "#111" if lum > 0.5 else "#fff"


def _figures(result: dict, utts: list[dict], colours: dict[str, str],
             latency_title: str = PIPELINE_LATENCY) -> dict[str, dict]:
    """The charts as plotly JSON specs (data, layout), by element id."""
    import plotly.graph_objects as go
    base = dict(template="plotly_white", margin=dict(l=60, r=20, t=40, b=50), height=360,
                font=dict(family="system-ui, -apple-system, Segoe UI, sans-serif", size=12))
    figs = {}
    labels = list(result.get("confusion_labels") or [])
    if result.get("confusion") and labels:
        cm = np.asarray(result["confusion"], float)
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        hover = [[f"true {t}<br>predicted {p}<br>{int(cm[i, j])} of {int(cm[i].sum())}"
                  f" ({100 * norm[i, j]:.0f} %)" for j, p in enumerate(labels)]
                 for i, t in enumerate(labels)]
        fig = go.Figure(go.Heatmap(
            z=norm, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1,
            text=cm.astype(int), texttemplate="%{text}", hovertext=hover,
            hoverinfo="text", colorbar=dict(title=dict(text="row share"), thickness=12)))
        fig.update_layout(title=dict(text="Confusion (counts; colour: share of the true class)",
                                     font=dict(size=13)), **base)
        fig.update_xaxes(title="predicted", side="bottom", tickangle=-35)
        fig.update_yaxes(title="true", autorange="reversed")
        figs["fig-confusion"] = fig
    f1 = result.get("per_class_f1") or {}
    if f1:
        support = result.get("support") or {}
        names = list(f1)
        fig = go.Figure(go.Bar(
            x=names, y=[f1[n] for n in names], marker_color=[colours.get(n, "#888")
                                                              for n in names],
            marker_line=dict(color="#555", width=0.5),
            text=[f"{f1[n]:.2f}" for n in names], textposition="outside",
            customdata=[support.get(n, 0) for n in names],
            hovertemplate="%{x}: F1 %{y:.3f}<br>support %{customdata}<extra></extra>"))
        title = "F1 per class"
        if "weighted_f1" in result:
            fig.add_hline(y=result["weighted_f1"], line_dash="dash", line_color="#333")
            title += f" (dashed: weighted F1 {result['weighted_f1']:.3f})"
        fig.update_layout(title=dict(text=title, font=dict(size=13)), **base)
        fig.update_yaxes(range=[0, 1.1], title="F1")
        fig.update_xaxes(tickangle=-35)
        figs["fig-f1"] = fig
    lat = [u["latency"] for u in utts if u["latency"] is not None]
    if lat:
        fig = go.Figure(go.Histogram(x=lat, nbinsx=min(40, max(5, len(lat) // 3)),
                                     marker_color="#5c6bc0",
                                     hovertemplate="%{x} ms: %{y}<extra></extra>"))
        for q, dash, side in ((50, "dash", "top left"), (95, "dot", "top right")):
            v = float(np.percentile(lat, q))
            fig.add_vline(x=v, line_dash=dash, line_color="#c62828",
                          annotation_text=f"p{q} {v:.1f} ms", annotation_position=side)
        fig.update_layout(title=dict(text=latency_title, font=dict(size=13)),
                          bargap=0.05, **base)
        fig.update_xaxes(title="ms")
        fig.update_yaxes(title="utterances")
        figs["fig-latency"] = fig
    return {k: json.loads(f.to_json()) for k, f in figs.items()}


def _bag_views(result: dict, utts: list[dict]) -> list[dict]:
    """One timeline per bag: its lanes (speakers in order of appearance), its time origin
    and span, and a few figures of its own."""
    order = [Path(str(b.get("bag", ""))).name for b in result.get("bags") or []]
    order += [u["bag"] for u in utts if u["bag"] not in order]
    per_bag = {Path(str(b.get("bag", ""))).name: b for b in result.get("bags") or []}
    views = []
    for name in dict.fromkeys(order):
        mine = [u for u in utts if u["bag"] == name and u["t0"] is not None]
        if not mine:
            continue
        mine.sort(key=lambda u: u["t0"])
        origin = min([u["t0"] for u in mine] +
                     [u["est_start"] for u in mine if u["est_start"] is not None])
        span = max(max([u["t1"] for u in mine] +
                       [u["est_end"] for u in mine if u["est_end"] is not None]) - origin, 1.0)
        lanes = list(dict.fromkeys(u["lane"] for u in mine))
        for u in mine:  # the page places boxes in per cent of the bag's span
            u["rel0"], u["rel1"] = u["t0"] - origin, u["t1"] - origin
            u["left"] = 100.0 * u["rel0"] / span
            u["width"] = 100.0 * max(u["t1"] - u["t0"], 0.0) / span
            if u["est_start"] is not None and u["est_end"] is not None and u["true"]:
                u["est_left"] = 100.0 * (u["est_start"] - origin) / span
                u["est_width"] = 100.0 * max(u["est_end"] - u["est_start"], 0.0) / span
        scored = [u for u in mine if u["true"] and u["pred"]]
        info = per_bag.get(name, {})
        views.append({
            "name": name, "origin": origin, "span": span, "lanes": lanes,
            "utts": mine, "duration_s": info.get("duration_s"), "wall_s": info.get("wall_s"),
            "labelled": sum(1 for u in mine if u["true"]),
            "estimates": sum(1 for u in mine if u["pred"]),
            "lost": sum(1 for u in mine if u["lost"]),
            "accuracy": (sum(1 for u in scored if not u["wrong"]) / len(scored)
                         if scored else None)})
    return views


def _jsonable(u: dict) -> dict:
    """What the page's script shows of an utterance (the clip stays in its <audio>)."""
    return {k: v for k, v in u.items() if k != "clip"}


def render(result: dict, rows: list[dict], audio: Optional[AudioSource] = None,
           title: str = "eval-bag", subtitle: str = "",
           latency_title: str = PIPELINE_LATENCY) -> str:
    """The report's HTML (see :func:`write_report`)."""
    import jinja2
    from plotly.offline import get_plotlyjs

    utts = utterances(rows)
    failed = [{"bag": _text(f.get("bag")), "error": _text(f.get("error"))}
              for f in result.get("failed") or []]
    views = _bag_views(result, utts)
    audio_problems = attach_clips(utts, audio, [v["name"] for v in views]) if audio else {}
    for u in utts:
        u.setdefault("clip", "")
    classes = list(result.get("confusion_labels") or [])
    classes += sorted({u["true"] for u in utts} | {u["pred"] for u in utts} - set(classes) -
                      {""})
    classes = list(dict.fromkeys(c for c in classes if c))
    colours = emotion_colours(classes)
    worst = sorted((u for u in utts if u["wrong"]), key=lambda u: -(u["conf"] or 0.0))
    env = jinja2.Environment(loader=jinja2.PackageLoader("erc_ros.evaluation", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _fmt_num
    env.filters["clock"] = _fmt_clock
    page = env.get_template("report.html.j2")
    return page.render(
        title=title, subtitle=subtitle, r=result, failed=failed, views=views, utts=utts,
        speakers=list(dict.fromkeys(u["lane"] for v in views for u in v["utts"])),
        classes=classes, colours=colours, ink={c: _ink(v) for c, v in colours.items()},
        worst=worst[:WORST_ERRORS], n_wrong=len(worst),
        audio_problems=audio_problems, has_audio=any(u["clip"] for u in utts),
        figures=_figures(result, utts, colours, latency_title), plotly_js=get_plotlyjs(),
        data=[_jsonable(u) for u in utts])


def _fmt_num(v: Any, fmt: str = "{:.3f}", missing: str = "–") -> str:
    x = _num(v)
    return missing if x is None else fmt.format(x)


def _fmt_clock(seconds: Any) -> str:
    """Seconds -> ``m:ss`` (``h:mm:ss`` from an hour)."""
    s = _num(seconds)
    if s is None:
        return "–"
    s = int(round(s))
    h, m = divmod(s // 60, 60)
    return f"{h}:{m:02d}:{s % 60:02d}" if h else f"{m}:{s % 60:02d}"


def write_report(path: Path, result: dict, rows: list[dict],
                 audio: Optional[AudioSource] = None, title: str = "eval-bag",
                 subtitle: str = "", latency_title: str = PIPELINE_LATENCY) -> Path:
    """Write the report of an eval-bag run to ``path`` (one HTML file, no network needed).

    ``result``: eval-bag's metrics dict (``failed``: [{"bag", "error"}] for bags it could
    not score); ``rows``: its utterances.csv rows as dicts (strings or numbers; "" is
    missing); ``audio(bag_name, start_s, end_s)``: float32 mono 16 kHz samples of a span (bag
    seconds, the labels' and estimates' time axis) or None, e.g. :func:`bags_audio`; with it
    each utterance's clip is embedded. ``subtitle``: a line under the title (what the run
    was, e.g. a bench-spoken stage); ``latency_title``: what the rows' ``latency_ms``
    measures. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(result, rows, audio, title, subtitle, latency_title),
                    encoding="utf-8")
    return path
