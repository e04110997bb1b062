"""Every message of ours (and each consumed type) crosses real DDS between two processes,
in both directions, with every field intact."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import rclpy
from rclpy.qos import QoSProfile, ReliabilityPolicy

import _sample_msgs as samples

pytestmark = pytest.mark.ros
HERE = Path(__file__).parent


@pytest.fixture()
def echo_peer():
    proc = subprocess.Popen([sys.executable, str(HERE / "_dds_echo_peer.py"), "--seconds", "60"],
                            cwd=HERE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_messages_cross_dds_between_processes(echo_peer):
    rclpy.init()
    try:
        node = rclpy.create_node("erc_test_dds")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        originals = {name: make() for name, make in samples.ALL.items()}
        received: dict[str, object] = {}
        pubs = {}
        for name, msg in originals.items():
            pubs[name] = node.create_publisher(type(msg), f"/erc_test/in/{name}", qos)
            node.create_subscription(type(msg), f"/erc_test/out/{name}",
                                     lambda m, name=name: received.setdefault(name, m), qos)
        deadline = time.monotonic() + 30
        next_send = 0.0
        while len(received) < len(originals) and time.monotonic() < deadline:
            if time.monotonic() >= next_send:  # resend until discovery has matched both ways
                for name, msg in originals.items():
                    if name not in received:
                        pubs[name].publish(msg)
                next_send = time.monotonic() + 0.25
            rclpy.spin_once(node, timeout_sec=0.05)
        missing = sorted(set(originals) - set(received))
        assert not missing, f"never came back over DDS: {missing}"
        for name, msg in originals.items():
            assert received[name] == msg, f"{name} changed on its way over DDS"
        assert echo_peer.poll() is None, "the peer process died"
        node.destroy_node()
    finally:
        rclpy.shutdown()
