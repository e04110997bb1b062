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


@pytest.fixture()
def vnni(monkeypatch):
    """As on a CPU with VNNI, where ``precision: auto`` runs the INT8 variants."""
    import erc_ros.runtime.pipeline as pipeline

    monkeypatch.setattr(pipeline, "cpu_int8", lambda: (True, "int8 (this CPU has avx512_vnni)"))


def test_prepare_builds_into_the_cache_only_and_load_then_finds_it(fresh, vnni):
    d, cache = fresh
    before = _snapshot(d)
    rdir = prepare(d, ["int8"])
    assert cache in rdir.parents and any(rdir.rglob("*.int8.onnx"))
    assert _snapshot(d) == before  # nothing written into the model directory
    pipe = EmotionPipeline.from_model_dir(d, backend="auto")
    assert (pipe.backend_name, pipe.precision) == ("onnxruntime", "int8")
    assert "precision auto: int8 (this CPU has avx512_vnni)" in pipe.why
    again = _snapshot(rdir)
    assert prepare(d, ["int8"]) == rdir and _snapshot(rdir) == again  # idempotent
    assert _snapshot(d) == before


def test_the_same_model_at_another_path_finds_what_was_prepared(fresh, tmp_path):
    """The cache is keyed by the model's content: a colcon install's copy of the model
    (``share/erc_ros/models/default``) finds the files prepared for the source tree's, also
    once the source tree is gone; a changed file is another model."""
    import shutil

    from erc_ros.models.artefact import add_artefact
    from erc_ros.runtime.manifest import load_model
    from erc_ros.runtime.prepare import missing

    d, cache = fresh
    rdir = prepare(d, ["int8"])
    installed = tmp_path / "install" / "share" / "erc_ros" / "models" / "default"
    shutil.copytree(d, installed)
    assert missing(installed, load_model(installed), ["int8"]) == []
    assert prepare(installed, ["int8"]) == rdir
    shutil.rmtree(d)
    assert missing(installed, load_model(installed), ["int8"]) == []
    pipe = EmotionPipeline.from_model_dir(installed, backend="onnxruntime", precision="int8")
    assert pipe.precision == "int8"
    changed = tmp_path / "changed"
    shutil.copytree(installed, changed)
    (changed / "tokenizer.json").write_text((changed / "tokenizer.json").read_text() + "\n")
    add_artefact(changed, "tokenizer.json", "tokenizer")  # its new sha256 in the manifest
    assert missing(changed, load_model(changed), ["int8"]) == ["fp32", "int8"]


def test_prepare_says_what_it_does_without_onnxruntime_chatter(fresh, caplog):
    """ONNX Runtime's optimizer and quantizer log each tensor and fusion below WARNING
    (about 100 lines for the default model): prepare's log keeps its own lines and ONNX
    Runtime's warnings and errors only."""
    import logging

    import onnxruntime

    d, _ = fresh
    caplog.set_level(logging.INFO)
    prepare(d, ["int8"])
    text = caplog.text
    assert "preparing" in text and "prepared" in text
    for chatter in ("not specified", "Fused ", "DefaultTensorType", "pre-processing"):
        assert chatter not in text, chatter
    from erc_ros.runtime.quantize import OnnxRuntimeChatter
    inside = str(Path(onnxruntime.__file__).parent / "quantization" / "quantize.py")

    def record(level: int, msg: str, path: str = inside) -> logging.LogRecord:
        return logging.LogRecord("root", level, path, 1, msg, None, None)
    keep = OnnxRuntimeChatter()
    assert keep.filter(record(logging.WARNING, "something went wrong"))
    assert keep.filter(record(logging.ERROR, "failed"))
    assert keep.filter(record(logging.INFO, "ours", __file__))
    assert not keep.filter(record(logging.INFO, 'Quantization parameters for tensor:"x" not '
                                                'specified'))


def test_prepare_flag_of_the_loader_builds_into_the_cache(fresh):
    d, cache = fresh
    before = _snapshot(d)
    pipe = EmotionPipeline.from_model_dir(d, backend="auto", prepare=True)
    assert pipe.backend_name == "onnxruntime"
    assert _snapshot(d) == before and any(cache.rglob("*.onnx"))


def test_auto_runs_fp32_on_a_cpu_without_vnni_and_says_why(fresh, monkeypatch):
    """On AVX2 alone dynamic INT8 ran no faster than FP32 and read MELD dev 0.7 lower:
    `auto` runs the FP32 exports there (an explicit int8 still runs INT8)."""
    import erc_ros.runtime.pipeline as pipeline
    from erc_ros.runtime.backends import cpu_int8

    d, _ = fresh
    prepare(d, ["int8"])
    avx2 = cpu_int8({"avx2", "fma"}, "x86_64")
    assert avx2[0] is False and avx2[1].startswith("fp32 (this CPU has no VNNI")
    monkeypatch.setattr(pipeline, "cpu_int8", lambda: avx2)
    auto = EmotionPipeline.from_model_dir(d, backend="auto")
    assert auto.precision == "fp32" and {b.precision for b in auto.stages.values()} == {"fp32"}
    assert f"precision auto: {avx2[1]}" in auto.why
    asked = EmotionPipeline.from_model_dir(d, backend="onnxruntime", precision="int8")
    assert asked.precision == "int8" and asked.stages["text_encoder"].precision == "int8"


def test_which_cpus_auto_runs_int8_on():
    from erc_ros.runtime.backends import cpu_flags, cpu_int8

    assert cpu_int8({"avx2", "avx512f", "avx512_vnni"}, "x86_64") == \
        (True, "int8 (this CPU has avx512_vnni)")
    assert cpu_int8({"avx2", "avx_vnni"}, "x86_64")[0] is True
    assert cpu_int8({"avx2", "avx512f"}, "x86_64")[0] is False  # AVX-512 without VNNI
    assert cpu_int8(set(), "aarch64")[0] is True
    flags = cpu_flags()  # this machine's own, read from /proc/cpuinfo
    assert cpu_int8()[0] == cpu_int8(flags)[0]
    if Path("/proc/cpuinfo").exists():
        assert flags, "/proc/cpuinfo lists no flags"


def test_a_quantized_stage_that_breaks_is_never_picked_automatically(fresh, vnni):
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
