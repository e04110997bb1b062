"""Both nodes in one process on one executor, utterances handed over in memory.

rclpy has no component container; "composed" here means what a container gives C++ nodes:
one process, one executor, and an in-process hand-off (``UtteranceNode.on_utterance`` ->
``EmotionNode.submit``) so audio and face crops are never copied through DDS. The utterance
node's own ``erc_ros/Utterance`` publication is off by default in this mode
(``publish_utterances``), the emotion node does not subscribe to it.
"""
from __future__ import annotations

import sys
from typing import Optional

import rclpy
from rclpy.parameter import Parameter

from erc_ros.ros.emotion_node import EmotionNode
from erc_ros.ros.lifecycle import autostart, spin
from erc_ros.ros.utterance_node import UtteranceNode


class ComposedPipeline:
    """The two nodes wired together; call :meth:`start`, add :attr:`nodes` to an executor."""

    def __init__(self, utterance_overrides: Optional[list[Parameter]] = None,
                 emotion_overrides: Optional[list[Parameter]] = None, namespace: str = "",
                 context=None):
        u_over = [Parameter("publish_utterances", value=False), *(utterance_overrides or [])]
        e_over = [Parameter("subscribe_utterances", value=False), *(emotion_overrides or [])]
        self.utterance = UtteranceNode(namespace=namespace, parameter_overrides=u_over,
                                       context=context)
        self.emotion = EmotionNode(namespace=namespace, parameter_overrides=e_over,
                                   context=context)
        self.utterance.on_utterance = self.emotion.submit

    @property
    def nodes(self):
        return [self.utterance, self.emotion]

    def start(self) -> bool:
        # Emotion first: no utterance may be handed over before the model is loaded.
        return autostart(self.emotion) and autostart(self.utterance)

    def stop(self) -> None:
        for node in self.nodes:
            if node.worker:
                node.worker.stop()

    def destroy(self) -> None:
        self.stop()
        for node in self.nodes:
            node.destroy_node()


def main(argv=None) -> int:
    rclpy.init(args=argv if argv is not None else sys.argv)
    comp = ComposedPipeline()
    ok = comp.start()
    if not ok:
        comp.emotion.get_logger().error("failed to start (see the log above)")
    return spin(comp.nodes, ok, comp.destroy, threads=3)


if __name__ == "__main__":
    sys.exit(main())
