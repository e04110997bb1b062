"""`python -m erc_ros play` as a user runs it (another process, real DDS): Ctrl-C ends it
cleanly, and the bag's own transcripts are not published where the embedded recognizer of
a running node publishes its own."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _ros_support import Collector, wait_for

from erc_ros.paths import demo_bag

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
BAG = demo_bag()


def _play(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "erc_ros", "play", str(BAG), *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_ctrl_c_while_publishing_ends_play_cleanly():
    p = _play("--wait", "0")
    try:
        first = p.stdout.readline()  # printed when publishing starts
        assert first.startswith("play: demo_bag:"), first + p.stderr.read()
        time.sleep(1.5)
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=30)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert "Traceback" not in err and "Error" not in err, err
    assert "play: interrupted at" in out and "messages published" in out, out


def test_bag_transcripts_are_not_published_over_the_embedded_recognizer(ros):
    """A node publishing Transcript on the bag's transcript topic (what the utterance node
    with ``asr_type: embedded`` does) stands for the bag's recognizer: play leaves that
    topic out and says so; ``--asr bag`` would publish it anyway."""
    import rclpy
    from audio_common_msgs.msg import AudioDataStamped

    from erc_ros.msg import Transcript

    node = rclpy.create_node("embedded_asr_stand_in")
    node.create_publisher(Transcript, "/erc_ros/transcript", 10)
    heard, audio = Collector(), Collector()
    node.create_subscription(Transcript, "/erc_ros/transcript", heard, 100)
    node.create_subscription(AudioDataStamped, "/audio", audio, 1000)
    ex = rclpy.executors.SingleThreadedExecutor()
    ex.add_node(node)
    p = _play("--wait", "20", "--rate", "0")
    try:
        while p.poll() is None:
            ex.spin_once(timeout_sec=0.05)
        out, err = p.communicate(timeout=30)
        wait_for(lambda: ex.spin_once(timeout_sec=0.05) or len(audio) > 0, 5)
    finally:
        p.kill()
        ex.shutdown()
        node.destroy_node()
    assert p.returncode == 0, err
    assert "play: /erc_ros/transcript not published: /embedded_asr_stand_in publishes on it" \
        in out, out
    assert len(audio) > 0 and len(heard) == 0
