"""`python -m erc_ros play BAG`: play a bag into nodes already running, with /clock.

What ``ros2 bag play --clock`` does, for machines without the rosbag2 tools (the PyPI ROS
wheels here have none): every record's raw CDR bytes published on its topic at its time /
``--rate``, and ``/clock`` with it, from a node of its own. Start the nodes with
``use_sim_time:=true`` so their stamps follow the bag (``ros2 launch erc_ros
emotion.launch.py use_sim_time:=true image_transport:=compressed``). The bag's
``/erc_ros/ground_truth`` is not published.

    python -m erc_ros play data/demo_bag --rate 1
    python -m erc_ros play BAG --wait 10 --rate 2      # wait up to 10 s for subscribers

It waits (``--wait`` s) until something subscribes to the bag's topics and the subscriptions settle
(``SETTLE_SECONDS``) before it starts, and
prints how many messages reached topics someone subscribes to.

The bag's ASR topics (its own recognizer's Transcript / LiveSpeech / String) are left out
where a running node publishes on the same topic (``--asr auto``): the utterance node with
``asr:=embedded`` publishes its recognizer's Transcript on ``asr_topic``, by default the
bag's ``/erc_ros/transcript``, and its readers would get both. ``--asr embedded`` leaves
them all out, ``--asr bag`` publishes them whatever runs.

Ctrl-C (or SIGTERM) stops it between two records, like ``ros2 bag play``: it says how far
it got, destroys its publishers and node, and exits 0. rclpy's own signal handlers are not
installed: they invalidate the context at the signal, and the next publish raised
``RCLError: publisher's context is invalid``.
"""
from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Callable

from erc_ros.assemble import ASR_TYPE_OF_MSG
from erc_ros.ros.live import BagPlayer, bag_connections
from erc_ros.ros.replay import GROUND_TRUTH_TOPIC, bag_span

#: How long the subscribed topics must stay the same before playing starts.
SETTLE_SECONDS = 1.0


def add_arguments(p) -> None:
    p.add_argument("bag", help="rosbag2 folder (MCAP or sqlite3)")
    p.add_argument("--rate", type=float, default=1.0, help="x real time (0: as fast as possible)")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for a subscriber before playing (0: do not wait)")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")
    p.add_argument("--asr", choices=["auto", "bag", "embedded"], default="auto",
                   help="the bag's ASR topics: auto leaves out those a running node "
                        "publishes on (the embedded recognizer), embedded leaves them all "
                        "out, bag publishes them")


def process_settings(args) -> dict:
    return {"torch_threads": None}


class Interrupted:
    """Set by SIGINT / SIGTERM; the wait and the player look at it between records. A flag,
    not a ``threading.Event``: ``Event.set`` in a signal handler takes a lock the
    interrupted main thread may hold."""

    def __init__(self) -> None:
        self.signum = 0

    def __call__(self, signum, frame) -> None:
        self.signum = signum

    def is_set(self) -> bool:
        return self.signum != 0


def asr_topics_left_out(conns: dict[str, str], asr: str,
                        publishers: Callable[[str], list[str]]) -> dict[str, str]:
    """``topic -> why`` for the bag's ASR topics not to publish: all of them with ``asr``
    ``embedded``; with ``auto`` those that ``publishers(topic)`` (the other nodes publishing
    on it) says a running node publishes on."""

    out = {}
    for topic, typ in conns.items():
        if typ not in ASR_TYPE_OF_MSG or asr == "bag":
            continue
        if asr == "embedded":
            out[topic] = "--asr embedded"
        elif others := publishers(topic):
            out[topic] = f"{', '.join(others)} publishes on it (--asr bag publishes it anyway)"
    return out


def run(args) -> int:
    bag = Path(args.bag)
    if not bag.exists():
        print(f"play: no such bag {bag}", file=sys.stderr)
        return 2
    if args.rate < 0:
        print("play: --rate must be >= 0", file=sys.stderr)
        return 2
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    conns = {t: ty for t, ty in bag_connections(bag).items() if t != GROUND_TRUTH_TOPIC}
    stop = Interrupted()
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("erc_ros_player")
    ex = SingleThreadedExecutor()
    player = None
    try:
        player = BagPlayer(node, conns, clock=not args.no_clock)
        ex.add_node(node)

        def subscribed() -> list[str]:
            return sorted(t for t, p in player.pubs.items() if p.get_subscription_count())

        # Up to --wait s for a first subscriber, then until the subscribed topics have not
        # changed for SETTLE_SECONDS: discovery matches a node's subscriptions one by one,
        # and a topic matched late would lose its first messages.
        deadline = time.monotonic() + args.wait
        listening, since = [], time.monotonic()
        while not stop.is_set() and \
                time.monotonic() < deadline + (SETTLE_SECONDS if listening else 0.0):
            now = subscribed()
            if now != listening:
                listening, since = now, time.monotonic()
            elif listening and time.monotonic() - since >= SETTLE_SECONDS:
                break
            ex.spin_once(timeout_sec=0.1)
        for topic, why in asr_topics_left_out(conns, args.asr, player.other_publishers).items():
            player.leave_out(topic)
            print(f"play: {topic} not published: {why}", flush=True)
        start, end = bag_span(bag)
        print(f"play: {bag.name}: {len(conns)} topics, {end - start:.1f} s at {args.rate:g}x; "
              f"subscribed: {', '.join(listening) or 'none yet'}", flush=True)
        n = player.play(bag, rate=args.rate, stop=stop) if not stop.is_set() else 0
        if stop.is_set():
            done = player.last_time - start if player.last_time is not None else 0.0
            print(f"play: interrupted at {done:.1f} of {end - start:.1f} s: {n} messages "
                  f"published, {player.to_subscribers()} on topics with subscribers",
                  flush=True)
        else:
            time.sleep(0.5)  # let reliable readers take the last messages
            print(f"play: {n} messages published, {player.to_subscribers()} on topics with "
                  f"subscribers", flush=True)
    finally:
        # Ctrl-C again while closing changes nothing (the handler only sets the flag).
        ex.shutdown(timeout_sec=1.0)
        if player is not None:
            player.destroy()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
