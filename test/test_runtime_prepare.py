"""Loading only loads; prepare is the one step that builds (issue 11).

A model directory may be installed (colcon), tracked or read-only: starting the runtime
on it with an empty cache must not write into it, and must say what it runs instead.
``prepare`` makes the ONNX / INT8 files into the cache overlay, never into the directory.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from _ros_support import tiny_model_dir
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.prepare import prepare


def _snapshot(d: Path) -> dict:
    return {str(p.relative_to(d)): (p.stat().st_mtime_ns,
                                    hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture()
def fresh(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("ERC_ROS_CACHE", str(cache))
    return tiny_model_dir(tmp_path / "tiny"), cache


def test_load_never_builds_nor_writes(fresh):
    d, cache = fresh
    before = _snapshot(d)
    pipe = EmotionPipeline.from_model_dir(d, backend="auto")
    assert pipe.backend_name == "torch" and "erc_ros prepare" in pipe.why
    with pytest.raises(RuntimeError, match="python -m erc_ros prepare"):
        EmotionPipeline.from_model_dir(d, backend="onnxruntime")
    assert _snapshot(d) == before
    assert not cache.exists() or not any(cache.rglob("*.onnx"))


def test_prepare_builds_into_the_cache_only_and_load_then_finds_it(fresh):
    d, cache = fresh
    before = _snapshot(d)
    rdir = prepare(d, ["int8"])
    assert cache in rdir.parents and any(rdir.rglob("*.int8.onnx"))
    assert _snapshot(d) == before  # nothing written into the model directory
    pipe = EmotionPipeline.from_model_dir(d, backend="auto")
    assert (pipe.backend_name, pipe.precision) == ("onnxruntime", "int8")
    again = _snapshot(rdir)
    assert prepare(d, ["int8"]) == rdir and _snapshot(rdir) == again  # idempotent
    assert _snapshot(d) == before


def test_prepare_flag_of_the_loader_builds_into_the_cache(fresh):
    d, cache = fresh
    before = _snapshot(d)
    pipe = EmotionPipeline.from_model_dir(d, backend="auto", prepare=True)
    assert pipe.backend_name == "onnxruntime"
    assert _snapshot(d) == before and any(cache.rglob("*.onnx"))


def test_a_quantized_stage_that_breaks_is_never_picked_automatically(fresh):
    """all-mpnet-base-v2's dynamic INT8 text encoder points its vectors anywhere (mean cosine
    0.106 to FP32; MELD dev 60.8 -> 27.8): each variant is checked against FP32 when it is
    made, and `auto` runs a rejected stage in fp32 while an explicit precision still runs it."""
    import json

    from erc_ros.runtime.manifest import find_stage_files, read_manifest
    from erc_ros.runtime.quantize import rejection

    d, _ = fresh
    rdir = prepare(d, ["int8"])
    arts = read_manifest(rdir)["artefacts"]
    text = arts[find_stage_files(rdir, "onnx", "int8")["text_encoder"]]
    check = text["check_vs_fp32"]
    assert 0.9 <= check["mean_cosine"] <= 1.0 + 1e-9 and "rejected" not in text
    assert rejection({"mean_cosine": 0.106, "label_agreement": None}).startswith("its outputs")
    assert rejection({"mean_cosine": None, "label_agreement": 0.5}).startswith("its labels")
    assert rejection(check) == ""
    # As if quantization had broken it: the manifest records why.
    man = rdir / "manifest.json"
    m = json.loads(man.read_text())
    m["artefacts"][find_stage_files(rdir, "onnx", "int8")["text_encoder"]]["rejected"] = "broken"
    man.write_text(json.dumps(m))
    auto = EmotionPipeline.from_model_dir(d, backend="auto")
    assert auto.stages["text_encoder"].precision == "fp32"
    # The head keeps its own verdict (a random tiny head's labels are near ties: its INT8
    # copy agrees on ~94% of them, so it may be rejected too on another CPU).
    fusion = arts[find_stage_files(rdir, "onnx", "int8")["fusion"]]
    assert auto.stages["fusion"].precision == ("fp32" if fusion.get("rejected") else "int8")
    asked = EmotionPipeline.from_model_dir(d, backend="onnxruntime", precision="int8")
    assert asked.stages["text_encoder"].precision == "int8"
