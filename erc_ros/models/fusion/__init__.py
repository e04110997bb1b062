"""Fusion heads over a conversation of utterance vectors (see ``common`` for the signature)."""
from .registry import HEADS, build_fusion, head_classes  # noqa: F401
