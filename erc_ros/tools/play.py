"""`python -m erc_ros play BAG`: play a bag into nodes already running, with /clock.

What ``ros2 bag play --clock`` does, for machines without the rosbag2 tools (the PyPI ROS
wheels here have none): every record's raw CDR bytes published on its topic at its time /
``--rate``, and ``/clock`` with it, from a node of its own. Start the nodes with
``use_sim_time:=true`` so their stamps follow the bag (``ros2 launch erc_ros
emotion.launch.py use_sim_time:=true image_transport:=compressed``). The bag's
``/erc_ros/ground_truth`` is not published.

    python -m erc_ros play test/data/demo_bag --rate 1
    python -m erc_ros play BAG --wait 10 --rate 2      # wait up to 10 s for subscribers

It waits (``--wait`` s) until something subscribes to the bag's topics and the subscriptions settle
(``SETTLE_SECONDS``) before it starts, and
prints how many messages reached topics someone subscribes to.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path


#: How long the subscribed topics must stay the same before playing starts.
SETTLE_SECONDS = 1.0


def add_arguments(p) -> None:
    p.add_argument("bag", help="rosbag2 folder (MCAP or sqlite3)")
    p.add_argument("--rate", type=float, default=1.0, help="x real time (0: as fast as possible)")
    p.add_argument("--wait", type=float, default=5.0,
                   help="seconds to wait for a subscriber before playing (0: do not wait)")
    p.add_argument("--no-clock", action="store_true", help="do not publish /clock")


def process_settings(args) -> dict:
    return {"torch_threads": None}


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

    from erc_ros.ros.live import BagPlayer, bag_connections
    from erc_ros.ros.replay import GROUND_TRUTH_TOPIC, bag_span

    conns = {t: ty for t, ty in bag_connections(bag).items() if t != GROUND_TRUTH_TOPIC}
    rclpy.init()
    node = rclpy.create_node("erc_ros_player")
    try:
        player = BagPlayer(node, conns, clock=not args.no_clock)
        ex = SingleThreadedExecutor()
        ex.add_node(node)
        def subscribed() -> list[str]:
            return sorted(t for t, p in player.pubs.items() if p.get_subscription_count())

        # Up to --wait s for a first subscriber, then until the subscribed topics have not
        # changed for SETTLE_SECONDS: discovery matches a node's subscriptions one by one,
        # and a topic matched late would lose its first messages.
        deadline = time.monotonic() + args.wait
        listening, since = [], time.monotonic()
        while time.monotonic() < deadline + (SETTLE_SECONDS if listening else 0.0):
            now = subscribed()
            if now != listening:
                listening, since = now, time.monotonic()
            elif listening and time.monotonic() - since >= SETTLE_SECONDS:
                break
            ex.spin_once(timeout_sec=0.1)
        start, end = bag_span(bag)
        print(f"play: {bag.name}: {len(conns)} topics, {end - start:.1f} s at {args.rate:g}x; "
              f"subscribed: {', '.join(listening) or 'none yet'}", flush=True)
        n = player.play(bag, rate=args.rate)
        time.sleep(0.5)  # let reliable readers take the last messages
        print(f"play: {n} messages published, {player.to_subscribers()} on topics with "
              f"subscribers")
    except KeyboardInterrupt:
        print("play: interrupted", file=sys.stderr)
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
