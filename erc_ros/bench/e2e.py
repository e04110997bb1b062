"""`python -m erc_ros bench-e2e [--json OUT]`: end-to-end latency through the live nodes.

The nodes run as a robot runs them: the composed process (``erc_ros.ros.composed``) started
as a separate process with ``use_sim_time``. This process plays a conversation bag into it
in real time (``/clock``, audio, camera, ASR) and measures, per utterance, the wall time from
publishing the *final* ASR result to receiving the ``erc_ros/EmotionEstimate`` for it (both
DDS hops included). Everything the core can do while the person speaks happens before that
final result arrives, so this is the latency a robot would see.

``--asr embedded``: the node's own recognizer hears the bag's audio (its transcripts are not
played); the final result is then the node's own ``erc_ros/Transcript``, published when the
recognizer's text is ready and before the emotion pipeline runs, and the latency runs from
its receipt here to the estimate's. The recognizer works on the same two cores meanwhile:
this says whether the emotion path queues behind it.

Output: p50/p95/max ms, utterances, lost (final results that never got an estimate), a
latency histogram PNG next to ``--json``; JSON keys ``p50_ms``, ``p95_ms``, ``utterances``,
``lost``. From the end of speech (the bag's turns): every estimate (``speech_end_*``), those
that end a recognized segment (``speech_end_segment_last_*``) and each turn to the estimate
of its last words (``speech_end_turn_*``), see :func:`_speech_end`.

``--compare NAME:=VALUE``: the utterance and emotion nodes run apart (``--split``) and a second
emotion node, with that setting, estimates the same utterances on its own topic; both are
timed from the same final results and speech ends (``compare``, ``compare_ratio``: this
run's figures over the second node's). Two runs differ by the recognizer's timing (a p95 moves
by 400 ms between two runs of one setting); one run with two nodes does not.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from erc_ros import process
from erc_ros.evaluation.matching import overlap_seconds, owners, segment_ends
from erc_ros.paths import demo_bag
from erc_ros.process import node_environment
from erc_ros.ros import convert, emotion_msgs
from erc_ros.ros.live import RELIABLE, BagPlayer, bag_connections, node_params_for_bag
from erc_ros.ros.replay import GROUND_TRUTH_TOPIC, bag_span, read_bag
from erc_ros.runtime import machine

REPO = Path(__file__).resolve().parents[2]


def add_arguments(p) -> None:
    p.add_argument("--bag", default=str(demo_bag()),
                   help="conversation bag to play (default: the sample bag)")
    p.add_argument("--model-dir", default="", help="model directory (default models/default)")
    p.add_argument("--backend", default="auto")
    p.add_argument("--precision", default="auto")
    p.add_argument("--rate", type=float, default=1.0, help="playback speed (1 = real time)")
    p.add_argument("--repeat", type=int, default=1, help="play the bag this many times")
    p.add_argument("--json", default=None, help="write the results JSON here")
    p.add_argument("--split", action="store_true",
                   help="run utterance_node and emotion_node as two processes (utterances "
                        "over DDS) instead of the composed process")
    p.add_argument("--startup-timeout", type=float, default=120.0)
    p.add_argument("--asr", choices=["bag", "embedded"], default="bag",
                   help="bag: play the bag's ASR results; embedded: the node recognizes the "
                        "bag's audio itself and its own Transcripts start each measurement")
    p.add_argument("--set", action="append", default=[], metavar="NAME:=VALUE",
                   help="extra node parameter, e.g. perception.faces.enabled:=false")
    p.add_argument("--compare", action="append", default=[], metavar="NAME:=VALUE",
                   help="also run a second emotion node on the same utterances with this "
                        "parameter (e.g. fusion:=text; implies --split) and time both from "
                        "the same speech ends: the ratio of two settings in one run, "
                        "without the recognizer's run-to-run timing in it")


def _node_command(bag: Path, model_dir: str, backend: str, precision: str,
                  module: str = "erc_ros.ros.composed", extra: tuple = (),
                  asr_type: str = "", remaps: tuple = ()) -> list[str]:
    params = ["use_sim_time:=true", f"backend:={backend}", f"precision:={precision}",
              "prepare:=true",
              "diagnostics_period:=2.0"]
    if model_dir:
        params.append(f"model_dir:={model_dir}")
    for p in node_params_for_bag(bag_connections(bag), asr_type):
        params.append(f"{p.name}:={p.value}")
    params += list(extra)
    cmd = [sys.executable, "-m", module, "--ros-args"]
    for p in params:
        cmd += ["-p", p]
    for r in remaps:
        cmd += ["-r", r]
    return cmd


#: The second emotion node of ``--compare``: its estimates on their own topic, no
#: Expressions (the first node's are the ones a robot reads).
COMPARE_TOPIC = "erc_ros/emotion_compare"
COMPARE_PARAMS = (f"estimate_topic:={COMPARE_TOPIC}", "publish_expression:=false",
                  "publish_face_expression:=false")
COMPARE_REMAPS = ("__node:=emotion_node_compare",)


def node_commands(bag: Path, model_dir: str, backend: str, precision: str, split: bool,
                  extra: tuple, asr_type: str, compare: tuple = ()) -> list[list[str]]:
    """The processes to start: the composed node, or (``split``, or a ``compare``) the
    utterance and emotion nodes apart, and with ``compare`` a second emotion node with those
    parameters over ``extra``'s, publishing on :data:`COMPARE_TOPIC`."""
    args = (bag, model_dir, backend, precision)
    if not (split or compare):
        return [_node_command(*args, "erc_ros.ros.composed", extra, asr_type)]
    cmds = [_node_command(*args, m, extra, asr_type)
            for m in ("erc_ros.ros.utterance_node", "erc_ros.ros.emotion_node")]
    if compare:
        cmds.append(_node_command(*args, "erc_ros.ros.emotion_node",
                                  extra + tuple(compare) + COMPARE_PARAMS, asr_type,
                                  COMPARE_REMAPS))
    return cmds


def bench(bag: str | Path, model_dir: str = "", backend: str = "auto", precision: str = "auto",
          rate: float = 1.0, repeat: int = 1, startup_timeout: float = 120.0,
          split: bool = False, extra: tuple = (), asr: str = "bag",
          compare: tuple = ()) -> dict:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.serialization import deserialize_message

    from erc_ros.msg import EmotionEstimate, Transcript

    bag = Path(bag)
    embedded = asr == "embedded"
    split = split or bool(compare)
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              # as the launch file starts them (the allocator's huge pages)
                              env=dict(os.environ, **node_environment()))
             for cmd in node_commands(bag, model_dir, backend, precision, split, extra,
                                      "embedded" if embedded else "", compare)]
    lines: list[str] = []
    for proc in procs:
        threading.Thread(target=lambda p=proc: [lines.append(x) for x in p.stdout],
                         daemon=True).start()
    own = not rclpy.ok()
    if own:
        rclpy.init(args=[])  # not this command's own arguments (--set a:=b reads as a remap)
    node = rclpy.create_node("erc_bench_e2e")
    player = BagPlayer(node, bag_connections(bag))
    finals: list[dict] = []  # published final results: span + publish time
    passes: list[tuple[float, float]] = []  # (clock offset, wall time of the bag's start)
    spans: list[tuple] = []  # the bag's turns (start, end, text): its transcripts, or labels.csv
    received: list[tuple[float, object]] = []
    received_cmp: list[tuple[float, object]] = []  # the --compare node's
    lock = threading.Lock()

    def on_est(msg, into=received):
        t = time.perf_counter()
        with lock:
            into.append((t, emotion_msgs.msg_to_estimate(msg),
                         (float(msg.end_to_end_latency_ms), float(msg.processing_latency_ms))))

    node.create_subscription(EmotionEstimate, "/erc_ros/emotion", on_est, RELIABLE)
    if compare:
        node.create_subscription(EmotionEstimate, "/" + COMPARE_TOPIC,
                                 lambda m: on_est(m, received_cmp), RELIABLE)
    if embedded:  # the node's own final results are the start of each measurement
        def on_transcript(msg):
            t = time.perf_counter()
            if msg.is_final:
                with lock:
                    finals.append({"start": convert.time_to_float(msg.start),
                                   "end": convert.time_to_float(msg.end), "text": msg.text,
                                   "t": t})
        node.create_subscription(Transcript, "/erc_ros/transcript", on_transcript, RELIABLE)
    from diagnostic_msgs.msg import DiagnosticArray
    diag: dict[str, dict] = {}  # last status of each node: where the time goes

    def on_diag(arr):
        for st in arr.status:
            diag[st.name] = {kv.key: kv.value for kv in st.values
                             if kv.key.startswith(("latency.", "dropped", "refused", "queue",
                                                   "core.close_ms", "core.asr", "pipeline.total_ms",
                                                   "backend", "model"))}

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    ex = SingleThreadedExecutor()
    ex.add_node(node)

    process.freeze_heap()  # the measuring process's own collector pauses are not the nodes' latency
    spin = threading.Thread(target=ex.spin, daemon=True)
    spin.start()
    try:
        start, end = bag_span(bag)
        # Wait until the nodes are up: the composed process subscribes to the ASR topic (to
        # the audio with the embedded recognizer).
        conns = bag_connections(bag)
        asr_topic = next((t for t, ty in conns.items() if ty == "erc_ros/msg/Transcript"),
                         "/erc_ros/transcript")
        if embedded:
            asr_topic = next(t for t, ty in conns.items() if ty.startswith("audio_common_msgs")
                             and not ty.endswith("AudioInfo"))
        t_wait = time.monotonic()
        while node.count_subscribers(asr_topic) == 0 or node.count_publishers(
                "/erc_ros/emotion") == 0 or (compare and node.count_publishers(
                    "/" + COMPARE_TOPIC) == 0):
            if any(p.poll() is not None for p in procs) or \
                    time.monotonic() - t_wait > startup_timeout:
                raise RuntimeError("the composed node did not start:\n" + "".join(lines[-30:]))
            player.clock(start)
            time.sleep(0.1)
        time.sleep(0.5)
        offset = 0.0
        for rep in range(repeat):
            wall0 = _play(player, bag, rate, offset, None if embedded else finals, start,
                          deserialize_message, Transcript, spans if rep == 0 else None)
            passes.append((offset, wall0))
            offset += (end - start) + 5.0
        if not spans:  # a bag without transcripts (bench-senses'): its turns from its labels
            spans += labelled_turns(bag)
        # Let the last utterances through: advance the clock past the end, wait a little.
        player.clock(end + offset + 2.0)
        deadline = time.monotonic() + (30.0 if embedded else 10.0)  # + the recognizer's backlog
        while time.monotonic() < deadline:
            with lock:
                if len(received) >= len(finals) and (
                        not compare or len(received_cmp) >= len(finals)):
                    break
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        if own:
            rclpy.try_shutdown()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    res = _score(finals, received, lines)
    res.update(_speech_end(spans, passes, start, rate, received))
    if compare:
        cmp = {"set": list(compare), **_score(finals, received_cmp, lines),
               **_speech_end(spans, passes, start, rate, received_cmp)}
        res["compare"] = cmp
        res["compare_ratio"] = {k: res[k] / cmp[k] if cmp[k] > 0 else float("nan")
                                for k in RATIO_KEYS}
    res["mode"] = "split" if split else "composed"
    res["asr"] = asr
    res["node_diagnostics"] = diag
    return res


def labelled_turns(bag: Path) -> list[tuple]:
    """The turns (start, end, text) of a bag's ``labels.csv``, on the bag's clock; none
    without one."""
    if not (bag / "labels.csv").is_file():
        return []
    from erc_ros.evaluation.eval_bag import read_labels
    return [(r["start"], r["end"], r["text"]) for r in read_labels(bag / "labels.csv")]


#: The figures ``compare_ratio`` divides (this node's by the ``--compare`` node's).
RATIO_KEYS = ("p50_ms", "p95_ms", "speech_end_p50_ms", "speech_end_p95_ms",
              "speech_end_turn_p95_ms")


def _play(player, bag, rate, offset, finals, start, deserialize_message, Transcript,
          spans=None):
    """Play one pass; bag times shifted by ``offset`` (repeat passes continue the clock).
    ``finals`` None: the bag's ASR results are not played (the node recognizes). ``spans``:
    a list to fill with the (start, end, text) of the bag's final transcripts, on the bag's own
    clock (the generated bags' transcripts carry the turns' spans: when each person spoke).
    Returns the wall time (perf_counter) of the bag's start."""

    wall0 = time.perf_counter()
    last_clock = float("-inf")
    for topic, typ, t_ns, raw in read_bag(bag):
        t = t_ns / 1e9
        delay = (t - start) / rate - (time.perf_counter() - wall0)
        if delay > 0:
            time.sleep(delay)
        if spans is not None and typ == "erc_ros/msg/Transcript":
            m = deserialize_message(raw, Transcript)
            if m.is_final:
                spans.append((convert.time_to_float(m.start), convert.time_to_float(m.end),
                              m.text))
        if topic == GROUND_TRUTH_TOPIC or (finals is None and typ == "erc_ros/msg/Transcript"):
            continue
        if offset or typ == "erc_ros/msg/Transcript":
            msg = deserialize_message(raw, player.pubs[topic].msg_type)
            if offset:
                _shift(msg, offset)
        else:
            msg = raw
        if t + offset - last_clock >= 0.01:
            player.clock(t + offset)
            last_clock = t + offset
        if typ == "erc_ros/msg/Transcript" and msg.is_final:
            finals.append({"start": convert.time_to_float(msg.start),
                           "end": convert.time_to_float(msg.end), "text": msg.text,
                           "t": time.perf_counter()})
        player.pubs[topic].publish(msg)
    return wall0


def _speech_end(spans: list, passes: list, start: float, rate: float, received: list) -> dict:
    """Speech end -> estimate, per estimate: from the moment the speech it answers stopped
    (the last end of the bag's turns it overlaps, or its own end where a turn goes on past
    it: voice activity cut the turn at a pause), placed on the wall clock of the pass that
    played it, to the estimate's arrival here. Estimates over no turn are left out.
    ``speech_end_estimates``: each one's span (on the bag's clock), latency and text, to see
    which turns make the tail. ``speech_end_segment_last_*``: over the estimates that end a
    recognized segment (no other estimate starts where they end: the sentences of one
    segment tile it, ``segmentation.split_sentences``), when a segment's text is in; its
    earlier sentences wait for it. ``speech_end_turn_*``: one per turn of the bag and pass,
    from the turn's end to the estimate of its last words (of those it owns, the one that
    ends last; below); ``speech_end_turns_unanswered``: turns no estimate overlaps.
    ``speech_end_turns``: each turn of each pass (the pass, its span and what was said, from
    the bag's transcripts; the latency and the text of the estimate that answered it, or
    None), to see which turns make that tail. ``spans``: (start, end[, text]) each."""

    def overlaps(est, s, e, off) -> bool:  # the estimate and the turn (s, e) of a pass
        return min(est.end, e + off) - max(est.start, s + off) > 0

    def stopped(est, e, off, wall0) -> float:  # the turn's end, or the estimate's before it
        return wall0 + (min(e + off, est.end) - off - start) / rate

    lat, detail, last = [], [], []
    for (t, est, _), ends_one in zip(received, segment_ends([est for _, est, _ in received])):
        ends = [stopped(est, e, off, wall0) for off, wall0 in passes for s, e, *_ in spans
                if overlaps(est, s, e, off)]
        if ends:
            lat.append((t - max(ends)) * 1e3)
            detail.append({"start": round(est.start, 3), "end": round(est.end, 3),
                           "ms": round(lat[-1], 1), "text": est.text})
            if ends_one:
                last.append(lat[-1])

    # Per turn of the bag: from its end to the estimate that carries its last words, as an
    # outside probe times "end of speech -> text" turn by turn. A turn's words are in the
    # estimates it owns (those that overlap it more than any other turn, bench-spoken's
    # rule): a turn heard in pieces is answered when its last piece is; one that owns none
    # (heard with a neighbour's words) by the estimate that overlaps it most. A neighbour's
    # estimate that only overlaps the turn's end (the recognizer's word times are guesses)
    # does not answer it.
    turns, per_turn, unanswered = [], [], 0
    ests = [est for _, est, _ in received]
    for k, (off, wall0) in enumerate(passes):
        lab = [{"start": s + off, "end": e + off} for s, e, *_ in spans]
        owner, _ = owners(lab, ests)
        ov = overlap_seconds(lab, ests)
        for i, (s, e, *said) in enumerate(spans):
            row = {"pass": k, "start": round(s, 3), "end": round(e, 3),
                   "said": said[0] if said else "", "ms": None, "heard": None}
            per_turn.append(row)
            own = np.flatnonzero(owner == i)
            if own.size:
                j = max(own, key=lambda j: (ests[j].end, -received[j][0]))
            elif ov.size and ov[i].max() > 0:
                j = int(np.argmax(ov[i]))
            else:
                unanswered += 1
                continue
            t, est = received[j][0], ests[j]
            turns.append((t - stopped(est, e, off, wall0)) * 1e3)
            row.update(ms=round(turns[-1], 1), heard=est.text)

    def pct(v, q):
        return float(np.percentile(v, q)) if len(v) else float("nan")
    return {"speech_end_ms": [round(x, 1) for x in lat], "speech_end_estimates": detail,
            "speech_end_p50_ms": pct(lat, 50), "speech_end_p95_ms": pct(lat, 95),
            "speech_end_segment_last_p50_ms": pct(last, 50),
            "speech_end_segment_last_p95_ms": pct(last, 95),
            "speech_end_segment_last_n": len(last),
            "speech_end_turn_ms": [round(x, 1) for x in turns],
            "speech_end_turn_p50_ms": pct(turns, 50), "speech_end_turn_p95_ms": pct(turns, 95),
            "speech_end_turns_unanswered": unanswered, "speech_end_turns": per_turn}


def _shift(msg, offset: float) -> None:
    for name in ("start", "end"):
        if hasattr(msg, name):
            setattr(msg, name, convert.float_to_time(convert.time_to_float(getattr(msg, name))
                                                     + offset))
    if hasattr(msg, "header"):
        msg.header.stamp = convert.float_to_time(convert.time_to_float(msg.header.stamp)
                                                 + offset)


def _score(finals: list[dict], received: list, lines: list[str]) -> dict:
    lat, inside = [], []
    used: set[int] = set()
    for f in finals:
        best, ov_best = None, 0.0
        for i, (_t, est, _n) in enumerate(received):
            if i in used:
                continue
            ov = min(est.end, f["end"]) - max(est.start, f["start"])
            if ov > ov_best:
                best, ov_best = i, ov
        if best is not None:
            used.add(best)
            lat.append((received[best][0] - f["t"]) * 1e3)
            inside.append(received[best][2])
    v = np.asarray(lat, float)
    node = np.asarray([e2e for e2e, _ in inside], float)
    proc = np.asarray([p for _, p in inside], float)
    res = {"utterances": len(finals), "estimates": len(received), "lost": len(finals) - len(lat),
           "p50_ms": float(np.percentile(v, 50)) if v.size else float("nan"),
           "p95_ms": float(np.percentile(v, 95)) if v.size else float("nan"),
           "max_ms": float(v.max()) if v.size else float("nan"),
           "mean_ms": float(v.mean()) if v.size else float("nan"),
           "latencies_ms": [round(x, 3) for x in lat],
           # Where the time goes, per utterance: inside the nodes (final ASR result received
           # -> estimate published, composed only) and in the emotion pipeline; the rest of
           # latencies_ms is the two DDS hops and scheduling.
           "node_latencies_ms": [round(x, 3) for x in node],
           "pipeline_latencies_ms": [round(x, 3) for x in proc],
           "node_p95_ms": float(np.nanpercentile(node, 95)) if node.size and
           not np.isnan(node).all() else float("nan"),
           # the senses each estimate's label weighed (EmotionEstimate.modalities), counted
           "modalities": dict(Counter("+".join(est.modalities) or "none"
                                      for _t, est, _n in received)),
           # ... and the backend / precision that estimated them
           "backends": dict(Counter(est.backend for _t, est, _n in received))}
    return res


def process_settings(args) -> dict:
    """This process only plays and measures (the nodes run in their own, which sets its
    own): torch is not loaded here."""
    return {"torch_threads": None}


def run(args) -> int:

    bag = Path(args.bag)
    if not bag.exists():
        print(f"bench-e2e: no bag {bag}", file=sys.stderr)
        return 2
    for flag, items in (("--set", args.set), ("--compare", args.compare)):
        bad = [x for x in items if ":=" not in x or not x.split(":=", 1)[0].strip()]
        if bad:
            print(f"bench-e2e: {flag} {bad[0]!r}: a node parameter as NAME:=VALUE "
                  "(e.g. fusion:=text)", file=sys.stderr)
            return 2
    r = bench(bag, args.model_dir, args.backend, args.precision, args.rate, args.repeat,
              args.startup_timeout, args.split, tuple(args.set), args.asr,
              tuple(args.compare))
    r["load_average_1m_after"] = os.getloadavg()[0]
    print(f"bench-e2e ({r['mode']}, ASR: {r['asr']}): {r['utterances']} utterances, "
          f"{r['lost']} lost; final ASR result -> "
          f"EmotionEstimate p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, "
          f"max {r['max_ms']:.1f} ms; end of speech -> EmotionEstimate p50 "
          f"{r['speech_end_p50_ms']:.0f} ms, p95 {r['speech_end_p95_ms']:.0f} ms "
          f"({r['speech_end_segment_last_n']} that end a recognized segment: p50 "
          f"{r['speech_end_segment_last_p50_ms']:.0f} ms, p95 "
          f"{r['speech_end_segment_last_p95_ms']:.0f} ms; each of the bag's "
          f"{len(r['speech_end_turn_ms'])} turns to the estimate of its last words: p50 "
          f"{r['speech_end_turn_p50_ms']:.0f} ms, p95 {r['speech_end_turn_p95_ms']:.0f} ms, "
          f"{r['speech_end_turns_unanswered']} unanswered)")
    if "compare" in r:
        c, q = r["compare"], r["compare_ratio"]
        print(f"the same run with {', '.join(c['set'])} (a second emotion node on the same "
              f"utterances): {c['utterances'] - c['lost']} estimates, {c['lost']} lost; final "
              f"ASR result -> EmotionEstimate p50 {c['p50_ms']:.1f} ms, p95 {c['p95_ms']:.1f} "
              f"ms; end of speech -> EmotionEstimate p50 {c['speech_end_p50_ms']:.0f} ms, "
              f"p95 {c['speech_end_p95_ms']:.0f} ms; ratio (this run's over it): end of "
              f"speech p95 {q['speech_end_p95_ms']:.3f}, p50 {q['speech_end_p50_ms']:.3f}; "
              f"final ASR result p95 {q['p95_ms']:.3f}")
    print("senses each label weighed (estimates): " + ", ".join(
        f"{k} {v}" for k, v in sorted(r["modalities"].items())) + (
        f"; with {', '.join(r['compare']['set'])}: " + ", ".join(
            f"{k} {v}" for k, v in sorted(r["compare"]["modalities"].items()))
        if "compare" in r else ""))
    slow = sorted((t for t in r["speech_end_turns"] if t["ms"] is not None),
                  key=lambda t: -t["ms"])[:3]
    if slow:
        print("slowest turns: " + "; ".join(
            f"{t['ms']:.0f} ms {t['said'][:40]!r} (pass {t['pass'] + 1}, heard "
            f"{t['heard'][:40]!r})" for t in slow))
    m = machine.describe(2)
    r["machine"] = m
    print(f"machine: {machine.line(m)}")
    for name, kv in r["node_diagnostics"].items():
        if "core.asr.model" in kv:
            print(f"{name}: Whisper {kv['core.asr.model']} "
                  f"({kv.get('core.asr.model_reason', '')}); refused (queue full) "
                  f"{kv.get('core.asr.refused_full', '?')}, "
                  f"degraded {kv.get('core.asr.degraded', '?')}, "
                  f"without text {kv.get('core.asr.no_text', '?')}, cut while the speech "
                  f"went on {kv.get('core.asr.stream_cuts', '?')}")
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(r, indent=2))
        if r["latencies_ms"]:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
            fig, axes = plt.subplots(1, 2, figsize=(9, 3))
            for ax, key, p95, what in (
                    (axes[0], "latencies_ms", r["p95_ms"], "final ASR result"),
                    (axes[1], "speech_end_ms", r["speech_end_p95_ms"], "end of speech")):
                if r[key]:
                    ax.hist(r[key], bins=30)
                    ax.axvline(p95, color="r", ls="--", label=f"p95 {p95:.0f} ms")
                    ax.legend()
                ax.set_xlabel(f"{what} -> EmotionEstimate (ms)")
            fig.suptitle(f"bench-e2e, ASR {r['asr']}: {machine.line(r['machine'])}",
                         fontsize=8)
            fig.tight_layout()
            fig.savefig(out.with_suffix(".png"), dpi=110)
    return 0
