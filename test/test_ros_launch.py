"""The launch helper (erc_ros.ros.launch_config) and the thin launch file around it.

`ros2 launch` is not installable here (no launch/launch_ros wheels): the decisions live in
launch_config.plan, checked below against the config file the package installs; the launch
file itself is compiled and checked to call the helper for every argument.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from erc_ros.ros import launch_config
from erc_ros.ros.emotion_node import PARAMETERS as EMOTION_PARAMS
from erc_ros.ros.utterance_node import PARAMETERS as UTTERANCE_PARAMS

ROOT = Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch" / "emotion.launch.py"
CONFIG = ROOT / "config" / "emotion.yaml"


def test_launch_file_compiles_and_delegates_to_the_helper():
    src = LAUNCH.read_text()
    tree = compile(src, str(LAUNCH), "exec", ast.PyCF_ONLY_AST)
    names = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
    assert {"plan", "ARGUMENTS"} <= names
    fns = {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    assert "generate_launch_description" in fns
    compile(src, str(LAUNCH), "exec")


def test_config_lists_every_node_parameter_with_its_default():
    cfg = launch_config.load_config(CONFIG)
    for node, params in (("utterance_node", UTTERANCE_PARAMS), ("emotion_node", EMOTION_PARAMS)):
        assert set(cfg[node]) == set(params), node
        for name, (default, desc) in params.items():
            assert cfg[node][name] == default, (node, name)
            assert desc
    # every line with a parameter carries a comment, or the line before it is a comment
    lines = CONFIG.read_text().splitlines()
    for i, line in enumerate(lines):
        if ":" in line and line.startswith("    ") and not line.strip().startswith("#") \
                and "ros__parameters" not in line:
            assert "#" in line or lines[i - 1].strip().startswith("#") or \
                line.split(":")[0].strip() in ("autostart", "diagnostics_period",
                                               "utterance_topic", "asr_topic",
                                               "audio_topic", "image_topic",
                                               "audio_info_topic"), line


def test_default_plan_is_one_composed_process():
    (spec,) = launch_config.plan()
    assert spec.executable == "emotion_pipeline" and spec.name == ""
    assert spec.parameters[0] == str(launch_config.default_config())
    assert launch_config.node_parameters(spec, "emotion_node")["use_sim_time"] is False
    assert spec.remappings == []
    assert (ROOT / "scripts" / spec.executable).is_file()


def test_split_plan_with_arguments(tmp_path):
    specs = launch_config.plan({"composed": "false", "namespace": "robot1",
                                "model_dir": "/models/x", "backend": "onnxruntime",
                                "use_sim_time": "true", "asr_topic": "/asr/result",
                                "estimate_topic": "/emotions"})
    assert [s.executable for s in specs] == ["utterance_node", "emotion_node"]
    assert all(s.namespace == "robot1" for s in specs)
    for s in specs:
        assert (ROOT / "scripts" / s.executable).is_file()
    utt = launch_config.node_parameters(specs[0], "utterance_node")
    emo = launch_config.node_parameters(specs[1], "emotion_node")
    assert utt["asr_topic"] == "/asr/result" and utt["use_sim_time"] is True
    assert emo["model_dir"] == "/models/x" and emo["backend"] == "onnxruntime"
    assert emo["estimate_topic"] == "/emotions"
    assert utt["image_topic"] == "/camera/image_raw"  # untouched
    assert ("/erc_ros/transcript", "/asr/result") in specs[0].remappings


def test_plan_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        launch_config.plan({"no_such_argument": "1"})
    with pytest.raises(ValueError):
        launch_config.plan({"backend": "cuda-magic"})
    with pytest.raises(FileNotFoundError):
        launch_config.plan({"config": str(tmp_path / "missing.yaml")})
    half = tmp_path / "half.yaml"
    half.write_text(yaml.safe_dump({"emotion_node": {"ros__parameters": {"threads": 1}}}))
    with pytest.raises(ValueError):
        launch_config.plan({"config": str(half)})


def test_custom_config_values_reach_the_nodes(tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["emotion_node"]["ros__parameters"]["threads"] = 1
    cfg["utterance_node"]["ros__parameters"]["asr_type"] = "hri_voices"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (spec,) = launch_config.plan({"config": str(path)})
    assert launch_config.node_parameters(spec, "emotion_node")["threads"] == 1
    assert launch_config.node_parameters(spec, "utterance_node")["asr_type"] == "hri_voices"
