"""`erc_ros bench` and `erc_ros quantize` end to end on a tiny model (engineer C): variants
interleaved in one process, per-stage percentiles, the headline keys, JSON and PNG."""
from __future__ import annotations

import json

import pytest

from _runtime_fixtures import save_tiny, tiny_model
from erc_ros.cli import main
from erc_ros.runtime.samples import meld_dir
from erc_ros.paths import data_root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny(tiny_model(audio=False, video=False, model_id="tiny-bench"),
                     tmp_path_factory.mktemp("bench") / "model")


def test_quantize_command(model_dir, capsys):
    assert main(["quantize", "--model", str(model_dir), "--precisions", "int8,woq8"]) == 0
    out = capsys.readouterr().out
    assert "text_encoder" in out and "int8" in out and "woq8" in out
    m = json.loads((model_dir / "manifest.json").read_text())
    precisions = {e["precision"] for e in m["artefacts"].values() if e["kind"] == "onnx"}
    assert precisions == {"fp32", "int8", "woq8"}


def test_bench_command(model_dir, tmp_path, capsys):
    out_json = tmp_path / "bench.json"
    args = ["bench", "--model", str(model_dir), "--json", str(out_json), "--iterations", "12",
            "--warmup", "2", "--dev-limit", "3",
            "--variants", "torch/fp32,onnxruntime/fp32,onnxruntime/int8"]
    assert main(args) == 0
    r = json.loads(out_json.read_text())
    assert out_json.with_suffix(".png").stat().st_size > 10_000
    assert set(r["variants"]) == {"torch/fp32", "onnxruntime/fp32", "onnxruntime/int8"}
    for v in r["variants"].values():
        stages = v["stages_ms"]
        assert {"preprocess", "text_encoder", "fusion", "postprocess", "total"} <= set(stages)
        assert "audio_encoder" not in stages  # the model has none
        for s in stages.values():
            assert 0 <= s["p50"] <= s["p95"] <= s["p99"]
        assert len(v["samples_ms"]) == 12 and v["throughput_per_s"] > 0 and v["bytes"] > 0
    assert r["int8_over_fp32_p50"] > 0
    assert 0 < r["int8_size_ratio"] < 0.5
    # MELD dev is the suite's data (shared/ beside the clone, or ERC_ROS_DATA): bench scores
    # every variant on it.
    assert meld_dir() is not None, \
        f"MELD dev expected at {data_root() / 'meld' / 'dev_sent_emo.csv'} (../shared/data; " \
        "set ERC_ROS_DATA)"
    assert "int8_weighted_f1_drop" in r and r["dev_utterances"] > 0
    assert r["variants"]["onnxruntime/fp32"]["label_agreement_vs_torch_fp32"] == 1.0
    table = capsys.readouterr().out
    assert "int8_over_fp32_p50" in table and "p95 ms" in table
