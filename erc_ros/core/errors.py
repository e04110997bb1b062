"""Errors for refused input.

Every ``push_*`` of :class:`erc_ros.core.perception.PerceptionCore` raises an
:class:`InputError` (a ``ValueError``) for input it refuses, after leaving its state as it
was. ``reason`` is a short machine-readable key a node can count and put on /diagnostics;
``str(error)`` is a sentence a person can act on.
"""
from __future__ import annotations


class InputError(ValueError):
    """Input refused by the perception core. ``reason`` is a short stable key."""

    reason = "input"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason

    def __repr__(self) -> str:
        return f"{type(self).__name__}(reason={self.reason!r}, {str(self)!r})"


class AudioCodingError(InputError):
    """The audio is coded (mp3, opus, a WAV/Ogg file...) rather than raw PCM samples."""

    reason = "audio_coding"


class AudioFormatError(InputError):
    """Raw PCM that cannot be read as declared (sample format, channels, byte count...)."""

    reason = "audio_format"


class SampleRateError(AudioFormatError):
    """The declared sample rate disagrees with how fast the stamps advance."""

    reason = "audio_rate"


class AudioSizeError(InputError):
    """A chunk too large to buffer (longer than ``audio.max_chunk_seconds``)."""

    reason = "audio_size"


class StampError(InputError):
    """A stamp that is not finite, or audio older than what is already buffered."""

    reason = "stamp"


class ImageDecodeError(InputError):
    """A camera frame that is not a readable image."""

    reason = "image_decode"


class TranscriptError(InputError):
    """An ASR result with inconsistent times (end before start, not finite...)."""

    reason = "transcript"


class TranscriptFutureError(TranscriptError):
    """A final ASR result about speech implausibly far ahead of the audio and input clock
    (beyond ``segmentation.max_transcript_lead_seconds``): an ASR clock ahead of the
    robot's, or a flood. Kept, it would wait for its audio forever."""

    reason = "transcript_future"


class PendingFullError(InputError):
    """A final ASR result refused because ``segmentation.max_pending_utterances`` results
    already wait for their audio or speech (the waiting ones are kept)."""

    reason = "pending_full"
