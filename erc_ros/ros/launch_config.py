"""What ``launch/emotion.launch.py`` launches, decided in plain tested Python.

:func:`plan` turns the launch arguments into a list of :class:`NodeSpec` (executable, name,
namespace, parameters, remappings). The launch file only declares the arguments and maps
each NodeSpec onto ``launch_ros.actions.Node`` (CI has no ``launch`` here, see
shared/notes/ros2-from-pypi.md): everything that can be wrong is in this module and tested.
The arguments and what they do are documented in docs/ros.md (its launch-arguments table is
generated from :data:`ARGUMENTS`).

Namespaces: the config file is a ROS 2 params file, whose section keys are matched against
each node's fully qualified name the way rcl does it (:func:`section_applies`). The package's
config/emotion.yaml uses ``/**/utterance_node:`` / ``/**/emotion_node:`` so its values reach
the nodes in any namespace (``namespace:=robot1``); :func:`load_config` computes, for a given
namespace, what each node gets. The nodes' default topic names are relative (they land under
the namespace); /diagnostics, /clock and ROS4HRI's /humans/... stay absolute (REP-155).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from erc_ros.core.params import flatten
from erc_ros.process import node_environment
from erc_ros.ros.choices import check_choice

PACKAGE = "erc_ros"

#: Launch arguments: name -> (default, description). The launch file declares exactly these.
ARGUMENTS: dict[str, tuple[str, str]] = {
    "config": ("", "YAML parameter file (default: the package's config/emotion.yaml)"),
    "namespace": ("", "namespace for the nodes"),
    "model_dir": ("", "model directory (default: the package's models/default)"),
    "backend": ("", "runtime backend: auto, torch, onnxruntime, tensorrt (default: from "
                    "the config file)"),
    "image_transport": ("", "camera input: raw, compressed (CompressedImage on "
                            "<image_topic>/compressed) or none (default: from the config file)"),
    "audio_msg": ("", "microphone input: stamped (AudioDataStamped), raw (AudioData) or none "
                      "(default: from the config file)"),
    "asr_type": ("", "ASR input: transcript, live_speech, hri_voices, string, embedded (the "
                     "node's own recognizer on the microphone) or none (default: from the "
                     "config file)"),
    "asr": ("", "the same as asr_type (asr:=embedded: camera and microphone are enough)"),
    "image_reliability": ("", "QoS reliability of the camera subscription: reliable or "
                              "best_effort (default: from the config file)"),
    "audio_reliability": ("", "QoS reliability of the microphone subscription: reliable or "
                              "best_effort (default: from the config file)"),
    "asr_reliability": ("", "QoS reliability of the ASR subscription: reliable or "
                            "best_effort (default: from the config file)"),
    "composed": ("true", "run both nodes in one process with an in-process hand-off "
                         "(faster: no DDS copy of audio and images)"),
    "use_sim_time": ("false", "use /clock (bag replay)"),
    "image_topic": ("", "remap the camera topic"),
    "audio_topic": ("", "remap the audio topic (ros-drivers audio_capture: "
                        "/audio/audio_stamped, or /audio/audio with audio_msg:=raw)"),
    "audio_info_topic": ("", "remap the AudioInfo topic (ros-drivers audio_capture: "
                             "/audio/audio_info)"),
    "asr_topic": ("", "remap the ASR topic"),
    "estimate_topic": ("", "remap the EmotionEstimate output topic"),
    "log_level": ("", "log level of the nodes: debug, info, warn, error or fatal, or "
                      "<logger>:=<level> for one logger (rcl --log-level; default: info)"),
    "respawn": ("false", "restart a node process that exits (ros2 launch's respawn); the "
                         "restarted node configures and activates itself (autostart)"),
    "respawn_delay": ("2.0", "seconds before a node process that exited is restarted "
                             "(respawn:=true)"),
    "face_expression_node": ("false", "also start face_expression_node (ROS4HRI: an "
                                      "hri_msgs/Expression per tracked face on "
                                      "/humans/faces/<id>/expression, continuously); the "
                                      "emotion node's per-utterance face Expression "
                                      "(publish_face_expression) is then off, so those topics "
                                      "carry the tracked faces' only"),
}

#: Executables (installed by CMakeLists.txt from scripts/).
EXEC_UTTERANCE = "utterance_node"
EXEC_EMOTION = "emotion_node"
EXEC_COMPOSED = "emotion_pipeline"
EXEC_FACE_EXPRESSION = "face_expression_node"

#: The node names (the executables name their nodes so; the composed process too).
NODE_NAMES = ("utterance_node", "emotion_node")

# Topic defaults of the nodes (their parameters), which the remap arguments replace. Relative:
# under namespace:=robot1 they resolve to /robot1/camera/image_raw etc.
_TOPIC_DEFAULTS = {"image_topic": "camera/image_raw", "audio_topic": "audio",
                   "audio_info_topic": "audio_info",
                   "asr_topic": "erc_ros/transcript", "estimate_topic": "erc_ros/emotion"}

#: Launch arguments that set an enumerated node parameter of the same name (allowed values:
#: erc_ros.ros.choices); empty means "as the config file says".
_CHOICE_ARGUMENTS = ("backend", "image_transport", "audio_msg", "asr_type",
                     "image_reliability", "audio_reliability", "asr_reliability")

# A topic name a remap argument may give: ROS 2 name tokens ([A-Za-z0-9_], not starting with
# a digit) separated by '/', optionally absolute ('/') or private ('~/'); no '//', no
# trailing '/'. Substitutions ({node}) are not accepted here.
_TOKENS = r"[A-Za-z_][A-Za-z0-9_]*(/[A-Za-z_][A-Za-z0-9_]*)*"
_TOPIC_NAME = re.compile(r"(~/|/)?" + _TOKENS, re.ASCII)
_NAMESPACE = re.compile(r"/?" + _TOKENS + r"/?", re.ASCII)


@dataclass
class NodeSpec:
    executable: str
    name: str
    namespace: str = ""
    parameters: list[dict[str, Any]] = field(default_factory=list)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    package: str = PACKAGE
    ros_arguments: list[str] = field(default_factory=list)  # e.g. --log-level debug
    respawn: bool = False
    respawn_delay: float = 0.0
    #: added to the node process's environment (the allocator: erc_ros.process.node_environment)
    env: dict[str, str] = field(default_factory=dict)


def _truthy(v: Any) -> bool:
    return str(v).strip().lower() in ("1", "true", "yes", "on")


def package_share() -> Path:
    """The package share directory (an install) or the source tree (development)."""
    try:
        from ament_index_python.packages import get_package_share_directory
        return Path(get_package_share_directory(PACKAGE))
    except Exception:
        return Path(__file__).resolve().parents[2]


def default_config() -> Path:
    return package_share() / "config" / "emotion.yaml"


def normalize_namespace(namespace: str) -> str:
    """``""`` -> ``"/"``, ``"robot1"`` / ``"/robot1/"`` -> ``"/robot1"`` (what rcl makes of a
    node namespace given at the top level of a launch)."""
    return "/" + namespace.strip().strip("/")


def node_fqn(name: str, namespace: str = "") -> str:
    """The fully qualified name of node ``name`` in ``namespace``."""
    ns = normalize_namespace(namespace)
    return ns.rstrip("/") + "/" + name


def section_applies(key: str, fqn: str) -> bool:
    """Whether the params-file section ``key`` applies to the node ``fqn`` -- rcl's rule
    (rclpy / rclcpp ``parameter_map_from``): a leading '/' is implied, then ``/**`` stands for
    any number of namespace tokens (none included) and ``/*`` for exactly one, and the whole
    name must match. So ``utterance_node`` means the node of that name in the ROOT namespace
    only, ``/**/utterance_node`` that node in any namespace, ``/**`` every node."""
    name = key if key.startswith("/") else "/" + key
    pattern = re.escape(name).replace(r"/\*\*", r"(/\w+)*").replace(r"/\*", r"(/\w+)")
    return re.fullmatch(pattern, fqn, re.ASCII) is not None


def _sections(path: str | Path) -> list[tuple[str, dict[str, Any]]]:
    data = yaml.safe_load(Path(path).read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a ROS 2 params file (a mapping of node sections)")
    out = []
    for key, body in data.items():
        body = {} if body is None else body
        params = (body.get("ros__parameters") or {}) if isinstance(body, dict) else None
        if not isinstance(params, dict):
            raise ValueError(f"{path}: section {key!r} has no 'ros__parameters' mapping")
        out.append((str(key), flatten(params)))
    return out


def load_config(path: str | Path, namespace: str = "") -> dict[str, dict[str, Any]]:
    """``config/emotion.yaml`` (ROS 2 params file format) -> {node name: {param: value}}: what
    rcl applies to the node of that name in ``namespace`` (sections that match its fully
    qualified name, merged in file order, later ones winning).

    Node names: erc_ros's own (:data:`NODE_NAMES`) and the last token of every literal
    section key. A node appears only if at least one section applies to it."""
    sections = _sections(path)
    names = list(NODE_NAMES)
    for key, _ in sections:
        last = key.rstrip("/").split("/")[-1]
        if last and "*" not in last and last not in names:
            names.append(last)
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        fqn = node_fqn(name, namespace)
        for key, params in sections:
            if section_applies(key, fqn):
                out.setdefault(name, {}).update(params)
    return out


def plan(args: Optional[dict[str, str]] = None) -> list[NodeSpec]:
    """Launch arguments (strings, as launch gives them) -> the nodes to start.

    Each node gets the YAML file (the sections rcl applies to it in the namespace, e.g.
    ``/**/utterance_node:``) and then a dict of the overrides the arguments ask for.
    Enumerated arguments are checked against erc_ros.ros.choices and remap arguments must be
    ROS topic names (relative ones land under the namespace): ValueError with the reason
    otherwise. Parameter names of the two nodes never clash in meaning, so the same override
    dict serves both nodes of the composed process (rclpy ignores parameters a node does not
    declare). ``face_expression_node:=true`` adds the ROS4HRI face-expression node, in its own
    process, with the YAML file (a ``/**/face_expression_node:`` section, if it has one) and
    ``use_sim_time``; the emotion node's ``publish_face_expression`` is then false.
    """
    a = {k: d for k, (d, _) in ARGUMENTS.items()}
    unknown = set(args or {}) - set(a)
    if unknown:
        raise ValueError(f"unknown launch arguments: {sorted(unknown)}")
    a.update({k: str(v) for k, v in (args or {}).items()})
    cfg_path = Path(a["config"]) if a["config"] else default_config()
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config file not found: {cfg_path}")
    ns = a["namespace"].strip()
    if ns and not _NAMESPACE.fullmatch(ns):
        raise ValueError(f"namespace: {ns!r} is not a valid ROS namespace")
    cfg = load_config(cfg_path, ns)
    missing = [n for n in NODE_NAMES if n not in cfg]
    if missing:
        raise ValueError(
            f"{cfg_path} has no section for {missing} in namespace {normalize_namespace(ns)} "
            f"(a key 'utterance_node:' matches the root namespace only; use "
            f"'/**/utterance_node:' for any namespace)")
    over: dict[str, Any] = {"use_sim_time": _truthy(a["use_sim_time"])}
    if a["model_dir"]:
        over["model_dir"] = a["model_dir"]
    faces = _truthy(a["face_expression_node"])
    if faces:
        emo = cfg["emotion_node"]
        if emo.get("publish_expression", True) and \
                emo.get("expression_namespace", "voices") == "faces":
            raise ValueError(
                f"face_expression_node:=true and {cfg_path}'s emotion_node "
                "expression_namespace: faces would both publish on "
                "/humans/faces/<id>/expression (the tracked faces' and the fused estimate "
                "per speaker): set expression_namespace voices")
        over["publish_face_expression"] = False  # /humans/faces/<id>/: tracked faces only
    given_as = {"asr_type": "asr_type"}  # the argument a value came from (for the reason)
    if a["asr"]:
        if a["asr_type"] and a["asr_type"] != a["asr"]:
            raise ValueError(f"launch arguments asr:={a['asr']} and asr_type:={a['asr_type']} "
                             "disagree (asr is a shorthand for asr_type: give one)")
        a["asr_type"], given_as["asr_type"] = a["asr"], "asr"
    for key in _CHOICE_ARGUMENTS:
        if a[key]:
            reason = check_choice(key, a[key])
            if reason:
                name = given_as.get(key, key)
                raise ValueError(f"launch argument {name}" + reason[len(key):]
                                 if reason.startswith(key) else f"launch argument {reason}")
            over[key] = a[key]
    process = _process_arguments(a)
    # Topics are node parameters (so one mechanism works composed or not); a remap argument
    # overrides the parameter, and is listed as a remapping of the configured name too.
    remaps: list[tuple[str, str]] = []
    for key, node in (("image_topic", "utterance_node"), ("audio_topic", "utterance_node"),
                      ("audio_info_topic", "utterance_node"), ("asr_topic", "utterance_node"),
                      ("estimate_topic", "emotion_node")):
        if a[key]:
            if not _TOPIC_NAME.fullmatch(a[key]):
                raise ValueError(f"launch argument {key}: {a[key]!r} is not a valid ROS topic "
                                 f"name")
            remaps.append((cfg[node].get(key, _TOPIC_DEFAULTS[key]), a[key]))
            over[key] = a[key]
    params: list = [str(cfg_path), over]
    if _truthy(a["composed"]):
        # No node-name remap: in one process it would rename both nodes.
        specs = [NodeSpec(EXEC_COMPOSED, "", ns, params, remaps, **process)]
    else:
        specs = [NodeSpec(EXEC_UTTERANCE, "utterance_node", ns, list(params), remaps,
                          **process),
                 NodeSpec(EXEC_EMOTION, "emotion_node", ns, list(params), remaps, **process)]
    if faces:  # its own process; only use_sim_time of the overrides concerns it
        specs.append(NodeSpec(EXEC_FACE_EXPRESSION, "face_expression_node", ns,
                              [str(cfg_path), {"use_sim_time": over["use_sim_time"]}],
                              **process))
    return specs


#: rcl's log levels (``--log-level``).
LOG_LEVELS = ("debug", "info", "warn", "error", "fatal")
_LOGGER_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*", re.ASCII)


def _process_arguments(a: dict[str, str]) -> dict[str, Any]:
    """``log_level``, ``respawn``, ``respawn_delay`` -> NodeSpec fields (ValueError with the
    reason for a value rcl or launch would refuse, or take for something else)."""
    out: dict[str, Any] = {}
    level = a["log_level"].strip()
    if level:
        logger, sep, lvl = level.rpartition(":=")
        if lvl.lower() not in LOG_LEVELS or (sep and not _LOGGER_NAME.fullmatch(logger)):
            raise ValueError(f"launch argument log_level: {level!r} is not a log level "
                             f"({', '.join(LOG_LEVELS)}) or <logger>:=<level>")
        out["ros_arguments"] = ["--log-level", f"{logger}:={lvl.lower()}" if sep
                                else lvl.lower()]
    respawn = a["respawn"].strip().lower()
    if respawn not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
        raise ValueError(f"launch argument respawn: {a['respawn']!r} is not true or false")
    out["respawn"] = _truthy(respawn)
    try:
        delay = float(a["respawn_delay"])
    except ValueError:
        delay = float("nan")
    if not 0.0 <= delay <= 3600.0:
        raise ValueError(f"launch argument respawn_delay: {a['respawn_delay']!r} is not a "
                         "number of seconds in 0-3600")
    out["respawn_delay"] = delay if out["respawn"] else 0.0
    out["env"] = node_environment()
    return out


def node_parameters(spec: NodeSpec, node_name: str) -> dict[str, Any]:
    """The parameter values ``node_name`` ends up with from ``spec`` (YAML section, then the
    override dicts): what rclpy would compute for that node in ``spec.namespace``, for tests
    and for `--dry-run` printing."""
    out: dict[str, Any] = {}
    for p in spec.parameters:
        if isinstance(p, dict):
            out.update(p)
        else:
            out.update(load_config(p, spec.namespace).get(node_name, {}))
    return out
