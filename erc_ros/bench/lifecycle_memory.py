"""`python -m erc_ros lifecycle-memory`: resident memory of the composed nodes over lifecycle
cycles, driven over ROS as a lifecycle manager drives them.

Starts the composed process (``python -m erc_ros.ros.composed``: both nodes, the default
model and the face-expression expert unless told otherwise) as a child process, lets it serve
a few utterances of the sample bag (``data/demo_bag``, restamped so time only goes
forward, played with ``/clock``), then repeats ``--cycles`` times: deactivate, cleanup,
configure, activate both nodes through their ``change_state`` services (as ``ros2 lifecycle
set`` does), serve the same utterances again. The process's RSS (psutil) is read after
each cycle's transitions (what the node carries from one configuration to the next) and after
serving (with the buffers the last inference left to the allocator for the next). One line
per cycle, then the verdict:

- growth: RSS after the last cycle minus RSS after the first, at most ``--max-growth`` MB,
  after the transitions and after serving alike;
- spread (max - min) of the RSS after the last ``--last`` cycles, at most ``--max-spread`` MB
  (after serving it is printed: it moves with the buffers the last inference left free at the
  heap's top, which glibc keeps for the next one).

Exit code 1 when any is exceeded (or the nodes stop serving). ``--json`` writes the series.

    python -m erc_ros lifecycle-memory --cycles 30                  # default model, face expert
    python -m erc_ros lifecycle-memory --cycles 30 --asr embedded   # + Whisper in the node
    python -m erc_ros lifecycle-memory --cycles 10 --env MALLOC_ARENA_MAX=2   # an experiment

The process runs in a ROS domain of its own (a random ``ROS_DOMAIN_ID``, discovery on this
machine only), so nothing else on the network feeds or sees it.
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import psutil
import yaml

from erc_ros.evaluation.eval_bag import read_labels
from erc_ros.paths import demo_bag
from erc_ros.process import node_environment
from erc_ros.ros.live import RELIABLE, BagPlayer, bag_connections, node_params_for_bag
from erc_ros.ros.replay import GROUND_TRUTH_TOPIC, bag_span, message_class, read_bag

#: The lifecycle transitions of one cycle, in order: inputs stop first and the emotion node
#: is configured first (as :meth:`erc_ros.ros.composed.ComposedPipeline.start` does).
CYCLE = (("utterance_node", "deactivate"), ("emotion_node", "deactivate"),
         ("utterance_node", "cleanup"), ("emotion_node", "cleanup"),
         ("emotion_node", "configure"), ("utterance_node", "configure"),
         ("emotion_node", "activate"), ("utterance_node", "activate"))


def add_arguments(p) -> None:

    p.add_argument("--cycles", type=int, default=30, help="lifecycle cycles after the first "
                   "serving (each: deactivate, cleanup, configure, activate, serve)")
    p.add_argument("--asr", choices=["bag", "embedded"], default="bag",
                   help="bag: the bag's transcripts; embedded: the utterance node loads its "
                        "own recognizer (Whisper) at every configure")
    p.add_argument("--model-dir", default="", help="model directory (default models/default)")
    p.add_argument("--bag", default=str(demo_bag()), help="bag whose first turns are served")
    p.add_argument("--turns", type=int, default=3, help="turns of the bag served per cycle")
    p.add_argument("--rate", type=float, default=3.0, help="replay speed of the turns")
    p.add_argument("--max-growth", type=float, default=100.0,
                   help="MB the RSS may grow from the first cycle to the last")
    p.add_argument("--last", type=int, default=10, help="cycles whose spread is checked")
    p.add_argument("--max-spread", type=float, default=20.0,
                   help="MB the RSS may vary over the last --last cycles")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment of the node process (e.g. MALLOC_ARENA_MAX=2)")
    p.add_argument("--set", action="append", default=[], metavar="NODE:NAME=VALUE",
                   help="a parameter of one node (e.g. utterance_node:perception.faces."
                        "expression=false)")
    p.add_argument("--json", help="write the series and the verdict here")
    p.add_argument("--log", help="write the node process's log here (default: a temp file)")


def process_settings(args) -> dict:
    """This process only drives and plays: no torch here."""
    return {"torch_threads": None}


@dataclass
class Cycle:
    cycle: int  #: 0: start-up, before any transition
    rss_mb: float  #: after this cycle's transitions (the activate), before serving
    served_mb: float  #: after serving this cycle's utterances
    anon_mb: float  #: of served_mb, anonymous memory (the heap: not mapped files)
    threads: int  #: the node process's threads after serving
    estimates: int  #: estimates published while serving
    #: Median end-to-end latency of those estimates (final ASR result or recognized text ->
    #: estimate published), ms: what the allocator settings must not slow down.
    latency_ms: float
    #: Audio seconds per compute second of the cycle's perception core and of its embedded
    #: recognizer (from the utterance node's /diagnostics; NaN when not reported).
    core_rtf: float
    asr_rtf: float
    seconds: float  #: transitions + serving


@dataclass
class Result:
    cycles: list[Cycle] = field(default_factory=list)
    growth_mb: float = float("nan")  #: rss_mb, last cycle - cycle 1
    last_spread_mb: float = float("nan")  #: rss_mb, max - min over the last cycles
    served_growth_mb: float = float("nan")
    served_last_spread_mb: float = float("nan")
    ok: bool = False
    reasons: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    log: str = ""  #: the node process's log
    #: What ran, from the log: the emotion node's backend/precision ("onnxruntime/int8"),
    #: the embedded recognizer ("Whisper base" or "Whisper tiny.en", empty without one), the
    #: face expert's line.
    backend: str = ""
    recognizer: str = ""
    face_expert: str = ""


def _shift_times(msg: Any, offset_ns: int) -> None:
    """Add ``offset_ns`` to every builtin_interfaces/Time in ``msg`` (headers, spans)."""
    for name, typ in msg.get_fields_and_field_types().items():
        if typ == "builtin_interfaces/Time":
            t = getattr(msg, name)
            ns = t.sec * 1_000_000_000 + t.nanosec + offset_ns
            t.sec, t.nanosec = divmod(ns, 1_000_000_000)
        elif "/" in typ and not typ.startswith("sequence<") and "[" not in typ:
            _shift_times(getattr(msg, name), offset_ns)


class Feed:
    """The first ``turns`` turns of a bag, played again and again with time going forward."""

    def __init__(self, bag: Path, turns: int):
        from rclpy.serialization import deserialize_message

        labels = read_labels(bag / "labels.csv")
        if len(labels) < turns:
            raise ValueError(f"{bag} has {len(labels)} turns, fewer than {turns}")
        self.start, _ = bag_span(bag)
        # Up to the last turn's end plus the recognizer's delay and the gap to the next turn.
        nxt = labels[turns]["start"] if len(labels) > turns else labels[-1]["end"] + 3.0
        self.end = min(nxt, labels[turns - 1]["end"] + 2.0)
        self.turns = turns
        self.connections = {t: ty for t, ty in bag_connections(bag).items()
                            if t != GROUND_TRUTH_TOPIC}
        self.records = [(topic, t_ns, deserialize_message(raw, message_class(typ)))
                        for topic, typ, t_ns, raw in read_bag(bag, set(self.connections))
                        if t_ns / 1e9 <= self.end]
        self.span = self.end - self.start


class Driver:
    """The other process: lifecycle clients, a bag player with /clock, an estimate counter."""

    def __init__(self, feed: Feed, alive=lambda: True):
        import rclpy
        from lifecycle_msgs.srv import ChangeState, GetState
        from rclpy.executors import SingleThreadedExecutor

        from erc_ros.msg import EmotionEstimate

        self.feed = feed
        self.alive = alive  # False once the node process has exited: stop waiting for it
        self.node = rclpy.create_node("erc_lifecycle_memory")
        self.player = BagPlayer(self.node, feed.connections)
        self.change = {n: self.node.create_client(ChangeState, f"/{n}/change_state")
                       for n in ("emotion_node", "utterance_node")}
        self.get = {n: self.node.create_client(GetState, f"/{n}/get_state")
                    for n in ("emotion_node", "utterance_node")}
        self.estimates = 0
        self.latencies: list[float] = []
        self._lock = threading.Lock()
        self.node.create_subscription(EmotionEstimate, "/erc_ros/emotion", self._on_estimate,
                                      RELIABLE)
        from diagnostic_msgs.msg import DiagnosticArray
        self.diagnostics: dict[str, str] = {}  # the utterance node's last values
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)
        self._spin.start()
        self.clock_s = feed.start  # sim time now (only goes forward)

    def _on_estimate(self, msg) -> None:
        with self._lock:
            self.estimates += 1
            self.latencies.append(float(msg.end_to_end_latency_ms))

    def _on_diagnostics(self, msg) -> None:
        for st in msg.status:
            if "utterance_node" in st.name:
                with self._lock:
                    self.diagnostics = {kv.key: kv.value for kv in st.values}

    def rtf(self, key: str) -> float:
        with self._lock:
            value = self.diagnostics.get(key, "")
        try:
            return float(value)
        except ValueError:
            return float("nan")

    def _check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError("the node process exited (see its log)")

    def _call(self, client, request, timeout: float):
        deadline = time.monotonic() + timeout
        while not client.wait_for_service(timeout_sec=1.0):
            self._check_alive()
            if time.monotonic() > deadline:
                raise RuntimeError(f"{client.srv_name} did not appear in {timeout:.0f} s")
        fut = client.call_async(request)
        while not fut.done():
            if time.monotonic() > deadline:
                raise RuntimeError(f"{client.srv_name}: no answer in {timeout:.0f} s")
            self._check_alive()
            time.sleep(0.02)
        return fut.result()

    def state(self, node: str, timeout: float = 60.0) -> str:
        from lifecycle_msgs.srv import GetState
        return self._call(self.get[node], GetState.Request(), timeout).current_state.label

    def transition(self, node: str, label: str, timeout: float = 600.0) -> None:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState
        tid = getattr(Transition, f"TRANSITION_{label.upper()}")
        ok = self._call(self.change[node], ChangeState.Request(
            transition=Transition(id=tid)), timeout).success
        if not ok:
            raise RuntimeError(f"{node}: {label} failed (see the node process's log)")

    def serve(self, rate: float, timeout: float) -> int:
        """Play the turns once (restamped after everything played so far); advance /clock
        until their estimates are in or ``timeout``; the number of estimates."""
        from rclpy.serialization import serialize_message
        with self._lock:
            self.estimates = 0
            self.latencies = []
        offset = self.clock_s + 1.0 - self.feed.start
        off_ns = int(round(offset * 1e9))
        wall0 = time.perf_counter()
        last_clock = float("-inf")
        for topic, t_ns, msg in self.feed.records:
            t = t_ns / 1e9
            delay = (t - self.feed.start) / rate - (time.perf_counter() - wall0)
            if delay > 0:
                time.sleep(delay)
            if t - last_clock >= 0.01:
                self.player.clock(t + offset)
                last_clock = t
            _shift_times(msg, off_ns)
            try:
                self.player.pubs[topic].publish(serialize_message(msg))
            finally:
                _shift_times(msg, -off_ns)
        # Time goes on after the turns, at the same rate, until their estimates are in.
        now = self.feed.end + offset
        deadline = time.monotonic() + timeout
        settle: Optional[float] = None
        while time.monotonic() < deadline:
            self._check_alive()
            now += 0.05 * rate
            self.player.clock(now)
            time.sleep(0.05)
            if self.estimates >= self.feed.turns:
                # Late extras (embedded ASR), and one /diagnostics period for the counters.
                settle = settle or time.monotonic() + 1.2
                if time.monotonic() >= settle:
                    break
        self.clock_s = now
        return self.estimates

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


def _params_file(args, bag: Path, path: Path) -> None:
    """The node parameters: sim time, the bag's topics, ``--asr``, ``--model-dir``, ``--set``."""

    asr = "embedded" if args.asr == "embedded" else ""
    utt = {p.name: p.value for p in node_params_for_bag(bag_connections(bag), asr)}
    emo: dict[str, Any] = {}
    if args.model_dir:
        emo["model_dir"] = str(args.model_dir)
    nodes = {"utterance_node": utt, "emotion_node": emo}
    for item in args.set:
        node, _, kv = item.partition(":")
        name, _, value = kv.partition("=")
        if node not in nodes or not name:
            raise SystemExit(f"--set {item!r}: expected utterance_node|emotion_node:NAME=VALUE")
        nodes[node][name] = yaml.safe_load(value)
    for p in nodes.values():
        p["use_sim_time"] = True
    path.write_text(yaml.safe_dump({n: {"ros__parameters": p} for n, p in nodes.items()}))


def _anon_mb(pid: int) -> float:
    """RssAnon of ``pid`` in MB (Linux; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def _what_ran(res: Result, log: str) -> None:
    """Fill ``res``'s backend / recognizer / face expert from the node process's log."""

    m = re.findall(r"configured: model \S+ from \S+ on (\S+)", log)
    res.backend = m[-1] if m else ""
    m = re.findall(r"embedded ASR: (Whisper \S+)", log)
    res.recognizer = m[-1] if m else ""
    m = re.findall(r"\]: (face expert[^\n]*|face-expression expert[^\n]*)", log)
    res.face_expert = m[-1].strip() if m else ""


#: How long the composed process may take to load its models and become active.
START_SECONDS = 600.0


def measure(args, out=print) -> Result:
    """Run the cycles (see the module docstring); ``out`` gets one line per cycle."""
    import rclpy

    bag = Path(args.bag)
    feed = Feed(bag, args.turns)
    tmp = Path(tempfile.mkdtemp(prefix="erc_lifecycle_memory_"))
    params = tmp / "params.yaml"
    _params_file(args, bag, params)
    # What the launch file gives a node process (the allocator's huge pages), then --env.
    env = dict(os.environ, PYTHONFAULTHANDLER="1", **node_environment())
    if not getattr(args, "keep_domain", False):
        env["ROS_DOMAIN_ID"] = str(random.randint(1, 101))
        env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    for item in args.env:
        name, _, value = item.partition("=")
        env[name] = value
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")
                       if k in env})
    cmd = [sys.executable, "-m", "erc_ros.ros.composed", "--ros-args", "--params-file",
           str(params)]
    log_path = Path(args.log) if args.log else tmp / "composed.log"
    res = Result(command=cmd)
    serve_timeout = 180.0 if args.asr == "embedded" else 90.0
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        ps = psutil.Process(proc.pid)
        own_context = not rclpy.ok()
        if own_context:
            rclpy.init()
        driver = None
        try:
            driver = Driver(feed, alive=lambda: proc.poll() is None)
            t0 = time.monotonic()
            # loading the models may take longer than one service call's wait: the whole
            # start gets START_SECONDS, each state call what is left of it
            while not all(driver.state(n, max(1.0, START_SECONDS - (time.monotonic() - t0)))
                          == "active" for n in driver.change):
                if proc.poll() is not None or time.monotonic() - t0 > START_SECONDS:
                    raise RuntimeError("the composed process did not become active")
                time.sleep(0.5)
            out(f"{'cycle':>5} {'RSS MB':>7} {'served':>7} {'anon':>6} {'threads':>7} "
                f"{'estimates':>9} {'e2e ms':>7} {'core rtf':>8} {'asr rtf':>7} {'s':>5}")
            for k in range(args.cycles + 1):
                t = time.monotonic()
                if k:
                    for node, label in CYCLE:
                        driver.transition(node, label)
                active = ps.memory_info().rss / 2**20
                n = driver.serve(args.rate, serve_timeout)
                lat = [x for x in driver.latencies if x == x]  # NaN: not measured
                c = Cycle(k, active, ps.memory_info().rss / 2**20, _anon_mb(proc.pid),
                          ps.num_threads(), n,
                          float(sorted(lat)[len(lat) // 2]) if lat else float("nan"),
                          driver.rtf("core.realtime_factor"),
                          driver.rtf("core.asr.realtime_factor"), time.monotonic() - t)
                res.cycles.append(c)
                out(f"{c.cycle:>5} {c.rss_mb:>7.0f} {c.served_mb:>7.0f} {c.anon_mb:>6.0f} "
                    f"{c.threads:>7} {c.estimates:>9} {c.latency_ms:>7.0f} {c.core_rtf:>8.1f} "
                    f"{c.asr_rtf:>7.2f} {c.seconds:>5.0f}")
                if n == 0:
                    res.reasons.append(f"cycle {k}: no estimate")
                    break
        except RuntimeError as err:  # a transition failed, the process died or hung
            res.reasons.append(f"{err} (exit code {proc.poll()})")
        finally:
            if driver is not None:
                driver.close()
            if own_context:
                rclpy.try_shutdown()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    res.log = str(log_path)
    _what_ran(res, log_path.read_text(errors="replace"))
    done = [c for c in res.cycles if c.cycle >= 1]
    if done:
        last = done[-args.last:]
        res.growth_mb = done[-1].rss_mb - done[0].rss_mb
        res.last_spread_mb = max(c.rss_mb for c in last) - min(c.rss_mb for c in last)
        res.served_growth_mb = done[-1].served_mb - done[0].served_mb
        res.served_last_spread_mb = (max(c.served_mb for c in last)
                                     - min(c.served_mb for c in last))
        for what, growth in (("RSS", res.growth_mb), ("RSS after serving",
                                                      res.served_growth_mb)):
            if growth > args.max_growth:
                res.reasons.append(f"{what} grew {growth:.0f} MB from cycle 1 to cycle "
                                   f"{done[-1].cycle} (at most {args.max_growth:.0f})")
        if len(done) >= args.last and res.last_spread_mb > args.max_spread:
            res.reasons.append(f"RSS varied {res.last_spread_mb:.0f} MB over the last "
                               f"{len(last)} cycles (at most {args.max_spread:.0f})")
    else:
        res.reasons.append("no cycle completed")
    res.ok = not res.reasons
    return res


def run(args) -> int:
    res = measure(args)
    if res.cycles:
        c1 = next((c for c in res.cycles if c.cycle == 1), None)
        print(f"ran: emotion model on {res.backend or '?'}"
              + (f", {res.recognizer}" if res.recognizer else "")
              + (f"; {res.face_expert}" if res.face_expert else ""))
        last = res.cycles[-1]
        print(f"RSS after cycle 1 {c1.rss_mb if c1 else float('nan'):.0f} MB, after cycle "
              f"{last.cycle} {last.rss_mb:.0f} MB: growth {res.growth_mb:+.0f} MB, spread of "
              f"the last {args.last} {res.last_spread_mb:.0f} MB; after serving: "
              f"{c1.served_mb if c1 else float('nan'):.0f} -> {last.served_mb:.0f} MB, "
              f"growth {res.served_growth_mb:+.0f} MB, spread {res.served_last_spread_mb:.0f} MB")
    print("ok" if res.ok else "FAILED: " + "; ".join(res.reasons))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(res), indent=2))
    return 0 if res.ok else 1
