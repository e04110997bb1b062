"""The launch helper (erc_ros.ros.launch_config) and the thin launch file around it.

`ros2 launch` is not installable here (no launch/launch_ros wheels): the decisions live in
launch_config.plan, checked below against the config file the package installs; the launch
file itself is compiled and checked to call the helper for every argument.

Namespaces (``namespace:=robot1``) are checked for real where it matters: the node classes
are built with ``--ros-args --params-file`` in namespace robot1, as the launch system starts
them, and must read the values of the config file; rcl's section-matching rule is compared
with launch_config.load_config on keys of every form.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from erc_ros.ros import launch_config
from erc_ros.ros.emotion_node import PARAMETERS as EMOTION_PARAMS
from erc_ros.ros.face_expression_node import PARAMETERS as FACE_PARAMS
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
    for node, params in (("utterance_node", UTTERANCE_PARAMS), ("emotion_node", EMOTION_PARAMS),
                         ("face_expression_node", FACE_PARAMS)):
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
    assert utt["image_topic"] == "camera/image_raw"  # untouched, relative: /robot1/camera/...
    assert ("erc_ros/transcript", "/asr/result") in specs[0].remappings


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
    cfg["/**/emotion_node"]["ros__parameters"]["threads"] = 1
    cfg["/**/utterance_node"]["ros__parameters"]["asr_type"] = "hri_voices"
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(cfg))
    (spec,) = launch_config.plan({"config": str(path)})
    assert launch_config.node_parameters(spec, "emotion_node")["threads"] == 1
    assert launch_config.node_parameters(spec, "utterance_node")["asr_type"] == "hri_voices"


# -- namespaces ---------------------------------------------------------------------------

def test_installed_config_uses_wildcard_keys():
    """Plain ``utterance_node:`` keys match the root namespace only: under namespace:=robot1
    the user's settings would be dropped without a word."""
    assert set(yaml.safe_load(CONFIG.read_text())) == {
        "/**/utterance_node", "/**/emotion_node", "/**/face_expression_node"}


def _changed_config(tmp_path) -> Path:
    """The installed config with one non-default value per node."""
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["/**/emotion_node"]["ros__parameters"]["threads"] = 1
    cfg["/**/utterance_node"]["ros__parameters"]["queue_size"] = 17
    cfg["/**/utterance_node"]["ros__parameters"]["image_transport"] = "compressed"
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("composed", ["true", "false"])
def test_namespaced_plan_gives_each_node_the_yaml_values(tmp_path, composed):
    specs = launch_config.plan({"config": str(_changed_config(tmp_path)),
                                "namespace": "robot1", "composed": composed})
    assert all(s.namespace == "robot1" for s in specs)
    by_node = {"utterance_node": specs[0], "emotion_node": specs[-1]}
    assert launch_config.node_parameters(by_node["emotion_node"], "emotion_node")["threads"] == 1
    utt = launch_config.node_parameters(by_node["utterance_node"], "utterance_node")
    assert utt["queue_size"] == 17 and utt["image_transport"] == "compressed"
    assert utt["audio_topic"] == "audio"  # relative: it lands under /robot1


def test_old_style_keys_under_a_namespace_are_refused_not_dropped(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text(yaml.safe_dump({"utterance_node": {"ros__parameters": {"queue_size": 5}},
                                   "emotion_node": {"ros__parameters": {"threads": 1}}}))
    (spec,) = launch_config.plan({"config": str(old)})  # root namespace: they apply
    assert launch_config.node_parameters(spec, "utterance_node")["queue_size"] == 5
    with pytest.raises(ValueError, match=r"/\*\*/utterance_node"):
        launch_config.plan({"config": str(old), "namespace": "robot1"})


def test_load_config_applies_what_rcl_applies(ros, tmp_path):
    """Every key form, merged in file order, compared with what rclpy itself gives a node of
    that name in the root namespace, in robot1 and in a/b."""
    from rclpy.node import Node
    sections = {"/**": {"a": 1, "b": 1},
                "/**/utterance_node": {"b": 2, "c": 2},
                "/*/utterance_node": {"d": 3},
                "utterance_node": {"e": 4},
                "/robot1/utterance_node": {"f": 5, "a": 6},
                "/robot1/emotion_node": {"g": 7}}
    path = tmp_path / "forms.yaml"
    path.write_text(yaml.safe_dump({k: {"ros__parameters": v} for k, v in sections.items()},
                                   sort_keys=False))
    for ns in ("", "robot1", "/a/b"):
        ours = launch_config.load_config(path, ns)
        for name in ("utterance_node", "emotion_node"):
            node = Node(name, namespace=ns, cli_args=["--ros-args", "--params-file", str(path)],
                        allow_undeclared_parameters=True,
                        automatically_declare_parameters_from_overrides=True)
            try:
                got = {k: node.get_parameter(k).value for k in "abcdefg"
                       if node.has_parameter(k)}
            finally:
                node.destroy_node()
            assert ours.get(name, {}) == got, (ns, name)
    assert launch_config.load_config(path, "robot1")["utterance_node"] == \
        {"a": 6, "b": 2, "c": 2, "d": 3, "f": 5}



def _override_file(tmp_path, over: dict) -> Path:
    """What launch_ros does with a dict in ``parameters``: a params file keyed '/**'."""
    path = tmp_path / "launch_params.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": over}}))
    return path


@pytest.mark.ros
@pytest.mark.parametrize("composed", ["true", "false"])
def test_namespaced_nodes_read_the_config_for_real(ros, tmp_path, composed):
    """The node classes, built in namespace robot1 with the planned parameter files as
    ``--params-file`` arguments (what ``ros2 launch`` passes), read the changed YAML values,
    the launch overrides, and resolve their relative topics under /robot1/."""
    from erc_ros.ros.emotion_node import EmotionNode
    from erc_ros.ros.utterance_node import UtteranceNode
    specs = launch_config.plan({"config": str(_changed_config(tmp_path)), "namespace": "robot1",
                                "composed": composed, "asr_type": "string",
                                "estimate_topic": "emotions"})
    by_node = {"utterance_node": specs[0], "emotion_node": specs[-1]}
    for name, cls in (("utterance_node", UtteranceNode), ("emotion_node", EmotionNode)):
        spec = by_node[name]
        args = ["--ros-args"]
        for p in spec.parameters:
            path = _override_file(tmp_path, p) if isinstance(p, dict) else p
            args += ["--params-file", str(path)]
        node = cls(namespace=spec.namespace, cli_args=args)
        try:
            assert node.get_fully_qualified_name() == f"/robot1/{name}"
            planned = launch_config.node_parameters(spec, name)
            for key, value in planned.items():
                if node.has_parameter(key):
                    assert node.get_parameter(key).value == value, (name, key)
            topics = [k for k in ("image_topic", "audio_topic", "audio_info_topic", "asr_topic",
                                  "utterance_topic", "estimate_topic") if node.has_parameter(k)]
            for key in topics:
                resolved = node.resolve_topic_name(node.get_parameter(key).value)
                assert resolved.startswith("/robot1/"), (name, key, resolved)
        finally:
            node.destroy_node()
        if name == "utterance_node":
            assert planned["queue_size"] == 17 and planned["asr_type"] == "string"
            assert planned["image_transport"] == "compressed"
        else:
            assert planned["threads"] == 1 and planned["estimate_topic"] == "emotions"


# -- launch arguments ---------------------------------------------------------------------

def test_enumerated_launch_arguments_reach_the_nodes_and_typos_are_refused():
    choices = {"image_transport": "compressed", "audio_msg": "raw", "asr_type": "live_speech",
               "image_reliability": "reliable", "audio_reliability": "best_effort",
               "asr_reliability": "best_effort", "backend": "torch"}
    assert set(choices) <= set(launch_config.ARGUMENTS)
    (spec,) = launch_config.plan(choices)
    for name, value in choices.items():
        assert launch_config.node_parameters(spec, "utterance_node")[name] == value
        with pytest.raises(ValueError, match=name):
            launch_config.plan({name: value + "x"})
    # empty = as the config file says
    (spec,) = launch_config.plan({"image_transport": ""})
    assert launch_config.node_parameters(spec, "utterance_node")["image_transport"] == "raw"


def test_remap_arguments_take_relative_names_and_refuse_malformed_ones():
    specs = launch_config.plan({"composed": "false", "namespace": "robot1",
                                "image_topic": "head_camera/image", "audio_topic": "~/mic"})
    assert ("camera/image_raw", "head_camera/image") in specs[0].remappings
    assert ("audio", "~/mic") in specs[0].remappings
    assert launch_config.node_parameters(specs[0], "utterance_node")["image_topic"] == \
        "head_camera/image"
    for bad in ("head camera", "/a//b", "a/", "1cam", "a/{node}"):
        with pytest.raises(ValueError, match="image_topic"):
            launch_config.plan({"image_topic": bad})
    with pytest.raises(ValueError, match="namespace"):
        launch_config.plan({"namespace": "robot 1"})


# -- the ROS4HRI face-expression node -----------------------------------------------------

@pytest.mark.parametrize("composed", ["true", "false"])
def test_face_expression_node_argument_adds_the_ros4hri_node(tmp_path, composed):
    base = launch_config.plan({"composed": composed})
    assert "face_expression_node" not in [s.executable for s in base]  # off by default
    assert launch_config.node_parameters(base[-1], "emotion_node")["publish_face_expression"]
    specs = launch_config.plan({"composed": composed, "namespace": "robot1",
                                "use_sim_time": "true", "model_dir": "/models/x",
                                "face_expression_node": "true"})
    assert len(specs) == len(base) + 1
    face = specs[-1]
    assert (face.executable, face.name, face.namespace) == \
        ("face_expression_node", "face_expression_node", "robot1")
    assert (ROOT / "scripts" / face.executable).is_file()
    # the config file's section plus only use_sim_time of the overrides (model_dir,
    # backend... are the emotion node's)
    defaults = {k: v for k, (v, _) in FACE_PARAMS.items()}
    assert launch_config.node_parameters(face, "face_expression_node") == \
        dict(defaults, use_sim_time=True)
    emo = launch_config.node_parameters(specs[-2], "emotion_node")
    assert emo["publish_face_expression"] is False and emo["model_dir"] == "/models/x"
    # a /**/face_expression_node section of the config file reaches it
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["/**/face_expression_node"]["ros__parameters"].update(rate=5.0, crop_topic="aligned")
    path = tmp_path / "faces.yaml"
    path.write_text(yaml.safe_dump(cfg))
    face = launch_config.plan({"config": str(path), "composed": composed,
                               "face_expression_node": "true"})[-1]
    assert launch_config.node_parameters(face, "face_expression_node") == \
        dict(defaults, rate=5.0, crop_topic="aligned", use_sim_time=False)


def test_face_expression_node_refuses_the_fused_estimate_on_the_face_topics(tmp_path):
    cfg = yaml.safe_load(CONFIG.read_text())
    cfg["/**/emotion_node"]["ros__parameters"]["expression_namespace"] = "faces"
    cfg["/**/emotion_node"]["ros__parameters"]["publish_face_expression"] = False
    path = tmp_path / "faces_ns.yaml"
    path.write_text(yaml.safe_dump(cfg))
    launch_config.plan({"config": str(path)})  # alone, that is the emotion node's choice
    with pytest.raises(ValueError, match="expression_namespace"):
        launch_config.plan({"config": str(path), "face_expression_node": "true"})


def test_every_planned_executable_is_installed():
    installed = re.search(r"install\(PROGRAMS(.*?)DESTINATION",
                          (ROOT / "CMakeLists.txt").read_text(), re.S).group(1).split()
    for composed in ("true", "false"):
        for spec in launch_config.plan({"composed": composed, "face_expression_node": "true"}):
            assert f"scripts/{spec.executable}" in installed, spec.executable


def test_the_standard_microphone_driver_is_met_with_two_remaps():
    """ros-drivers audio_capture (its launch files: namespace audio) publishes
    AudioDataStamped on /audio/audio_stamped and AudioInfo on /audio/audio_info: the two
    remap arguments docs/ros.md gives reach the utterance node."""
    (spec,) = launch_config.plan({"audio_topic": "/audio/audio_stamped",
                                  "audio_info_topic": "/audio/audio_info"})
    p = launch_config.node_parameters(spec, "utterance_node")
    assert (p["audio_topic"], p["audio_info_topic"], p["audio_msg"]) == \
        ("/audio/audio_stamped", "/audio/audio_info", "stamped")
    assert ("audio_info", "/audio/audio_info") in spec.remappings
    with pytest.raises(ValueError, match="audio_info_topic"):
        launch_config.plan({"audio_info_topic": "audio info"})


@pytest.mark.parametrize("composed", ["true", "false"])
def test_log_level_and_respawn_reach_every_node_process(composed):
    plain = launch_config.plan({"composed": composed, "face_expression_node": "true"})
    assert all(s.ros_arguments == [] and not s.respawn for s in plain)
    specs = launch_config.plan({"composed": composed, "face_expression_node": "true",
                                "log_level": "DEBUG", "respawn": "true",
                                "respawn_delay": "0.5"})
    assert len(specs) == len(plain)
    for s in specs:
        assert s.ros_arguments == ["--log-level", "debug"]
        assert s.respawn and s.respawn_delay == 0.5
    (one,) = launch_config.plan({"log_level": "utterance_node:=warn"})
    assert one.ros_arguments == ["--log-level", "utterance_node:=warn"] and not one.respawn
    for name, bad in (("log_level", "loud"), ("log_level", "a b:=info"),
                      ("respawn", "maybe"), ("respawn_delay", "-1"),
                      ("respawn_delay", "soon")):
        with pytest.raises(ValueError, match=f"launch argument {name}"):
            launch_config.plan({name: bad, "respawn": "true"} if name == "respawn_delay"
                               else {name: bad})


def test_a_bad_asr_value_is_reported_under_its_own_argument():
    with pytest.raises(ValueError, match=r"launch argument asr: 'whisper' is not one of"):
        launch_config.plan({"asr": "whisper"})
    with pytest.raises(ValueError, match=r"launch argument asr_type: 'whisper' is not one of"):
        launch_config.plan({"asr_type": "whisper"})


@pytest.mark.parametrize("composed", ["true", "false"])
def test_every_node_process_starts_with_huge_pages_for_the_allocator(composed, monkeypatch):
    """erc_ros.process.tune_allocator maps large buffers on their own; glibc backs them with
    huge pages only when GLIBC_TUNABLES says so at process start (else inference is slower)."""
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    for s in launch_config.plan({"composed": composed, "face_expression_node": "true"}):
        assert s.env == {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.arena_max=2")  # the user's kept
    (one,) = launch_config.plan({})
    assert one.env == {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"}
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.hugetlb=0")  # the user's choice
    (one,) = launch_config.plan({})
    assert one.env == {}
    assert "additional_env=spec.env" in LAUNCH.read_text()
