"""What a model's stages are called and take: the vocabulary shared by export, quantize,
engines, prepare and the pipeline (the bottom of ``erc_ros.runtime``; imports nothing of it).
"""
from __future__ import annotations

import inspect

#: Every stage a model directory may carry, in the order a prediction runs them.
STAGES = ("text_encoder", "audio_encoder", "video_encoder", "fusion")
ENCODERS = STAGES[:3]

#: Inputs and outputs of the stages whose signature does not depend on the encoder kind.
STAGE_IO = {
    "text_encoder": (["input_ids", "attention_mask"], ["text_vec"]),
    "fusion": (["text", "audio", "video", "modality_mask", "speaker_ids", "padding_mask"],
               ["logits", "modality_weights"]),
}


def positional_names(module) -> list[str]:
    """The names of ``module.forward``'s positional parameters, in order (ONNX input names)."""
    sig = inspect.signature(module.forward)
    return [n for n, p in sig.parameters.items()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def needed_stages(model) -> set[str]:
    """The stages predictions use (an encoder of an untrained modality is not run)."""
    return {"text_encoder", "fusion"} | {f"{m}_encoder" for m in ("audio", "video")
                                         if model.uses(m)}


def stage_io(model, stage: str) -> tuple[list[str], list[str]]:
    """(input names, output names) of ``stage`` of ``model``."""
    if stage in STAGE_IO:
        return STAGE_IO[stage]
    return positional_names(getattr(model, stage)), \
        ["audio_vec" if stage == "audio_encoder" else "video_vec"]
