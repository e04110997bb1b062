"""`python -m erc_ros record --out BAG`: capture a session for later `eval-bag`.

Records (raw CDR, no re-serialization) the inputs erc_ros uses and its outputs into a
rosbag2 (MCAP by default) with `rosbags`: the same bag `ros2 bag record` would give with

    ros2 bag record -s mcap /audio /audio_info /camera/image_raw/compressed \
        /erc_ros/transcript /erc_ros/utterances /erc_ros/emotion /diagnostics

To label the session afterwards, write ``labels.csv`` (utterance_id,start,end,speaker,text,
label; times in the bag's clock, e.g. from the recorded estimates' spans) into the bag folder.
Stop with Ctrl-C or ``--duration``.
"""
from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from rosbags.rosbag2 import StoragePlugin, Writer

from erc_ros.bags.bagio import make_typestore
from erc_ros.ros.replay import message_class

DEFAULT_TOPICS = ["/audio", "/audio_info", "/camera/image_raw", "/camera/image_raw/compressed",
                  "/erc_ros/transcript", "/erc_ros/utterances", "/erc_ros/emotion",
                  "/diagnostics"]


def add_arguments(p) -> None:
    p.add_argument("--out", required=True, help="bag folder to create")
    p.add_argument("--topics", nargs="*", default=DEFAULT_TOPICS)
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--storage", choices=["mcap", "sqlite3"], default="mcap")
    p.add_argument("--use-sim-time", action="store_true",
                   help="record times from /clock (recording a replay) instead of wall time")


def record(out: Path, topics: list[str], duration: float = 0.0, storage: str = "mcap",
           stop: threading.Event | None = None, discovery_s: float = 1.0,
           use_sim_time: bool = False) -> dict[str, int]:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    own = not rclpy.ok()
    if own:
        rclpy.init()
    from rclpy.parameter import Parameter
    node = rclpy.create_node("erc_record", parameter_overrides=[
        Parameter("use_sim_time", value=use_sim_time)])
    store = make_typestore()
    writer = Writer(out, version=9, storage_plugin={"mcap": StoragePlugin.MCAP,
                                                    "sqlite3": StoragePlugin.SQLITE3}[storage])
    writer.open()
    lock = threading.Lock()
    counts: dict[str, int] = {}
    conns: dict[str, object] = {}
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                     reliability=ReliabilityPolicy.RELIABLE)
    stop = stop or threading.Event()

    def subscribe_known():
        for name, types in node.get_topic_names_and_types():
            if name in topics and name not in conns and types:
                typ = types[0]
                conns[name] = writer.add_connection(name, typ, typestore=store)
                node.create_subscription(message_class(typ), name,
                                         lambda raw, n=name: write(n, raw), qos, raw=True)

    def write(name, raw):
        t = node.get_clock().now().nanoseconds
        with lock:
            writer.write(conns[name], t, raw)
            counts[name] = counts.get(name, 0) + 1

    ex = SingleThreadedExecutor()
    ex.add_node(node)
    t0 = time.monotonic()
    try:
        while not stop.is_set() and (duration <= 0 or time.monotonic() - t0 < duration):
            subscribe_known()
            ex.spin_once(timeout_sec=min(0.1, discovery_s))
    finally:
        ex.shutdown(timeout_sec=1.0)
        node.destroy_node()
        with lock:
            writer.close()
        if own:
            rclpy.try_shutdown()
    return counts


def run(args) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    counts = record(Path(args.out), args.topics, args.duration, args.storage, stop,
                    use_sim_time=args.use_sim_time)
    print(f"record: {args.out}: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    return 0
