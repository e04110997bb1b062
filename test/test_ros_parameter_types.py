"""An integer given for a double parameter is that double, set at run time through the
real set_parameters service (what ``ros2 param set /emotion_node poll_period 0`` does) or
given at start (``-p``, a params file): rclpy alone refused it with "Wrong parameter type,
expected '3' got '2'"."""
from __future__ import annotations

import threading

import pytest
import rclpy
from rcl_interfaces.msg import ParameterType
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter

from _ros_support import set_remotely, wait_for
from erc_ros.ros.emotion_node import EmotionNode
from erc_ros.ros.utterance_node import UtteranceNode

pytestmark = pytest.mark.ros
NO_DIARIZATION = [Parameter("perception.diarization.enabled", value=False),
                  Parameter("perception.diarization.warmup", value=False)]


def test_an_integer_for_a_double_parameter_is_that_double(ros):
    from rcl_interfaces.srv import SetParameters

    node = UtteranceNode(name="utt_types", parameter_overrides=NO_DIARIZATION)
    client = rclpy.create_node("types_client")
    cli = client.create_client(SetParameters, "/utt_types/set_parameters")
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(node)
    ex.add_node(client)
    threading.Thread(target=ex.spin, daemon=True).start()
    try:
        assert cli.wait_for_service(10)

        def remote_set(name, value):  # what `ros2 param set` does
            return set_remotely(cli, name, value)

        for name, value in (("poll_period", 1), ("perception.vad.min_silence_seconds", 2)):
            res = remote_set(name, value)
            assert res.successful, res.reason
            got = node.get_parameter(name)
            assert got.type_ == Parameter.Type.DOUBLE and got.value == float(value)
        # Its range still holds, and says so.
        res = remote_set("poll_period", 0)
        assert not res.successful and "poll_period" in res.reason and "range" in res.reason
        assert node.get_parameter("poll_period").value == 1.0
        # An integer parameter is not made a double, nor a string a number.
        assert not remote_set("queue_size", 2.0).successful
        assert not remote_set("poll_period", "0.5").successful
    finally:
        ex.shutdown(timeout_sec=2.0)
        node.destroy_node()
        client.destroy_node()


def test_an_integer_given_at_start_for_a_double_is_that_double(ros, model):
    node = EmotionNode(name="emo_types", parameter_overrides=[
        Parameter("autostart", value=False), Parameter("model_dir", value=str(model)),
        Parameter("shutdown_timeout", value=2), Parameter("threads", value=1)])
    utt = UtteranceNode(name="utt_start_types", parameter_overrides=[
        *NO_DIARIZATION, Parameter("poll_period", value=1),
        Parameter("perception.vad.min_silence_seconds", value=1)])
    try:
        assert node._param_errors == [] and utt._param_errors == []
        assert node.get_parameter("shutdown_timeout").value == 2.0
        assert node.describe_parameter("shutdown_timeout").type == \
            ParameterType.PARAMETER_DOUBLE
        assert utt.get_parameter("poll_period").value == 1.0
        assert utt.get_parameter("perception.vad.min_silence_seconds").value == 1.0
    finally:
        node.destroy_node()
        utt.destroy_node()
