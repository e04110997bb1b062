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

from rclpy.parameter import Parameter

from erc_ros.ros.emotion_node import EmotionNode
from erc_ros.ros.lifecycle import autostart, run, shut_down
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
        # Emotion first: no utterance may be handed over before the model is loaded, and the
        # utterance node's face crops depend on whether the model uses video
        # (erc_ros.assemble.perception_config).
        if not autostart(self.emotion):
            return False
        pipe = self.emotion.pipeline
        if pipe is not None:
            self.utterance.uses_video = pipe.model.uses("video")
        return autostart(self.utterance)

    def shutdown(self) -> None:
        """The nodes' shutdown transitions, utterance node first: it hands its last
        utterances (the recognizer's accepted speech) to the emotion node, which is still
        active to estimate and publish them in its own."""
        for node in self.nodes:
            shut_down(node)

    def destroy(self) -> None:
        self.shutdown()
        for node in self.nodes:
            node.destroy_node()


def main(argv=None) -> int:
    def build():
        comp = ComposedPipeline()
        return comp.nodes, comp.start, comp.destroy
    return run(build, threads=3, argv=argv)


if __name__ == "__main__":
    sys.exit(main())
