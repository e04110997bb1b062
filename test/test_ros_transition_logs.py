"""Each lifecycle transition says what it did in one log line, as configure and activate
do: deactivate (what stops taking input, what stays queued), cleanup (what is released,
what queued input is dropped) and shutdown, also of a node that was not active."""
from __future__ import annotations

import pytest
from rclpy.lifecycle import TransitionCallbackReturn
from rclpy.parameter import Parameter

from _ros_support import wait_for
from erc_ros.ros.emotion_node import EmotionNode
from erc_ros.ros.face_expression_node import FaceExpressionNode
from erc_ros.ros.utterance_node import UtteranceNode

pytestmark = pytest.mark.ros


def _node(kind: str, model):
    if kind == "emotion":
        return EmotionNode(name="emotion_logs", parameter_overrides=[
            Parameter("autostart", value=False), Parameter("model_dir", value=str(model)),
            Parameter("backend", value="torch")])
    if kind == "utterance":
        return UtteranceNode(name="utterance_logs", parameter_overrides=[
            Parameter("perception.diarization.enabled", value=False),
            Parameter("perception.diarization.warmup", value=False)])
    return FaceExpressionNode(name="face_logs")


@pytest.mark.parametrize("kind,deactivated,cleaned", [
    ("emotion", "deactivated: no estimates (/erc_ros/utterances unsubscribed); 0 queued "
                "utterances wait for the next activate",
     "cleaned up: model tiny-test released, the estimate and 0 Expression publishers "
     "destroyed, 0 queued utterances dropped"),
    ("utterance", "deactivated: 4 subscriptions destroyed; 0 queued inputs wait for the next "
                  "activate", "cleaned up: perception core released, 0 queued inputs dropped"),
    ("face", "deactivated: no expressions; the tracked list and 0 faces' crop subscriptions "
             "destroyed", "cleaned up: face-expression expert released"),
])
def test_deactivate_cleanup_and_shutdown_say_what_they_did(ros, model, capfd, kind,
                                                           deactivated, cleaned):
    node = _node(kind, model)
    try:
        assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS, \
            f"{kind} node cannot configure here: {node.health.error}"
        assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
        capfd.readouterr()
        assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: deactivated in capfd.readouterr().err, 5), deactivated
        assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: cleaned in capfd.readouterr().err, 5), cleaned
        assert node.trigger_shutdown() == TransitionCallbackReturn.SUCCESS
        assert wait_for(lambda: "shut down:" in capfd.readouterr().err, 5)
    finally:
        node.destroy_node()
