"""What ``launch/emotion.launch.py`` launches, decided in plain tested Python.

:func:`plan` turns the launch arguments into a list of :class:`NodeSpec` (executable, name,
namespace, parameters, remappings). The launch file only declares the arguments and maps
each NodeSpec onto ``launch_ros.actions.Node`` (CI has no ``launch`` here, see
docs/ros2-from-pypi notes): everything that can be wrong is in this module and tested.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from erc_ros.core.params import flatten

PACKAGE = "erc_ros"

#: Launch arguments: name -> (default, description). The launch file declares exactly these.
ARGUMENTS: dict[str, tuple[str, str]] = {
    "config": ("", "YAML parameter file (default: the package's config/emotion.yaml)"),
    "namespace": ("", "namespace for the nodes"),
    "model_dir": ("", "model directory (default: the package's models/default)"),
    "backend": ("", "runtime backend: auto, torch, onnxruntime, tensorrt (default: from "
                    "the config file)"),
    "composed": ("true", "run both nodes in one process with an in-process hand-off "
                         "(faster: no DDS copy of audio and images)"),
    "use_sim_time": ("false", "use /clock (bag replay)"),
    "image_topic": ("", "remap the camera topic"),
    "audio_topic": ("", "remap the audio topic"),
    "asr_topic": ("", "remap the ASR topic"),
    "estimate_topic": ("", "remap the EmotionEstimate output topic"),
}

#: Executables (installed by CMakeLists.txt from scripts/).
EXEC_UTTERANCE = "utterance_node"
EXEC_EMOTION = "emotion_node"
EXEC_COMPOSED = "emotion_pipeline"

# Topic defaults of the nodes (their parameters), which the remap arguments replace.
_TOPIC_DEFAULTS = {"image_topic": "/camera/image_raw", "audio_topic": "/audio",
                   "asr_topic": "/erc_ros/transcript", "estimate_topic": "/erc_ros/emotion"}


@dataclass
class NodeSpec:
    executable: str
    name: str
    namespace: str = ""
    parameters: list[dict[str, Any]] = field(default_factory=list)
    remappings: list[tuple[str, str]] = field(default_factory=list)
    package: str = PACKAGE


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


def load_config(path: str | Path) -> dict[str, dict[str, Any]]:
    """``config/emotion.yaml`` (ROS 2 params file format) -> {node name: {param: value}}."""
    data = yaml.safe_load(Path(path).read_text()) or {}
    out: dict[str, dict[str, Any]] = {}
    for node, body in data.items():
        params = (body or {}).get("ros__parameters", {})
        out[node.strip("/").split("/")[-1]] = flatten(params)
    return out


def plan(args: Optional[dict[str, str]] = None) -> list[NodeSpec]:
    """Launch arguments (strings, as launch gives them) -> the nodes to start.

    Each node gets the YAML file (its section, ``utterance_node:`` / ``emotion_node:``) and
    then a dict of the overrides the arguments ask for. Parameter names of the two nodes
    never clash in meaning, so the same override dict serves both nodes of the composed
    process (rclpy ignores parameters a node does not declare).
    """
    a = {k: d for k, (d, _) in ARGUMENTS.items()}
    unknown = set(args or {}) - set(a)
    if unknown:
        raise ValueError(f"unknown launch arguments: {sorted(unknown)}")
    a.update({k: str(v) for k, v in (args or {}).items()})
    cfg_path = Path(a["config"]) if a["config"] else default_config()
    if not cfg_path.is_file():
        raise FileNotFoundError(f"config file not found: {cfg_path}")
    cfg = load_config(cfg_path)
    missing = {"utterance_node", "emotion_node"} - set(cfg)
    if missing:
        raise ValueError(f"{cfg_path} has no section for {sorted(missing)}")
    over: dict[str, Any] = {"use_sim_time": _truthy(a["use_sim_time"])}
    if a["model_dir"]:
        over["model_dir"] = a["model_dir"]
    if a["backend"]:
        if a["backend"] not in ("auto", "torch", "onnxruntime", "tensorrt"):
            raise ValueError(f"unknown backend {a['backend']!r}")
        over["backend"] = a["backend"]
    # Topics are node parameters (so one mechanism works composed or not); a remap argument
    # overrides the parameter, and is listed as a remapping of the configured name too.
    remaps: list[tuple[str, str]] = []
    for key, node in (("image_topic", "utterance_node"), ("audio_topic", "utterance_node"),
                      ("asr_topic", "utterance_node"), ("estimate_topic", "emotion_node")):
        if a[key]:
            remaps.append((cfg[node].get(key, _TOPIC_DEFAULTS[key]), a[key]))
            over[key] = a[key]
    ns = a["namespace"]
    params: list = [str(cfg_path), over]
    if _truthy(a["composed"]):
        # No node-name remap: in one process it would rename both nodes.
        return [NodeSpec(EXEC_COMPOSED, "", ns, params, remaps)]
    return [NodeSpec(EXEC_UTTERANCE, "utterance_node", ns, list(params), remaps),
            NodeSpec(EXEC_EMOTION, "emotion_node", ns, list(params), remaps)]


def node_parameters(spec: NodeSpec, node_name: str) -> dict[str, Any]:
    """The parameter values ``node_name`` ends up with from ``spec`` (YAML section, then the
    override dicts): what rclpy would compute, for tests and for `--dry-run` printing."""
    out: dict[str, Any] = {}
    for p in spec.parameters:
        if isinstance(p, dict):
            out.update(p)
        else:
            out.update(load_config(p).get(node_name, {}))
    return out
