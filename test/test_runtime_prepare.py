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
