"""Speech recognition on the robot's CPU: Whisper through faster-whisper (CTranslate2).

The perception core's VAD cuts the microphone into speech segments; :class:`AsrWorker` takes
them one at a time on its own thread (a bounded queue: a full queue refuses, and the caller
emits the speech without text, so nothing is lost silently) and :class:`WhisperRecognizer`
turns each into text with word times on the caller's clock.

- :mod:`.files`: model names resolved to local CTranslate2 directories, never a hub;
  :func:`prepare_model` joins Whisper base into the cache once.
- :mod:`.whisper`: the recognizer (model choice, decoding, word times) and its results.
- :mod:`.sentences`: where recognized text ends a sentence.
- :mod:`.worker`: the recognizer's thread and queue.

Its parameters are :class:`erc_ros.core.config.AsrConfig` (``asr.<field>``). Pure Python: no
rclpy; faster-whisper is imported only when a model loads.
"""
from .files import (MODEL_NAMES, PREPARE_COMMAND, AsrModelError, model_cache_dir, prepare_model,
                    resolve_model)
from .sentences import ends_sentence, has_words, sentence_cuts
from .whisper import SAMPLE_RATE, AsrResult, WhisperRecognizer, Word
from .worker import AsrWorker, SegmentResult

__all__ = ["AsrModelError", "Word", "AsrResult", "WhisperRecognizer", "AsrWorker",
           "SegmentResult", "resolve_model", "prepare_model", "model_cache_dir",
           "MODEL_NAMES", "PREPARE_COMMAND", "SAMPLE_RATE", "ends_sentence", "has_words",
           "sentence_cuts"]
