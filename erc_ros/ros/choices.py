"""The allowed values of the nodes' enumerated parameters and of the launch arguments that
set them: one list, read by the nodes (parameter validation) and by the launch plan
(argument validation), so a typo is refused with the same reason everywhere.

No rclpy here: ``launch_config`` (tested without a launch system) imports it too.
"""
from __future__ import annotations

from typing import Any

IMAGE_TRANSPORTS = ("raw", "compressed", "none")
AUDIO_MSGS = ("stamped", "raw", "none")
ASR_TYPES = ("transcript", "live_speech", "hri_voices", "string", "embedded", "none")
RELIABILITIES = ("reliable", "best_effort")
BACKENDS = ("auto", "torch", "onnxruntime", "tensorrt")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
EXPRESSION_NAMESPACES = ("voices", "faces")
VOICE_EXPRESSIONS = ("voice", "fused")  # what /humans/voices/<speaker>/expression carries
FUSIONS = ("senses", "text")  # the published label (erc_ros.runtime.senses.FUSION_MODES)
FACE_CROP_TOPICS = ("cropped", "aligned")  # ROS4HRI's /humans/faces/<id>/<crop_topic>

#: parameter name -> allowed values (the same name in every node that has it).
CHOICES: dict[str, tuple[str, ...]] = {
    "image_transport": IMAGE_TRANSPORTS,
    "audio_msg": AUDIO_MSGS,
    "asr_type": ASR_TYPES,
    "image_reliability": RELIABILITIES,
    "audio_reliability": RELIABILITIES,
    "asr_reliability": RELIABILITIES,
    "backend": BACKENDS,
    "precision": PRECISIONS,
    "expression_namespace": EXPRESSION_NAMESPACES,
    "voice_expression": VOICE_EXPRESSIONS,
    "fusion": FUSIONS,
    "crop_topic": FACE_CROP_TOPICS,
}


def check_choice(name: str, value: Any) -> str:
    """'' when ``value`` is allowed for ``name`` (or ``name`` is not enumerated), else the
    reason it is refused."""
    allowed = CHOICES.get(name)
    if allowed is None or value in allowed:
        return ""
    return f"{name}: {value!r} is not one of {', '.join(allowed)}"
