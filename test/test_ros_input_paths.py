"""The nodes' newest input paths probed as a robot's network would (issue 30): each node runs
as its own process (``ros2 run``), fed over real DDS by publishers in this process.

- face_expression_node follows a tracked face list that changes 50 times a second (every
  churning id replaced each time, crops at 10 Hz on every id) and stays alive and answering
  (it died within 7-50 s: a per-face entity destroyed while the executor built its wait
  set).
- a new voice's first utterance reaches a subscriber that follows /humans/voices/tracked as
  ROS4HRI's libraries do (subscribing to /humans/voices/<id>/speech when the id appears, with
  the system-default QoS libhri uses), in another DDS participant: the publisher announces
  the id and holds that voice's speech until the followers are matched (5 of 7 were lost).
"""
from __future__ import annotations

import threading
import time

import pytest
import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from _ros_support import Collector, NodeProcess, wait_for
from erc_ros.ros import convert

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                      reliability=ReliabilityPolicy.RELIABLE)


class Driver:
    """A plain rclpy node of this process, spun in a thread."""

    def __init__(self, name: str):
        self.node = rclpy.create_node(name)
        self.ex = SingleThreadedExecutor()
        self.ex.add_node(self.node)
        self._thread = threading.Thread(target=self.ex.spin, daemon=True)
        self._thread.start()

    def collect(self, msg_type, topic: str, qos=RELIABLE) -> Collector:
        c = Collector()
        self.node.create_subscription(msg_type, topic, c, qos)
        return c

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self.node.destroy_node()


def _statuses(diags: Collector, prefix: str) -> list:
    return [st for arr in diags.snapshot() for st in arr.status if st.name.startswith(prefix)]


@pytest.mark.parametrize("seconds", [25, pytest.param(300, marks=pytest.mark.soak)])
def test_face_node_survives_faces_coming_and_going(ros, seconds):
    from diagnostic_msgs.msg import DiagnosticArray
    from hri_msgs.msg import Expression, IdsList
    from sensor_msgs.msg import Image

    from erc_ros.runtime.face_expert import sample_crops
    face = sample_crops(lfw=0)[0]  # scikit-image's astronaut
    proc = NodeProcess("erc_ros.ros.face_expression_node",
                       {"rate": 5.0, "diagnostics_period": 0.5})
    drv = Driver("face_churn_driver")
    try:
        tracked = drv.node.create_publisher(IdsList, "/humans/faces/tracked", RELIABLE)
        pool = [f"p{i}" for i in range(8)]
        crops = {i: drv.node.create_publisher(Image, f"/humans/faces/{i}/cropped", 1)
                 for i in ["keep", *pool]}
        kept = drv.collect(Expression, "/humans/faces/keep/expression")
        diags = drv.collect(DiagnosticArray, "/diagnostics")
        assert wait_for(lambda: tracked.get_subscription_count() == 1 or not proc.alive(),
                        120), proc.log()
        tracked.publish(IdsList(ids=["keep"]))
        assert wait_for(lambda: crops["keep"].get_subscription_count() == 1, 20), proc.log()

        t0 = time.monotonic()
        next_list = next_crop = t0
        changes, counts = 0, []  # (seconds since start, expressions of "keep" so far)
        while time.monotonic() - t0 < seconds and proc.alive():
            now = time.monotonic()
            if now >= next_list:  # 50 lists a second: the three churning ids all replaced
                ids = [pool[(3 * changes + j) % len(pool)] for j in range(3)]
                tracked.publish(IdsList(ids=["keep", *ids]))
                changes += 1
                next_list += 0.02
            if now >= next_crop:  # crops at 10 Hz on every id, tracked or not
                stamp = convert.float_to_time(now)
                for pub in crops.values():
                    pub.publish(convert.rgb_to_image(face, stamp))
                counts.append((now - t0, len(kept)))
                next_crop += 0.1
            time.sleep(max(0.0, min(next_list, next_crop) - time.monotonic()))
        assert proc.alive(), f"died after {time.monotonic() - t0:.1f} s, {changes} lists:\n" \
                             + proc.log()[-3000:]
        # It kept answering: the stable face's expressions came through the last third too.
        late = [n for t, n in counts if t >= 2 * seconds / 3]
        assert late and late[-1] > late[0], (counts[-5:], proc.log()[-2000:])
        assert changes >= 20 * seconds  # the churn really ran (at most 50/s)
        # ... and still does once the churn stops; its /diagnostics follow the list.
        tracked.publish(IdsList(ids=["keep"]))
        n = len(kept)
        for _ in range(100):
            crops["keep"].publish(convert.rgb_to_image(face, Time(sec=10)))
            if wait_for(lambda: len(kept) > n, 0.2):
                break
        assert len(kept) > n
        assert wait_for(lambda: any(kv.key == "faces.tracked" and kv.value == "1"
                                    for st in _statuses(diags, "face_expression_node")[-3:]
                                    for kv in st.values), 10)
        assert "Traceback" not in proc.log() and "InvalidHandle" not in proc.log()
    finally:
        drv.close()
        proc.stop()


class VoiceFollower:
    """What libhri's HRIListener does with voices, in its own DDS participant (own context):
    follows /humans/voices/tracked and, when an id appears, subscribes to its speech
    (system-default QoS: reliable, volatile, as libhri's Voice)."""

    def __init__(self):
        from hri_msgs.msg import IdsList, LiveSpeech
        from rclpy.qos import qos_profile_system_default
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("voice_follower", context=self.context)
        self.ex = SingleThreadedExecutor(context=self.context)
        self.ex.add_node(self.node)
        self.heard: dict[str, list[str]] = {}
        self._subs: dict = {}
        self._lock = threading.Lock()

        def on_tracked(msg):
            for vid in msg.ids:
                if vid not in self._subs:
                    self._subs[vid] = self.node.create_subscription(
                        LiveSpeech, f"/humans/voices/{vid}/speech",
                        lambda m, vid=vid: self._on_speech(vid, m), qos_profile_system_default)
        self.tracked = self.node.create_subscription(IdsList, "/humans/voices/tracked",
                                                     on_tracked, qos_profile_system_default)
        threading.Thread(target=self.ex.spin, daemon=True).start()

    def _on_speech(self, vid: str, msg) -> None:
        with self._lock:
            self.heard.setdefault(vid, []).append(msg.final)

    def snapshot(self) -> dict[str, list[str]]:
        with self._lock:
            return {k: list(v) for k, v in self.heard.items()}

    def close(self) -> None:
        self.ex.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def test_a_new_voice_first_utterance_reaches_a_tracked_list_follower(ros):
    """The embedded recognizer's output (AsrOutput, as the utterance node runs it: publish on
    a worker thread while the node spins): seven new voices, each speaking first 0.3 s
    after the previous one, two of them again; the follower hears every utterance, each
    voice's first included, in order."""
    from erc_ros.core.types import Utterance
    from erc_ros.ros.asr_output import AsrOutput
    from erc_ros.ros.diagnostics import NodeHealth

    follower = VoiceFollower()
    drv = Driver("asr_output_voices")
    health = NodeHealth()
    out = AsrOutput(drv.node, "erc_ros/transcript", max_voices=32, voice_timeout=60.0,
                    health=health)
    try:
        assert wait_for(lambda: out.tracked.get_subscription_count() == 1, 10)
        said: dict[str, list[str]] = {}
        t = 0.0
        for i in range(7):
            for vid in [f"v{i}"] + (["v0", "v1"] if i == 6 else []):
                text = f"{vid} says {len(said.get(vid, []))}"
                said.setdefault(vid, []).append(text)
                out.publish(Utterance(f"u{t}", "c", vid, t, t + 1.0, text=text), now=t)
                t += 1.0
            time.sleep(0.3)
        assert wait_for(lambda: follower.snapshot() == said, 15), (follower.snapshot(), said)
        assert health.counts["asr.voices_announced"] == 7
        assert health.counts.get("asr.announce_timeouts", 0) == 0
    finally:
        out.destroy()
        drv.close()
        follower.close()
