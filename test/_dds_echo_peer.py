"""A separate ROS 2 process for test_interfaces_dds.py: subscribes to /erc_test/in/<Name> for
every sample message type and publishes what it receives, unchanged, on /erc_test/out/<Name>.
Exits after --seconds, or when stdin closes."""
from __future__ import annotations

import argparse
import sys
import threading

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import QoSProfile, ReliabilityPolicy

import _sample_msgs as samples


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    rclpy.init()
    node = rclpy.create_node("erc_test_echo_peer")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    keep = []
    for name, make in samples.ALL.items():
        cls = type(make())
        pub = node.create_publisher(cls, f"/erc_test/out/{name}", qos)
        keep.append(node.create_subscription(cls, f"/erc_test/in/{name}",
                                             lambda msg, pub=pub: pub.publish(msg), qos))
    print("ready", flush=True)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    deadline = node.get_clock().now().nanoseconds + int(args.seconds * 1e9)
    while not stop.is_set() and node.get_clock().now().nanoseconds < deadline:
        executor.spin_once(timeout_sec=0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
