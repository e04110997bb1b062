"""The emotion node: ``erc_ros/Utterance`` -> ``erc_ros/EmotionEstimate`` (+ hri Expression).

Per speaker, ``/humans/voices/<speaker>/expression`` carries the fused estimate of each
utterance (``voice_expression: fused``, the default; with ``fusion: senses`` it weighs the
voice with the words and the face) or what the voice expert alone said of the utterance's
audio (``voice_expression: voice``, computed by the utterance node when the utterance
closed); the fused estimate
goes to ``/humans/faces/<speaker>/expression`` instead with ``expression_namespace: faces``.
One topic, one meaning: the fused estimate and the voice expert never share a topic.
It also publishes what the face-expression
expert said of the speaker's face (computed by the utterance node while the person spoke,
carried by the utterance) as ``hri_msgs/Expression`` on ``/humans/faces/<face id>/expression``
(``publish_face_expression``), as ROS4HRI's hri_emotion_recognizer does but stamped with the
utterance's end and with valence/arousal. erc_ros tracks no faces of its own: the face id is
the speaker id as a topic token (:func:`erc_ros.ros.topic_names.id_token`, the same token as
the speaker's ``/humans/voices/<id>/...`` topics), since the face is the one chosen as the
speaker's for that utterance.

``on_configure`` loads the model directory through ``EmotionPipeline.from_model_dir`` (the
one inference path; FAILURE with a clear log if the directory is missing or tampered);
``on_activate`` subscribes. The subscription callback only enqueues (bounded, drops counted);
one worker thread runs the pipeline, which keeps each conversation's context itself.
Composed with the utterance node (:mod:`erc_ros.ros.composed`), :meth:`submit` takes
utterances in memory instead of over DDS.
"""
from __future__ import annotations

import math
import sys
import threading
import time
from collections import OrderedDict
from typing import Any, Optional

import numpy as np
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from erc_ros import process
from erc_ros.assemble import default_model_dir, load_pipeline
from erc_ros.ros import emotion_msgs, tracked
from erc_ros.ros.diagnostics import NodeHealth, diagnostic_array, to_status
from erc_ros.ros.lifecycle import (ParameterGuard, declare_documented, diagnostics_timer, fail,
                                   read_parameters, run_node, wait_acked)
from erc_ros.ros.topic_names import id_token
from erc_ros.ros.worker import Worker

PARAMETERS: dict[str, tuple[Any, str]] = {
    "autostart": (True, "configure and activate on start (there is no launch manager here)"),
    "model_dir": ("", "model directory (manifest.json + weights); empty: the package's "
                      "models/default"),
    "backend": ("auto", "runtime backend: auto, torch, onnxruntime, tensorrt"),
    "precision": ("auto", "auto (int8 on a CPU with VNNI, fp32 on one without, fp16 on a GPU), fp32, fp16, int8 (what the backend and model dir offer)"),
    "threads": (2, "CPU threads for inference"),
    "fusion": ("senses", "the published label: 'senses' weighs the text model with the "
                         "experts its sense fusion names (the shipped one: the voice), each "
                         "as far as its reading can be trusted (docs/fusion.md; "
                         "fusion_model, fitted with this text model, else text alone and a "
                         "log line); 'text': the text model alone"),
    "fusion_model": ("", "the sense fusion's model directory; empty: the package's "
                         "models/senses"),
    "prepare": (False, "make missing ONNX / INT8 files of the model into the cache at "
                       "configure (export + quantize, once; ~10 s for the default model). "
                       "Off: run what `python -m erc_ros prepare` (set-up) made, else torch, "
                       "and say so"),
    "utterance_topic": ("erc_ros/utterances", "input topic (erc_ros/Utterance)"),
    "subscribe_utterances": (True, "subscribe to utterance_topic (composed mode hands "
                                   "utterances over in memory instead)"),
    "estimate_topic": ("erc_ros/emotion", "output topic (erc_ros/EmotionEstimate)"),
    "publish_expression": (True, "also publish hri_msgs/Expression per speaker for ROS4HRI "
                                 "users (what voice_expression and expression_namespace say; "
                                 "publish_face_expression aside)"),
    "expression_namespace": ("voices", "where the fused estimate's Expression goes: 'voices' "
                                       "-> /humans/voices/<speaker>/expression (only with "
                                       "voice_expression fused: that topic carries one "
                                       "meaning), 'faces' -> /humans/faces/<speaker>/expression "
                                       "(<speaker>: the speaker id as a topic token, "
                                       "erc_ros.ros.topic_names)"),
    "voice_expression": ("fused", "what /humans/voices/<speaker>/expression carries: 'fused': "
                                  "the fused estimate of each of the speaker's utterances "
                                  "(with fusion senses it weighs the voice with the words; "
                                  "expression_namespace voices), and the voice "
                                  "expert's own reading is in the EmotionEstimate only; "
                                  "'voice': the voice expert's reading of the utterance's "
                                  "audio alone (its top class, valence/arousal and "
                                  "confidence; nothing for an utterance whose voice_status is "
                                  "not ok), and the fused estimate is in the EmotionEstimate "
                                  "only"),
    "publish_face_expression": (True, "publish the face-expression expert's hri_msgs/Expression "
                                      "on /humans/faces/<speaker>/expression for each utterance "
                                      "whose speaker's face was seen (the fused label is not "
                                      "changed by it)"),
    "max_expression_publishers": (32, "at most this many per-speaker Expression publishers; "
                                      "the least recently used one is destroyed for a new one"),
    "expression_idle_timeout": (300.0, "seconds after which the Expression publisher of a "
                                       "speaker who said nothing is destroyed (0: never)"),
    "queue_size": (64, "bound of the utterance queue; overflow is dropped and counted"),
    "queue_bytes": (512 << 20, "bound of the audio, face crops and text the utterance queue "
                               "holds, waiting or being estimated, in bytes (an utterance "
                               "over it alone still goes in when the queue is empty); "
                               "overflow is dropped and counted"),
    "diagnostics_period": (1.0, "seconds between /diagnostics messages"),
    "diagnostics_window": (30.0, "seconds of 'now' on /diagnostics: refused input, drops "
                                 "and internal errors older than this no longer raise the "
                                 "level (the totals since start stay beside them)"),
    "shutdown_timeout": (3.0, "on shutdown (SIGINT, SIGTERM, the lifecycle transition): at most "
                              "this many seconds to estimate and publish the utterances "
                              "already taken (in the composed process, after the utterance "
                              "node's shutdown_timeout has handed on its last ones)"),
}

#: Ranges of the numeric parameters (the descriptor refuses values outside).
BOUNDS: dict[str, tuple[float, float]] = {
    "threads": (1, 256), "queue_size": (1, 100000), "queue_bytes": (1 << 20, 1 << 40),
    "max_expression_publishers": (1, 10000),
    "expression_idle_timeout": (0.0, 1e7), "diagnostics_period": (0.01, 3600.0),
    "diagnostics_window": (1.0, 86400.0),
    "shutdown_timeout": (0.0, 3600.0),
}


def _utterance_bytes(item) -> int:
    """Bytes of an utterance's audio, face crops and text, as queued: an erc_ros/Utterance
    message (split mode) or an in-memory Utterance (composed), with its arrival time."""
    u = item[0]
    if hasattr(u, "features"):  # erc_ros.core.types.Utterance
        return int(np.asarray(u.audio).nbytes + sum(np.asarray(f).nbytes for f in u.faces)
                   + len(u.text))
    return 2 * len(u.audio) + sum(len(f.data) for f in u.faces) + len(u.text)


class EmotionNode(LifecycleNode):
    """Utterance -> EmotionEstimate through the runtime pipeline.

    Resources and the transition that makes / frees them: the /diagnostics publisher and
    timer live as long as the node (made in ``__init__``, freed by ``destroy_node``: they
    also report a failed configure); the pipeline, worker, estimate publisher and Expression publishers
    are made in ``on_configure`` and freed in ``on_cleanup`` (and by a failing configure);
    the subscription is made in ``on_activate`` and freed in ``on_deactivate``."""

    def __init__(self, name: str = "emotion_node", **kwargs):
        super().__init__(name, **kwargs)
        self._param_errors = declare_documented(self, PARAMETERS, BOUNDS)
        self.guard = ParameterGuard(self)
        self.health = NodeHealth()
        self.pipeline = None
        self.worker: Optional[Worker] = None
        self._sub = None
        self._pub = None
        self._expr_pubs: OrderedDict[str, list] = OrderedDict()  # topic -> [pub, last use]
        self._expr_lock = threading.Lock()
        self._diag_pub, self._diag_timer = diagnostics_timer(self)
        self.published = 0
        self._active = False  # between on_activate and on_deactivate
        self.on_estimate = None  # optional in-process hook: f(utterance, estimate, e2e_ms)

    def process_request(self) -> dict[str, Any]:
        """What this node asks of its process (:func:`erc_ros.process.configure`): torch's
        pool sized by ``threads`` (a torch backend; ONNX Runtime sessions take it each)."""
        return {"torch_threads": int(self.get_parameter("threads").value)}

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        p, bad = read_parameters(self, PARAMETERS)
        self.p = p
        if p["publish_expression"] and p["expression_namespace"] == "faces" and \
                p["publish_face_expression"]:
            bad.append("expression_namespace faces and publish_face_expression would both "
                       "publish on /humans/faces/<speaker>/expression (the fused estimate and "
                       "the face expert's): set publish_face_expression false, or keep "
                       "expression_namespace voices")
        if bad:
            return self._fail("invalid parameters: " + "; ".join(bad))
        allocator = process.tune_allocator()  # before the first model (docs/ros.md)
        if allocator:
            self.get_logger().info(allocator)
        model_dir = p["model_dir"] or default_model_dir()
        try:
            with process.loading_models():
                self.pipeline = load_pipeline(model_dir, backend=p["backend"],
                                              precision=p["precision"], threads=p["threads"],
                                              prepare=p["prepare"], fusion=p["fusion"],
                                              fusion_model=p["fusion_model"])
        except Exception as err:
            return self._fail(f"cannot load the model from {model_dir!r}: {err}")
        self.health.error = ""
        self.worker = Worker("utterances", p["queue_size"], self._process, self.health,
                             idle=self._expire_expression_pubs, period=0.5,
                             on_error=lambda e: self.get_logger().error(f"worker: {e!r}"),
                             max_bytes=p["queue_bytes"], size_of=_utterance_bytes)
        from erc_ros.msg import EmotionEstimate
        self._pub = self.create_lifecycle_publisher(EmotionEstimate, p["estimate_topic"], 50)
        self.guard.configured = True
        self.get_logger().info(f"configured: model {self.pipeline.model_id} from {model_dir} "
                               f"on {self.pipeline.backend_name}/{self.pipeline.precision} "
                               f"({self.pipeline.where}; {self.pipeline.why}); fusion "
                               f"{self.pipeline.fusion_why}")
        return TransitionCallbackReturn.SUCCESS

    def _fail(self, msg: str) -> TransitionCallbackReturn:
        return fail(self, msg, lambda: setattr(self, "pipeline", None))

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        if self.p["subscribe_utterances"]:
            from erc_ros.msg import Utterance
            qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                             reliability=ReliabilityPolicy.RELIABLE)
            self._sub = self.create_subscription(Utterance, self.p["utterance_topic"],
                                                 self._on_utterance_msg, qos)
        self.worker.start()
        self._active = True
        self.get_logger().info(
            "active: " + (f"estimates from {self._sub.topic_name}" if self._sub is not None
                          else "estimates from in-process utterances")
            + f" on {self._pub.topic_name}")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        source = "in-process utterances"
        if self._sub is not None:
            source = f"{self._sub.topic_name} unsubscribed"
            self.destroy_subscription(self._sub)
            self._sub = None
        if self.worker:
            self.worker.stop()
        queued = self.worker.depth() if self.worker else 0
        self.get_logger().info(f"deactivated: no estimates ({source}); {queued} queued "
                               f"utterances wait for the next activate")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        queued = 0
        if self.worker:
            self.worker.stop()
            queued = self.worker.depth()
        model = self.pipeline.model_id if self.pipeline is not None else "none"
        expression_pubs = len(self._expr_pubs)
        if self._pub is not None:
            self.destroy_lifecycle_publisher(self._pub)
            self._pub = None
        with self._expr_lock:
            for pub, _ in self._expr_pubs.values():
                self.destroy_publisher(pub)
            self._expr_pubs.clear()
        self.pipeline = None  # frees the model
        self.worker = None
        self.guard.configured = False
        process.release_memory()
        self.get_logger().info(f"cleaned up: model {model} released, the estimate and "
                               f"{expression_pubs} Expression publishers destroyed, "
                               f"{queued} queued utterances dropped")
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        """SIGINT / SIGTERM (the process's main loop makes this transition) or ``ros2
        lifecycle set ... shutdown``. Active: no more utterances are taken; those taken are
        estimated and published within ``shutdown_timeout``, then the worker is joined."""
        if self._sub is not None:
            self.destroy_subscription(self._sub)
            self._sub = None
        timeout = self.get_parameter("shutdown_timeout").value
        if self._active and self.worker is not None:
            self._active = False
            t0, before = time.monotonic(), self.published
            if not self.worker.stop(timeout=timeout, drain=True):
                self.get_logger().warning(f"shutdown: utterances still being estimated "
                                          f"after {timeout:g} s (shutdown_timeout)")
            self.get_logger().info(f"shut down: {self.published - before} estimates "
                                   f"published while shutting down")
            with self._expr_lock:
                pubs = [self._pub, *(pub for pub, _ in self._expr_pubs.values())]
            # Reliable subscribers acknowledge the last estimates (1 s at most, within the
            # shutdown_timeout).
            wait_acked(pubs, max(0.0, min(1.0, timeout - (time.monotonic() - t0))))
        else:
            self.get_logger().info("shut down: nothing to finish (the node was not active)")
        if self.worker:
            self.worker.stop()
        return TransitionCallbackReturn.SUCCESS

    # -- input -------------------------------------------------------------------------------
    def _on_utterance_msg(self, msg) -> None:
        self.worker.put((msg, None))  # converted on the worker, not here

    def submit(self, utterance, final_arrival: Optional[float] = None) -> bool:
        """In-process hand-off (composed mode): no DDS copy of audio and faces."""
        if self.worker is None:
            self.health.count("dropped.inactive")
            return False
        return self.worker.put((utterance, final_arrival))

    # -- worker ------------------------------------------------------------------------------
    def _process(self, items: list) -> None:
        for item, arrival in items:
            if not hasattr(item, "features"):  # an erc_ros/Utterance message
                try:
                    item = emotion_msgs.msg_to_utterance(item)
                except ValueError as err:
                    self.health.refuse(getattr(err, "reason", "utterance"), str(err))
                    continue
            try:
                self._predict(item, arrival)
            except Exception as err:  # one bad utterance must not take the batch with it
                self.health.count("errors.predict")
                self.get_logger().error(f"prediction failed for {item.utterance_id}: {err!r}")

    def _predict(self, utt, arrival: Optional[float]) -> None:
        t0 = time.perf_counter()
        est = self.pipeline.predict(utt)
        proc_ms = (time.perf_counter() - t0) * 1e3
        e2e = float("nan")
        msg = emotion_msgs.estimate_to_msg(est)
        if arrival is not None:
            e2e = (time.perf_counter() - arrival) * 1e3
            msg.end_to_end_latency_ms = float(e2e)
        self._pub.publish(msg)
        self.published += 1
        self.health.count("estimates")
        if not est.label:
            self.health.count("estimates_without_label")  # nothing the model reads
        self.health.count(f"face_status.{est.face_status or 'disabled'}")
        self.health.count(f"voice_status.{est.voice_status or 'disabled'}")
        if est.voice_reason:
            self.health.count(f"voice_uncertain.{est.voice_reason}")
        self.health.latency("processing", proc_ms)
        if math.isfinite(e2e):
            self.health.latency("end_to_end", e2e)
        p = self.p
        fused_on = p["expression_namespace"] == "faces" or p["voice_expression"] == "fused"
        if p["publish_expression"] and est.speaker_id and est.label and fused_on:
            self._expression_pub(est.speaker_id, p["expression_namespace"]).publish(
                emotion_msgs.estimate_to_expression(est))
        voice = emotion_msgs.voice_expression(est) if p["publish_expression"] and \
            p["voice_expression"] == "voice" else None
        if voice is not None and est.speaker_id:
            self._expression_pub(est.speaker_id, "voices").publish(voice)
            self.health.count("voice_expressions")
        face = emotion_msgs.face_expression(est) if self.p["publish_face_expression"] else None
        if face is not None and est.speaker_id:
            self._expression_pub(est.speaker_id, "faces").publish(face)
            self.health.count("face_expressions")
        if self.on_estimate is not None:
            self.on_estimate(utt, est, e2e)

    def _expression_pub(self, speaker_id: str, ns: str):
        """The Expression publisher of a speaker on ``/humans/<ns>/<speaker token>/expression``: made
        on first use, at most ``max_expression_publishers`` of them (least recently used
        destroyed first)."""
        topic = f"/humans/{ns}/{id_token(speaker_id)}/expression"
        with self._expr_lock:
            entry = self._expr_pubs.get(topic)
            if entry is None:
                from hri_msgs.msg import Expression
                while len(self._expr_pubs) >= self.p["max_expression_publishers"]:
                    _, (old, _) = self._expr_pubs.popitem(last=False)
                    self.destroy_publisher(old)
                    self.health.count("expression_publishers.evicted")
                # tracked.publisher: evicted / expired while the executor spins
                entry = [tracked.publisher(self, Expression, topic, 10), 0.0]
                self._expr_pubs[topic] = entry
            self._expr_pubs.move_to_end(topic)
            entry[1] = time.monotonic()
            return entry[0]

    def _expire_expression_pubs(self) -> None:
        """Destroy the Expression publishers idle for ``expression_idle_timeout`` (worker)."""
        ttl = self.p["expression_idle_timeout"]
        if ttl <= 0:
            return
        now = time.monotonic()
        with self._expr_lock:
            while self._expr_pubs:
                topic, (pub, last) = next(iter(self._expr_pubs.items()))
                if now - last < ttl:
                    break
                del self._expr_pubs[topic]
                self.destroy_publisher(pub)
                self.health.count("expression_publishers.expired")

    def publish_diagnostics(self) -> None:
        if self._diag_pub is None:
            return
        extra: dict[str, Any] = {}
        if self.pipeline is not None:
            extra["model"] = self.pipeline.model_id
            extra["backend"] = self.pipeline.backend_name
            try:
                extra["pipeline"] = self.pipeline.stats()
            except Exception:
                pass
        depth = ({"utterances": (self.worker.depth(), self.worker.capacity)}
                 if self.worker else {})
        extra["expression_publishers"] = len(self._expr_pubs)
        if self.worker:
            extra["queue_bytes"] = self.worker.held_bytes
        st = to_status(f"{self.get_name()}: emotion", "erc_ros", self.health, extra, depth)
        self._diag_pub.publish(diagnostic_array(self.get_clock().now().to_msg(), [st]))


def main(argv=None) -> int:
    return run_node(EmotionNode, argv)


if __name__ == "__main__":
    sys.exit(main())
