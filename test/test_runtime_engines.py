"""TensorRT engine pieces that need no GPU (bucketing, padding, profiles, cache keys, engine
cache, manifest registration) and the backend selection / fallback order (engineer C).
The build itself runs where ``tensorrt`` and a CUDA device exist (marked ``gpu``)."""
from __future__ import annotations

import numpy as np
import pytest

from erc_ros.runtime.backends import (BackendUnavailable, choose_ort_providers,
                                      resolve_backend, tensorrt_available)
from erc_ros.runtime.engines import (DEFAULT_BUCKETS, EngineCache, ProfileShapes, bucket_for,
                                     engine_cache_key, fusion_profiles, pad_to_bucket,
                                     select_profile, sequence_profiles, stage_profiles)


def test_bucket_for():
    assert [bucket_for(n) for n in (1, 127, 128, 129, 256, 300, 512)] == \
        [128, 128, 128, 256, 256, 512, 512]
    assert bucket_for(900) == 512  # longer inputs are truncated to the largest bucket
    assert bucket_for(20, (32, 16)) == 32
    with pytest.raises(ValueError):
        bucket_for(0)


def test_pad_to_bucket_pads_ids_with_pad_id_and_mask_with_zero():
    ids = np.arange(1, 41, dtype=np.int64).reshape(2, 20)
    mask = np.ones_like(ids)
    out, b = pad_to_bucket({"input_ids": ids, "attention_mask": mask}, (16, 32, 64),
                           {"input_ids": 0})
    assert b == 32
    assert out["input_ids"].shape == (2, 32) and out["attention_mask"].shape == (2, 32)
    np.testing.assert_array_equal(out["input_ids"][:, :20], ids)
    assert (out["input_ids"][:, 20:] == 0).all() and (out["attention_mask"][:, 20:] == 0).all()
    assert out["attention_mask"].sum() == 40
    long, b = pad_to_bucket({"input_ids": np.ones((1, 80), np.int64)}, (16, 32, 64))
    assert b == 64 and long["input_ids"].shape == (1, 64)
    with pytest.raises(ValueError, match="disagree"):
        pad_to_bucket({"a": np.ones((1, 3)), "b": np.ones((1, 4))})


def test_sequence_profiles_fix_the_length_per_bucket():
    profiles = sequence_profiles(["input_ids", "attention_mask"], DEFAULT_BUCKETS, max_batch=4)
    assert len(profiles) == 3
    for p, b in zip(profiles, DEFAULT_BUCKETS):
        for name, lo, opt, hi in p.shapes:
            assert lo == (1, b) and opt == (1, b) and hi == (4, b)
    shapes = {"input_ids": (1, 256), "attention_mask": (1, 256)}
    assert select_profile(profiles, shapes) == 1
    assert select_profile(profiles, {"input_ids": (3, 128), "attention_mask": (3, 128)}) == 0
    with pytest.raises(ValueError, match="no optimization profile"):
        select_profile(profiles, {"input_ids": (1, 100), "attention_mask": (1, 100)})
    with pytest.raises(ValueError):
        select_profile(profiles, {"input_ids": (9, 128), "attention_mask": (9, 128)})


def test_padding_then_selection_always_finds_a_profile():
    profiles = sequence_profiles(["input_ids", "attention_mask"])
    for n in (1, 5, 128, 129, 255, 511, 512, 700):
        feeds, b = pad_to_bucket({"input_ids": np.ones((1, n), np.int64),
                                  "attention_mask": np.ones((1, n), np.int64)})
        k = select_profile(profiles, {k: v.shape for k, v in feeds.items()})
        assert DEFAULT_BUCKETS[k] == b


def test_stage_profiles_from_manifest_input_specs():
    text = [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "seq"]},
            {"name": "attention_mask", "dtype": "int64", "shape": ["batch", "seq"]}]
    assert stage_profiles(text, (128, 256), 2) == sequence_profiles(
        ["input_ids", "attention_mask"], (128, 256), 2)
    fusion = [{"name": "text", "dtype": "float32", "shape": ["batch", "turns", 384]},
              {"name": "modality_mask", "dtype": "bool", "shape": ["batch", "turns", 3]},
              {"name": "speaker_ids", "dtype": "int64", "shape": ["batch", "turns"]}]
    (p,) = stage_profiles(fusion, max_batch=2, max_turns=32, opt_turns=8)
    assert p.as_dict()["text"] == {"min": [1, 1, 384], "opt": [1, 8, 384], "max": [2, 32, 384]}
    assert p.accepts({"text": (1, 20, 384), "modality_mask": (1, 20, 3), "speaker_ids": (1, 20)})
    assert not p.accepts({"text": (1, 40, 384), "modality_mask": (1, 40, 3),
                          "speaker_ids": (1, 40)})
    assert fusion_profiles({"text": 3, "speaker_ids": 2}, 32, 8, 2, {"text": 384})[0] \
        .as_dict()["speaker_ids"]["max"] == [2, 32]
    with pytest.raises(ValueError, match="unknown dynamic axis"):
        stage_profiles([{"name": "x", "shape": ["frames"]}])


def test_engine_cache_key_changes_with_each_ingredient():
    profiles = sequence_profiles(["input_ids", "attention_mask"])
    base = dict(device_name="Orin", compute_capability=(8, 7), trt_version="10.3.0",
                source_sha256="a" * 64, precision="fp16", profiles=profiles)
    k0 = engine_cache_key(**base)
    assert k0 == engine_cache_key(**base) and len(k0) == 20
    changes = [{"device_name": "NVIDIA H100"}, {"compute_capability": (9, 0)},
               {"trt_version": "10.4.0"}, {"source_sha256": "b" * 64}, {"precision": "int8"},
               {"profiles": sequence_profiles(["input_ids", "attention_mask"], (128, 256))}]
    keys = {engine_cache_key(**{**base, **c}) for c in changes}
    assert k0 not in keys and len(keys) == len(changes)


def test_engine_cache_store_lookup_stale(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    assert cache.lookup("text_encoder", "fp16", "k1") is None
    p = cache.store("text_encoder", "fp16", "k1", b"\x00engine-bytes", {"device": "Orin"})
    assert p.name == "text_encoder.fp16.k1.engine" and p.read_bytes() == b"\x00engine-bytes"
    assert cache.lookup("text_encoder", "fp16", "k1") == p
    assert cache.load_meta(p) == {"device": "Orin"}
    cache.store("text_encoder", "fp16", "k2", b"other", {})
    assert [q.name for q in cache.stale("text_encoder", "fp16", "k2")] == [p.name]


def test_engine_registered_in_manifest_and_tamper_refused(tmp_path):
    """An engine file goes through the same manifest as the weights: sha256 checked."""
    from _runtime_fixtures import save_tiny, tiny_model
    from erc_ros.models.artefact import ArtefactError
    from erc_ros.runtime.manifest import register_artefact, runtime_artefacts, verify_files

    d = save_tiny(tiny_model(audio=False, video=False), tmp_path / "m")
    p = EngineCache(d / "engines").store("fusion", "fp16", "k1", b"serialized", {})
    register_artefact(d, p, kind="engine", stage="fusion", precision="fp16", cache_key="k1")
    rel = "engines/fusion.fp16.k1.engine"
    assert runtime_artefacts(d, "engine")[rel]["stage"] == "fusion"
    verify_files(d, [rel])
    p.write_bytes(b"serializeD")
    with pytest.raises(ArtefactError, match="fusion.fp16.k1.engine"):
        verify_files(d, [rel])


def test_backend_resolution_order_and_refusal():
    assert resolve_backend("auto", True, True, trt_ok=True, ort_ok=True)[0] == "tensorrt"
    name, why = resolve_backend("auto", True, False, trt_ok=True, ort_ok=True)
    assert name == "onnxruntime" and "no engine" in why
    name, why = resolve_backend("auto", False, False, trt_ok=False, ort_ok=True)
    assert name == "torch" and "no ONNX artefacts" in why and "tensorrt skipped" in why
    with pytest.raises(BackendUnavailable, match="tensorrt"):
        resolve_backend("tensorrt", True, True, trt_ok=False, ort_ok=True)
    with pytest.raises(BackendUnavailable, match="no ONNX"):
        resolve_backend("onnxruntime", False, False, trt_ok=False, ort_ok=True)
    with pytest.raises(ValueError):
        resolve_backend("tflite", True, True)


def test_ort_provider_order():
    avail = ["CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"]
    assert choose_ort_providers(None, avail) == avail[::-1]
    assert choose_ort_providers(["CUDAExecutionProvider"], avail) == \
        ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_ort_providers(None, ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]


def test_profile_shapes_accept_rank_mismatch():
    p = ProfileShapes((("x", (1, 1), (1, 4), (2, 8)),))
    assert not p.accepts({"x": (1, 4, 1)})


@pytest.mark.gpu
@pytest.mark.skipif(not tensorrt_available(), reason="needs the tensorrt package and a CUDA GPU")
def test_build_and_run_engines_on_gpu(tmp_path):
    """On a CUDA machine with TensorRT: build FP16 + INT8 (Q/DQ) engines of a tiny model,
    reuse them from the cache, and check the TensorRT pipeline against PyTorch."""
    from _runtime_fixtures import dialogue_with_media, save_tiny, tiny_model
    from erc_ros.runtime.engines import build_model_engines
    from erc_ros.runtime.pipeline import EmotionPipeline

    model = tiny_model()
    d = save_tiny(model, tmp_path / "m")
    built = build_model_engines(d, ("fp16", "int8"), (32, 64, 128), progress=False)
    assert built and all(not m["reused"] for m in built)
    again = build_model_engines(d, ("fp16",), (32, 64, 128), progress=False)
    assert all(m["reused"] for m in again)
    dialogue = dialogue_with_media()
    ref = model.predict_dialogue(dialogue)
    pipe = EmotionPipeline.from_model_dir(d, backend="tensorrt", precision="fp16")
    probs = np.array([pipe.predict(u).probabilities for u in dialogue])
    assert (probs.argmax(1) == ref.argmax(1)).mean() >= 0.8
    assert np.abs(probs - ref).max() < 0.05
