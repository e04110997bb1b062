"""Stage API of ErcModel: prompt builder, text encoder pooling, model directories."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from _tolerances import network_bound, rounding_bound
from erc_ros.core.types import Utterance
from erc_ros.models.artefact import (ArtefactError, add_artefact, load_model_dir,
                                     save_model_dir, verify_model_dir)
from erc_ros.models.erc_model import ErcModelConfig, build_model, tiny_text_config
from erc_ros.models.encoders.audio import AudioEncoderConfig
from erc_ros.models.encoders.video import VideoEncoderConfig
from erc_ros.models.preprocessing import PreprocessorConfig, PromptConfig


def _dialogue(n=6):
    names = ["Ross", "Rachel", "Joey"]
    return [Utterance(f"u{i}", "c1", names[i % 3], float(i), i + 0.8,
                      text=f"this is sentence number {i} about the coffee") for i in range(n)]


def _model(past=3, max_length=64, audio=True, video=True, seed=0):
    torch.manual_seed(seed)
    cfg = ErcModelConfig(
        text=tiny_text_config(), audio=AudioEncoderConfig(dim=8) if audio else None,
        video=VideoEncoderConfig(dim=8) if video else None, fusion={"d_model": 16},
        preprocessing=PreprocessorConfig(prompt=PromptConfig(max_length=max_length,
                                                             past_context=past)))
    return build_model(cfg).eval()


def test_prompt_has_context_speakers_and_mask_at_the_end():
    m = _model()
    d = _dialogue()
    pre = m.preprocessor
    text = pre.tokenizer.decode(pre.text_ids(d[4], d[:4]), skip_special_tokens=False)
    # past_context=3: utterances 1..3, then the current one, then the prompt.
    assert "number 0" not in text
    assert text.index("rachel : this is sentence number 1") < text.index("number 4")
    assert text.endswith("now rachel feels [MASK] [SEP]")
    assert text.startswith("[CLS] rachel : this is sentence number 1")


def test_left_truncation_keeps_current_utterance_and_prompt():
    m = _model(past=10, max_length=40)
    d = _dialogue(10)
    ids = m.preprocessor.text_ids(d[9], d[:9])
    assert len(ids) <= 40
    text = m.preprocessor.tokenizer.decode(ids, skip_special_tokens=False)
    assert "number 9" in text and text.endswith("feels [MASK] [SEP]")
    assert "number 8" in text and "number 1 " not in text  # newest context kept first
    long = Utterance("x", "c1", "Ross", 0, 1, text="word " * 200 + "final words")
    ids = m.preprocessor.text_ids(long, d[:3])
    text = m.preprocessor.tokenizer.decode(ids, skip_special_tokens=False)
    assert len(ids) == 40 and "final words" in text and text.endswith("[MASK] [SEP]")


def test_future_context_only_when_asked():
    m = _model()
    m.config.preprocessing.prompt.future_context = 2
    d = _dialogue()
    live = m.preprocessor.tokenizer.decode(m.preprocessor.text_ids(d[2], d[:2]))
    offline = m.preprocessor.tokenizer.decode(m.preprocessor.text_ids(d[2], d[:2], d[3:]))
    assert "number 3" not in live and "number 3" in offline and "number 5" not in offline


def test_text_encoder_reads_the_mask_position():
    m = _model()
    d = _dialogue()
    a = m.preprocessor.text_inputs(d[3], d[:3])
    ids, mask = torch.as_tensor(a["input_ids"]), torch.as_tensor(a["attention_mask"])
    with torch.no_grad():
        v = m.text_encoder(ids, mask)
        h = m.text_encoder.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    pos = int((ids[0] == m.preprocessor.mask_id).nonzero()[0])
    assert v.shape == (1, m.text_encoder.dim) == (1, 16)
    torch.testing.assert_close(v[0], h[0, pos])
    # Padding a batch does not change a row's vector.
    b = m.preprocessor.pad_text([m.preprocessor.text_ids(d[3], d[:3]), m.preprocessor.text_ids(d[5], d[:5])])
    with torch.no_grad():
        vb = m.text_encoder(torch.as_tensor(b["input_ids"]), torch.as_tensor(b["attention_mask"]))
    # Rounding only (other lengths, other summation orders): the tiny BERT is 2 layers of 7
    # dot-product steps (q/k/v, scores, softmax-weighted sum over the tokens, output, norm,
    # 2-layer feed-forward) after the embedding norm, none wider than max(intermediate 32,
    # the padded length) terms.
    bound = network_bound(2 * 7 + 1, max(32, b["input_ids"].shape[1]), v.abs().max().item())
    assert (vb[0] - v[0]).abs().max().item() <= bound


def test_predict_dialogue_probabilities_and_labels():
    m = _model()
    p = m.predict_dialogue(_dialogue())
    # A float32 softmax over 7 classes sums to 1 within its 7 + 4 roundings of values <= 1.
    assert p.shape == (6, 7) and np.abs(p.sum(1) - 1).max() <= rounding_bound(7 + 4, 1.0)
    assert m.label_names[0] == "neutral" and m.valence_arousal.shape == (7, 2)
    assert np.all(np.abs(m.valence_arousal) <= 1)


def test_model_directory_round_trip_and_tamper_refusal(tmp_path):
    m = _model()
    d = _dialogue()
    d[2].audio = np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)
    d[3].faces = [np.full((64, 64, 3), 128, np.uint8)]
    p = m.predict_dialogue(d)
    out = save_model_dir(m, tmp_path / "m", provenance={"note": "test"}, max_shard_bytes=20_000)
    man = json.loads((out / "manifest.json").read_text())
    assert man["label_names"] == m.label_names and man["provenance"]["note"] == "test"
    weights = [k for k, e in man["artefacts"].items() if e["kind"] == "weights"]
    assert len(weights) > 1  # sharded
    m2 = load_model_dir(out)
    np.testing.assert_allclose(m2.predict_dialogue(d), p, atol=1e-6)
    # add_artefact registers a runtime file; verify catches its modification.
    (out / "text.onnx").write_bytes(b"fake onnx bytes")
    add_artefact(out, "text.onnx", "onnx", stage="text_encoder")
    verify_model_dir(out)
    (out / "text.onnx").write_bytes(b"fake onnx bytes, modified")
    with pytest.raises(ArtefactError, match="text.onnx"):
        verify_model_dir(out)
    (out / "text.onnx").unlink()
    with pytest.raises(ArtefactError, match="text.onnx.*missing"):
        verify_model_dir(out)
    # A flipped byte in a weight shard is refused, naming the file.
    add_artefact(out, "tokenizer.json", "tokenizer")
    man = json.loads((out / "manifest.json").read_text())
    man["artefacts"].pop("text.onnx")
    (out / "manifest.json").write_text(json.dumps(man))
    f = out / weights[0]
    raw = bytearray(f.read_bytes())
    raw[-1] ^= 1
    f.write_bytes(bytes(raw))
    with pytest.raises(ArtefactError, match=weights[0]):
        load_model_dir(out)


def test_recorded_command_carries_no_machine_path(tmp_path, monkeypatch):
    from erc_ros.models.artefact import portable_command

    (tmp_path / "repo" / "models").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo")
    got = portable_command(["train", "--init", str(tmp_path / "repo" / "models"), "--out",
                            "/tmp/x/erc-new", "--json=/home/someone/dev.json", "--csv",
                            "../data/dev.csv", "--lr", "-1e-3", "--root", "/"])
    assert got == ("python -m erc_ros train --init models --out <...>/erc-new "
                   "--json=<...>/dev.json --csv ../data/dev.csv --lr -1e-3 --root <...>")


def test_provenance_names_the_files_changed_since_the_commit(tmp_path, monkeypatch):
    from erc_ros.models import artefact

    status = " M erc_ros/training/train_cli.py\nM  README.md\n"
    monkeypatch.setattr(artefact, "_git", lambda *a: status if a[0] == "status" else "abc\n")
    out = save_model_dir(_model(), tmp_path / "m")
    prov = json.loads((out / "manifest.json").read_text())["provenance"]
    assert prov["git_commit"] == "abc"
    assert prov["git_modified"] == ["README.md", "erc_ros/training/train_cli.py"]
    status = ""  # a clean checkout: no such field
    out = save_model_dir(_model(), tmp_path / "m")
    assert "git_modified" not in json.loads((out / "manifest.json").read_text())["provenance"]


def test_a_trained_model_is_stored_whole_where_the_packaged_tensors_do_not_match(tmp_path,
                                                                                capsys):
    """A training run never loses its model to the storage optimisation: where its text
    backbone is not the packaged one (here a tiny random BERT), referencing fails and every
    tensor is stored, with a warning."""
    from erc_ros.models.artefact import ArtefactError, save_trained_model_dir

    m, d = _model(), _dialogue(3)
    with pytest.raises(ArtefactError):
        save_model_dir(m, tmp_path / "a", dtype="float32", external_word_embeddings=True)
    out = save_trained_model_dir(m, tmp_path / "b", dtype="float32",
                                 external_word_embeddings=True)
    assert "storing every tensor" in capsys.readouterr().err
    assert not json.loads((out / "manifest.json").read_text()).get("external")
    np.testing.assert_array_equal(load_model_dir(out).predict_dialogue(d), m.predict_dialogue(d))


@pytest.mark.parametrize("freeze_layers", [0, 2])
def test_fp16_storage_and_external_packaged_weights(tmp_path, freeze_layers):
    """The default model's storage: fp16 shards, frozen MiniLM tensors referenced from the
    installed package (sha256-checked), not stored. The recipe (0) trains every layer and
    freezes the word embeddings; with 2 frozen layers, those are referenced too."""
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe
    from erc_ros.models.labels import MELD_LABELS

    r = dict(RECIPES["default"], freeze_layers=freeze_layers)
    m = build_from_recipe(r, MELD_LABELS, "t").eval()
    d = _dialogue(3)
    p = m.predict_dialogue(d)
    out = save_model_dir(m, tmp_path / "m", dtype="float16", external_word_embeddings=True)
    man = json.loads((out / "manifest.json").read_text())
    keys = man["external"]["text_backbone"]["keys"]
    assert "text_encoder.backbone.embeddings.word_embeddings.weight" in keys
    assert any(".layer.1." in k for k in keys) == (freeze_layers == 2)
    assert not any(".layer.2." in k for k in keys)
    # Six MiniLM layers of 1,774,464 parameters, the position embeddings and the small
    # heads: about 11.0M stored parameters, 22 MB in fp16 (the word embeddings, 11.7M, are
    # referenced); two layers fewer with 2 frozen. No shard over 15 MiB.
    total = sum(e["bytes"] for e in man["artefacts"].values())
    assert total < (24e6 if freeze_layers == 0 else 17e6)
    assert all(e["bytes"] <= 15 * 2**20 + 2**16 for e in man["artefacts"].values())
    np.testing.assert_allclose(load_model_dir(out).predict_dialogue(d), p, atol=2e-3)
