"""Live replay: a bag played into the running nodes (composed, this process) with /clock.

Used by ``eval-bag --live``, ``make demo``, the soak test and the node tests. A player node
publishes ``/clock`` and every bag record (its raw CDR bytes: no re-serialization) at
``rate`` x real time; the nodes run with ``use_sim_time`` and their topics set from the
bag's connections; estimates are collected from the published ``EmotionEstimate`` topic.
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosbags.highlevel import AnyReader

from erc_ros.assemble import ASR_TYPE_OF_MSG, asr_type_of
from erc_ros.ros import convert, emotion_msgs
from erc_ros.ros.launch_config import load_config
from erc_ros.ros.replay import GROUND_TRUTH_TOPIC, ReplayResult, bag_span, message_class, read_bag

RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                      reliability=ReliabilityPolicy.RELIABLE)


def bag_connections(path: str | Path) -> dict[str, str]:
    with AnyReader([Path(path)]) as reader:
        return {c.topic: c.msgtype for c in reader.connections}


def node_params_for_bag(conns: dict[str, str], asr_type: str = "") -> list[Parameter]:
    """utterance_node parameters that subscribe to what the bag holds (``asr_type``: the
    ASR to use instead of the bag's, e.g. ``embedded``)."""
    params = [Parameter("image_reliability", value="reliable")]
    for topic, typ in conns.items():
        if typ == "sensor_msgs/msg/CompressedImage":
            base = topic[:-len("/compressed")] if topic.endswith("/compressed") else topic
            params += [Parameter("image_transport", value="compressed"),
                       Parameter("image_topic", value=base)]
        elif typ == "sensor_msgs/msg/Image":
            params += [Parameter("image_transport", value="raw"),
                       Parameter("image_topic", value=topic)]
        elif typ == "audio_common_msgs/msg/AudioDataStamped":
            params += [Parameter("audio_msg", value="stamped"),
                       Parameter("audio_topic", value=topic)]
        elif typ == "audio_common_msgs/msg/AudioInfo":
            params += [Parameter("audio_info_topic", value=topic)]
    # The ASR the node reads, chosen as eval-bag chooses it (erc_ros.assemble.asr_type_of).
    asr_conns = {t: ty for t, ty in conns.items() if t != GROUND_TRUTH_TOPIC}
    asr = asr_type or asr_type_of(asr_conns)
    if asr not in ("none", "embedded"):
        topic = next(t for t, ty in asr_conns.items() if ASR_TYPE_OF_MSG.get(ty) == asr)
        params += [Parameter("asr_type", value=asr), Parameter("asr_topic", value=topic)]
    else:
        params += [Parameter("asr_type", value=asr)]
    return params


class BagPlayer:
    """Publishes /clock and a bag's records from its own node."""

    def __init__(self, node, conns: dict[str, str], clock: bool = True):
        from rosgraph_msgs.msg import Clock
        self.node = node
        self.clock_pub = node.create_publisher(Clock, "/clock", 10) if clock else None
        self.pubs = {t: node.create_publisher(message_class(ty), t, RELIABLE)
                     for t, ty in conns.items() if t != GROUND_TRUTH_TOPIC}
        self.published: dict[str, int] = {t: 0 for t in self.pubs}
        #: The bag time of the last record published (None before the first).
        self.last_time: Optional[float] = None

    def other_publishers(self, topic: str) -> list[str]:
        """The nodes other than the player's that publish on ``topic`` (as discovered)."""
        me = (self.node.get_name(), self.node.get_namespace())
        names = {(i.node_name, i.node_namespace)
                 for i in self.node.get_publishers_info_by_topic(topic)}
        return sorted(f"{ns.rstrip('/')}/{name}" for name, ns in names - {me})

    def leave_out(self, topic: str) -> None:
        """Publish nothing on ``topic``: its records are skipped, its publisher destroyed."""
        pub = self.pubs.pop(topic, None)
        if pub is not None:
            self.node.destroy_publisher(pub)
        self.published.pop(topic, None)

    def destroy(self) -> None:
        """Destroy the player's publishers (before its node)."""
        for topic in list(self.pubs):
            self.leave_out(topic)
        if self.clock_pub is not None:
            self.node.destroy_publisher(self.clock_pub)
            self.clock_pub = None

    def to_subscribers(self) -> int:
        """Messages published so far on topics someone subscribes to."""
        return sum(n for t, n in self.published.items()
                   if self.pubs[t].get_subscription_count() > 0)

    def clock(self, t: float) -> None:
        from rosgraph_msgs.msg import Clock
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=convert.float_to_time(t)))

    def play(self, path, rate: float = 1.0, progress=None, ground_truth: Optional[list] = None,
             stop: Optional[threading.Event] = None, clock_period: float = 0.01) -> int:
        """Publish every record at its time / rate; returns the message count. ``stop``
        (anything with ``is_set()``) ends it before the next record, also during a wait."""

        from rclpy.serialization import deserialize_message
        from std_msgs.msg import String
        start, _ = bag_span(path)
        wall0 = time.perf_counter()
        last_clock = float("-inf")
        n = 0
        for topic, _typ, t_ns, raw in read_bag(path):
            if stop is not None and stop.is_set():
                break
            t = t_ns / 1e9
            if rate > 0:
                due = wall0 + (t - start) / rate
                # In steps, so that a stop during a long gap of the bag is seen at once.
                while (delay := due - time.perf_counter()) > 0:
                    if stop is not None and stop.is_set():
                        return n
                    time.sleep(min(delay, 0.05))
            if t - last_clock >= clock_period:
                self.clock(t)
                last_clock = t
            if topic == GROUND_TRUTH_TOPIC:
                if ground_truth is not None:
                    ground_truth.append(json.loads(deserialize_message(raw, String).data))
                continue
            pub = self.pubs.get(topic)
            if pub is None:  # left out
                continue
            pub.publish(raw)
            self.published[topic] += 1
            self.last_time = t
            n += 1
            if progress and n % 50 == 0:
                progress(t - start)
        return n


class LiveSession:
    """Composed nodes + a bag player + an estimate collector, spinning in a thread."""

    def __init__(self, bag: str | Path, config: Optional[str | Path] = None,
                 model_dir: str = "", backend: str = "auto", precision: str = "auto",
                 threads: int = 2, extra_utterance_params: Optional[list] = None,
                 on_estimate: Optional[Callable[[Any, Any], None]] = None, asr_type: str = ""):
        from erc_ros.msg import EmotionEstimate
        from erc_ros.ros.composed import ComposedPipeline

        self.bag = Path(bag)
        conns = bag_connections(bag)
        sim = Parameter("use_sim_time", value=True)
        u_params = [sim, *node_params_for_bag(conns, asr_type), *(extra_utterance_params or [])]
        e_params = [sim, Parameter("model_dir", value=model_dir),
                    Parameter("prepare", value=True),  # a CLI (eval-bag --live, demo)
                    Parameter("backend", value=backend), Parameter("precision", value=precision),
                    Parameter("threads", value=threads)]
        if config:
            cfg = load_config(config)
            perc = [Parameter(k, value=v) for k, v in cfg.get("utterance_node", {}).items()
                    if k.startswith("perception.")]
            u_params = perc + u_params
        self.comp = ComposedPipeline(u_params, e_params)
        self.player_node = rclpy.create_node("erc_bag_player")
        self.player = BagPlayer(self.player_node, conns)
        self.estimates: list = []
        self.on_estimate = on_estimate
        self._lock = threading.Lock()
        self.player_node.create_subscription(EmotionEstimate, "/erc_ros/emotion",
                                             self._on_estimate, RELIABLE)
        self.executor = MultiThreadedExecutor(num_threads=3)
        for n in [*self.comp.nodes, self.player_node]:
            self.executor.add_node(n)
        self._spin = threading.Thread(target=self.executor.spin, daemon=True)

    def _on_estimate(self, msg) -> None:
        est = emotion_msgs.msg_to_estimate(msg)
        with self._lock:
            self.estimates.append(est)
        if self.on_estimate:
            self.on_estimate(None, est)

    def start(self, first_clock: float) -> bool:
        self._spin.start()
        self.player.clock(first_clock)
        ok = self.comp.start()
        # Discovery between the player and the nodes (same process, loopback): every topic the
        # nodes take from the bag matched before the first record, else a loaded machine loses
        # the first audio and the live buffer starts later than an offline replay's.
        wanted = {sub.topic_name for n in self.comp.nodes for sub in n.subscriptions}
        pubs = [p for t, p in self.player.pubs.items() if t in wanted]
        deadline = time.monotonic() + 10.0
        while time.monotonic() < deadline and \
                not all(p.get_subscription_count() > 0 for p in pubs):
            time.sleep(0.02)
        time.sleep(0.1)
        return ok

    def finish(self, end_clock: float, timeout: float = 30.0) -> None:
        """After the last record: advance /clock, flush the core, wait for the estimates."""
        utt = self.comp.utterance
        deadline = time.monotonic() + timeout
        # Every record taken from DDS first: on a busy machine the node's executor may still
        # hold some when the player is done, and the flush would close utterances without
        # the audio or the results still on their way.
        # Messages DDS lost (a keep-last history that overflowed) never come: stop waiting
        # once nothing more arrived for 2 s.
        sent = self.player.to_subscribers()
        got, still = -1, time.monotonic()
        while time.monotonic() < deadline and time.monotonic() - still < 2.0:
            now_got = utt.health.counts.get("received", 0)
            if now_got >= sent:
                break
            if now_got != got:
                got, still = now_got, time.monotonic()
            time.sleep(0.02)
        self.player.clock(end_clock + 5.0)
        time.sleep(0.1)
        utt.request_flush()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            if (utt.worker.idle_now() and utt.flushed and self.comp.emotion.worker.idle_now()
                    and self.comp.emotion.published <= len(self.estimates)):
                break

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.comp.destroy()
        self.player_node.destroy_node()


def live_replay(bag: str | Path, config=None, model_dir: str = "", backend: str = "auto",
                precision: str = "auto", threads: int = 2, rate: float = 1.0,
                on_estimate=None, progress=None, sets: Optional[dict] = None,
                asr_type: str = "") -> ReplayResult:
    """Replay one bag through the live composed nodes; returns like ``replay_bag``
    (``asr_type``: instead of the bag's ASR, e.g. ``embedded``)."""
    own_context = not rclpy.ok()
    if own_context:
        rclpy.init()
    try:
        start, end = bag_span(bag)
        extra = [Parameter(k, value=v) for k, v in (sets or {}).items()]
        sess = LiveSession(bag, config, model_dir, backend, precision, threads,
                           extra_utterance_params=extra, on_estimate=on_estimate,
                           asr_type=asr_type)
        res = ReplayResult(duration_s=end - start)
        t0 = time.perf_counter()
        if not sess.start(start):
            raise RuntimeError("the nodes failed to start (see the log)")
        res.messages = sess.player.play(bag, rate, progress, res.ground_truth)
        sess.finish(end)
        res.wall_s = time.perf_counter() - t0
        res.estimates = sorted(sess.estimates, key=lambda e: e.end)
        res.refused = dict(sess.comp.utterance.health.refused)
        res.stats = {**sess.comp.utterance.core.stats(),
                     "node": dict(sess.comp.utterance.health.counts)}
        sess.close()
        return res
    finally:
        if own_context:
            rclpy.try_shutdown()
