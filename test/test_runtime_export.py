"""Export round trips, quantized variants, the pipeline on torch vs ONNX Runtime, and the
manifest refusing tampered artefacts (engineer C, issue 5). Tiny real models, real speech
(espeak-ng) and a real photo."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from _tolerances import network_bound
from _runtime_fixtures import dialogue_with_media, save_tiny, tiny_model
from erc_ros.models.artefact import ArtefactError, read_manifest
from erc_ros.models.fusion.registry import HEADS
from erc_ros.runtime.export import (ExportMismatch, StageSpec, check_stage, export_and_check,
                                    export_model, onnx_path, stage_specs)
from erc_ros.runtime.pipeline import EmotionPipeline
from erc_ros.runtime.quantize import quantize_model_dir, quantize_weights_per_channel


#: Fusion heads implemented so far (the registry names all planned ones).
AVAILABLE_HEADS = [h for h, (mod, _, _) in HEADS.items() if importlib.util.find_spec(mod)]


@pytest.fixture(scope="module")
def dialogue():
    return dialogue_with_media()


@pytest.fixture(scope="module")
def exported(tmp_path_factory, dialogue):
    """A tiny text+audio+video model directory, exported and quantized."""
    model = tiny_model()
    d = save_tiny(model, tmp_path_factory.mktemp("tiny") / "model")
    report = export_model(model, d, dialogues=[dialogue], progress=False)
    quant = quantize_model_dir(d, ["int8", "woq8"], model=model, progress=False)
    return model, d, report, quant


def test_every_stage_exports_and_matches_torch(exported):
    model, d, report, _ = exported
    assert set(report) == {"text_encoder", "audio_encoder", "video_encoder", "fusion"}
    arts = read_manifest(d)["artefacts"]
    for stage, r in report.items():
        assert r["check"]["passed"]
        assert max(r["check"]["max_abs_diff"].values()) < 1e-4, stage
        rel = f"onnx/{stage}.fp32.onnx"
        assert arts[rel]["kind"] == "onnx" and arts[rel]["stage"] == stage
        assert arts[rel]["inputs"], "input specs are recorded in the manifest"
    assert report["fusion"]["check"]["label_agreement"] == 1.0
    # Dynamic axes: the text encoder accepts a batch and a length it was not traced with.
    import onnxruntime as ort

    s = ort.InferenceSession(str(onnx_path(d, "text_encoder")), providers=["CPUExecutionProvider"])
    ids = np.full((3, 57), 1000, np.int64)
    ids[:, 50] = model.preprocessor.mask_id
    out = s.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
    with torch.no_grad():
        ref = model.text_encoder(torch.from_numpy(ids), torch.ones(3, 57, dtype=torch.long))
    assert out.shape == (3, model.text_encoder.dim)
    # ORT vs torch, other kernels: the tiny BERT's 2 layers of ~7 roundings each (+ the
    # mask-token read-out), dot products over at most max(32, 57) terms.
    bound = network_bound(2 * 7 + 1, 57, float(np.abs(ref.numpy()).max()))
    np.testing.assert_allclose(out, ref.numpy(), rtol=0, atol=bound)


@pytest.mark.parametrize("head", [pytest.param(h, marks=pytest.mark.long) if h == "magt" else h
                                  for h in AVAILABLE_HEADS])
def test_fusion_head_round_trip(head, tmp_path):
    model = tiny_model(head, audio=False, video=False, model_id=f"tiny-{head}")
    spec = next(s for s in stage_specs(model) if s.name == "fusion")
    res = export_and_check(spec, tmp_path / f"{head}.onnx")
    assert res.passed and res.label_agreement == 1.0
    assert max(res.max_abs_diff.values()) < 1e-4


def test_a_wrong_export_is_refused(tmp_path):
    """A module whose traced graph bakes in the sample's length must fail the check."""

    class LastToken(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(50, 4)

        def forward(self, input_ids):
            n = int(input_ids.shape[1])  # a Python int: frozen into the trace
            return self.emb(input_ids)[:, n - 1]

    samples = [{"input_ids": np.arange(1, 9, dtype=np.int64)[None]},
               {"input_ids": np.arange(10, 23, dtype=np.int64)[None]}]
    spec = StageSpec("last_token", LastToken().eval(), ["input_ids"], ["vec"],
                     {"input_ids": {0: "batch", 1: "seq"}}, samples)
    with pytest.raises(ExportMismatch, match="last_token"):
        export_and_check(spec, tmp_path / "bad.onnx", exporter="torchscript")
    assert not (tmp_path / "bad.onnx").exists(), "a failed export leaves no file behind"


def test_quantized_variants(exported):
    _, d, _, quant = exported
    arts = read_manifest(d)["artefacts"]
    fp32 = arts["onnx/text_encoder.fp32.onnx"]["bytes"]
    int8 = arts["onnx/text_encoder.int8.onnx"]
    assert int8["bytes"] < 0.3 * fp32  # embeddings and MatMuls in INT8
    assert int8["fused"].get("Attention") == 2, "eager export lets the optimizer fuse attention"
    assert quant["fusion"]["int8"]["check_vs_fp32"]["label_agreement"] >= 0.9
    assert arts["onnx/audio_encoder.int8.onnx"]["method"].endswith("matmul-only")
    # Weight-only INT8 per output channel: the seed 004 scale and error bound.
    w = np.random.default_rng(0).normal(size=(64, 32)).astype(np.float32)
    q, s = quantize_weights_per_channel(w, axis=1)
    assert q.dtype == np.int8 and s.shape == (32,)
    np.testing.assert_allclose(s, np.abs(w).max(0) / 127, rtol=1e-6)
    assert np.abs(q * s[None] - w).max() <= s.max() / 2 + 1e-7


def test_pipeline_torch_and_onnx_agree(exported, dialogue):
    model, d, _, _ = exported
    ref = model.predict_dialogue(dialogue)  # the models' own offline path
    pipes = {(b, p): EmotionPipeline.from_model_dir(d, backend=b, precision=p)
             for b, p in [("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")]}
    probs = {}
    for key, pipe in pipes.items():
        ests = [pipe.predict(u) for u in dialogue]
        probs[key] = np.array([e.probabilities for e in ests])
        last = ests[0]
        assert last.backend == f"{key[0]}/{pipe.precision}" and last.model_id == "tiny"
        assert set(last.modalities) == {"text", "audio", "video"}
        assert abs(sum(last.modality_weights) - 1) < 1e-5
        assert -1 <= last.valence <= 1 and -1 <= last.arousal <= 1
    # Probabilities (<= 1) through the tiny text encoder (2 layers x ~7 roundings), the audio
    # and video encoders and the fusion head (~8 more), over at most 128 terms a dot product:
    # one utterance at a time (pipeline) vs the padded dialogue batch (reference), and ORT's
    # kernels vs torch's, are other summation orders of the same formula.
    bound = network_bound(2 * 7 + 1 + 8, 128, 1.0)
    np.testing.assert_allclose(probs[("torch", "fp32")], ref, rtol=0, atol=bound)
    np.testing.assert_allclose(probs[("onnxruntime", "fp32")], ref, rtol=0, atol=bound)
    assert (probs[("onnxruntime", "int8")].argmax(1) == ref.argmax(1)).mean() >= 0.8
    assert pipes[("onnxruntime", "int8")].stages["text_encoder"].precision == "int8"


def test_each_predict_encodes_only_the_new_utterance(exported, dialogue):
    _, d, _, _ = exported
    pipe = EmotionPipeline.from_model_dir(d, backend="onnxruntime", precision="fp32")
    calls = {"text_encoder": [], "fusion": []}
    for stage in calls:
        backend = pipe.stages[stage]
        real = backend.run

        def counting(inputs, _real=real, _log=calls[stage]):
            _log.append({k: v.shape for k, v in inputs.items()})
            return _real(inputs)
        backend.run = counting
    first = [pipe.predict(u) for u in dialogue]
    # One text-encoder call of batch 1 per utterance; fusion sees the whole conversation.
    assert [c["input_ids"][0] for c in calls["text_encoder"]] == [1] * len(dialogue)
    assert [c["text"][1] for c in calls["fusion"]] == list(range(1, len(dialogue) + 1))
    assert pipe.stats()["cached_utterances"] == len(dialogue)
    pipe.reset(dialogue[0].conversation_id)
    again = pipe.predict(dialogue[0])
    np.testing.assert_allclose(again.probabilities, first[0].probabilities, atol=1e-6)
    assert pipe.stats()["predictions"] == len(dialogue) + 1


def test_tampered_artefact_is_refused(exported, tmp_path):
    import shutil

    _, d, _, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(d, copy)
    target = copy / "onnx" / "fusion.int8.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01  # one byte changed, same size
    target.write_bytes(bytes(data))
    with pytest.raises(ArtefactError, match="fusion.int8.onnx"):
        EmotionPipeline.from_model_dir(copy, backend="onnxruntime", precision="int8")
    target.unlink()
    with pytest.raises(ArtefactError, match="fusion.int8.onnx.*missing"):
        EmotionPipeline.from_model_dir(copy, backend="torch")


def test_check_stage_reports_diffs(exported):
    model, d, _, _ = exported
    spec = next(s for s in stage_specs(model) if s.name == "text_encoder")
    res = check_stage(spec, onnx_path(d, "text_encoder"))
    assert res.passed and res.samples == len(spec.samples) >= 3


def test_context_is_bounded(exported, dialogue):
    """Constant memory: max_context utterances per conversation, max_conversations in all."""
    from dataclasses import replace

    model, _, _, _ = exported
    pipe = EmotionPipeline.from_model(model, max_context=3, max_conversations=4)
    for k in range(10):
        for u in dialogue[:5]:
            pipe.predict(replace(u, conversation_id=f"c{k}", audio=u.audio[:0], faces=[]))
    s = pipe.stats()
    assert s["conversations"] == 4 and s["cached_utterances"] == 12
    assert pipe.context_length("c9") == 3 and pipe.context_length("c0") == 0


def test_versioned_model_dir_stays_untouched(exported, tmp_path, monkeypatch):
    """A model committed in git gets its on-demand ONNX files in a cache overlay, so its
    committed manifest never lists files that are not committed."""
    import shutil
    import subprocess

    model, d, _, _ = exported
    repo = tmp_path / "repo"
    mdir = repo / "models" / "m"
    mdir.mkdir(parents=True)
    for f in d.iterdir():  # the model as trained: weights, tokenizer, manifest (no ONNX)
        if f.is_file() and f.name != "manifest.json":
            shutil.copy(f, mdir / f.name)
    import json

    m = json.loads((d / "manifest.json").read_text())
    m["artefacts"] = {k: v for k, v in m["artefacts"].items() if v["kind"] != "onnx"}
    (mdir / "manifest.json").write_text(json.dumps(m))
    git = ["git", "-C", str(repo), "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run(git + ["init", "-q"], check=True)
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "model"], check=True)
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "cache"))
    pipe = EmotionPipeline.from_model_dir(mdir, backend="onnxruntime", precision="fp32",
                                          prepare=True)  # builds into the cache
    assert pipe.backend_name == "onnxruntime"
    status = subprocess.run(git + ["status", "--porcelain", "--ignored"], capture_output=True,
                            text=True, check=True).stdout
    assert status == "", status
    (overlay,) = (tmp_path / "cache").iterdir()
    assert (overlay / "onnx" / "text_encoder.fp32.onnx").is_file()
    # The second load reuses the overlay (no new export) and still verifies it.
    again = EmotionPipeline.from_model_dir(mdir, backend="auto", precision="fp32")
    assert again.backend_name == "onnxruntime" and again.precision == "fp32"
    assert list((tmp_path / "cache").iterdir()) == [overlay]


def test_ssl_audio_and_vit_video_encoders_round_trip(tmp_path, dialogue):
    """The checkpoint-backed encoder families (wav2vec2-style audio on raw 16 kHz speech,
    ViT faces), tiny configs: export with a dynamic sample axis, check, MatMul-only INT8."""
    import onnx

    from erc_ros.models.encoders.audio import AudioEncoderConfig
    from erc_ros.models.encoders.video import VideoEncoderConfig
    from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
    from erc_ros.models.preprocessing import AudioFeatureConfig, PreprocessorConfig
    from erc_ros.runtime.quantize import make_variant

    torch.manual_seed(0)
    cfg = ErcModelConfig(
        model_id="tiny-ssl", text=tiny_text_config(),
        audio=AudioEncoderConfig(kind="ssl", backbone=dict(
            model_type="wav2vec2", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 4), conv_kernel=(10, 8),
            num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2,
            feat_extract_norm="layer", do_stable_layer_norm=True)),
        video=VideoEncoderConfig(kind="vit", backbone=dict(
            model_type="vit", hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=32, image_size=48, patch_size=16, num_channels=1)),
        preprocessing=PreprocessorConfig(audio=AudioFeatureConfig(kind="waveform",
                                                                  max_seconds=6.0)))
    model = build_model(cfg).eval()
    specs = {s.name: s for s in stage_specs(model, [dialogue])}
    audio = specs["audio_encoder"]
    assert len({s["input_values"].shape[1] for s in audio.samples}) > 1  # lengths vary
    for name in ("audio_encoder", "video_encoder"):
        res = export_and_check(specs[name], tmp_path / f"{name}.onnx")
        assert res.passed and max(res.max_abs_diff.values()) < 1e-4, name
    make_variant("int8", tmp_path / "audio_encoder.onnx", tmp_path / "audio.int8.onnx",
                 matmul_only=True)
    ops = {n.op_type for n in onnx.load(str(tmp_path / "audio.int8.onnx")).graph.node}
    assert "MatMulInteger" in ops and "ConvInteger" not in ops
