"""The training recipes: each fixes every choice of a ``train --recipe NAME`` run.

A recipe says what it is; how each choice was measured is in docs/training.md and
docs/results.md. Command-line flags override a few keys for ablations (``train_cli``).

Keys of the text recipes (:class:`erc_ros.training.text_stage.TextStageConfig` reads those
it names): ``encoder``, ``pooling``, ``past_context``, ``max_length``, ``epochs``,
``batch_size``, ``lr``, ``head_lr``, ``warmup``, ``class_weight_power``, ``label_smoothing``,
``ema_decay``, ``self_distill``, ``freeze_word_embeddings``, ``freeze_layers``,
``cache_frozen``, ``audio`` / ``video`` (branches built, untrained), ``seed``, and

- ``distill_from``: teachers per corpus (``--format``), e.g. ``{"meld": ["large"]}``;
  ``distill`` / ``feature_distill``: the weights of their logits and text vectors;
- ``then``: further cycles, each a dict of keys that differ (``teacher: "previous"``: the
  model as the previous cycle left it teaches the cycle);
- ``fusion_stage``: stage 2, fresh heads over the encoder's cached vectors (``head``,
  ``class_weight_power``, ``epochs``, ``head_seeds``, optional ``lr`` and ``distill``);
- ``select``: what keeps a stage-2 epoch, head and round (``deployed.SELECT_RULES``);
- ``rounds``: after stage 2, a cycle and a fresh stage 2 over the finished model, each kept
  only if it beats the model before it on dev;
- ``goemotions``: GoEmotions use (``mode`` off / stage / mix, ``per_class``, ``epochs``).

``stage: "multimodal"`` and ``stage: "face"`` recipes are run by
:mod:`erc_ros.training.multimodal_stage` and :mod:`erc_ros.training.face_stage`.
"""
from __future__ import annotations

RECIPES = {
    # The shipped model: packaged MiniLM-L6, fine-tuned on the context prompt, distilled
    # (on MELD) from the shipped teacher models/large: its logits (KD 0.5 at temperature 2)
    # and its text vectors (feature distillation 1.0), both computed once and cached. Every
    # layer trains; only the word embeddings stay frozen.
    "default": dict(
        encoder="minilm", pooling="mask", past_context=4, max_length=128,
        epochs=2, batch_size=16, lr=6e-5, head_lr=1e-3, warmup=0.06,
        class_weight_power=0.25, label_smoothing=0.0, ema_decay=0.999, self_distill=0.0,
        freeze_word_embeddings=True, freeze_layers=0, audio=True, video=True, seed=13,
        distill_from={"meld": ["large"]}, feature_distill=1.0,
        # Then short cycles (warm restarts at a lower rate; a cycle's weights are kept only
        # if dev improves): one more toward the teacher, then one distilled from the model as
        # it stands (born-again; the teacher's vectors still in the loss).
        then=[dict(epochs=1, lr=2e-5, warmup=0.0),
              dict(epochs=1, lr=2e-5, warmup=0.0, seed=7, distill=0.5, teacher="previous")],
        # Stage 2: fresh concat heads over the fine-tuned encoder's cached [MASK] vectors,
        # one per head seed (the best kept; their mean judges a round), class weights
        # (n/n_c)^0.375.
        fusion_stage=dict(head="concat", class_weight_power=0.375, epochs=12, head_seeds=5),
        # A stage-2 epoch, a stage-2 head and a round are kept by the worse of the dev
        # weighted F1 of the FP32 model and of its ONNX Runtime INT8 copy, what the nodes run
        # on a CPU (training/deployed.py).
        select="fp32+int8",
        # Then rounds over the finished model: the cycle toward the teacher again, from the
        # encoder and head as they stand, then a fresh stage 2; each round is kept only if
        # its heads' mean beats the model before it on dev.
        rounds=[dict(epochs=1, lr=2e-5, warmup=0.0)] * 3),
    # The teacher (models/large): packaged all-mpnet-base-v2 (110M, RoBERTa-base size; `make
    # setup-train`). The bottom 10 of 12 layers stay frozen and run once per prompt (cached);
    # the top two layers and the head train, 3 epochs on the corpus, without GoEmotions.
    "teacher": dict(
        encoder="mpnet", pooling="mask", past_context=4, max_length=128,
        epochs=3, batch_size=16, lr=8e-5, head_lr=1e-3, warmup=0.06,
        class_weight_power=0.25, label_smoothing=0.0, ema_decay=0.0, self_distill=0.0,
        freeze_word_embeddings=True, freeze_layers=10, cache_frozen=True,
        audio=False, video=False, seed=13,
        goemotions=dict(mode="off", per_class=2000, epochs=1)),
    # The reference plain recipe: previous 4 utterances, 3 epochs, no extras.
    "plain": dict(
        encoder="minilm", pooling="mask", past_context=4, max_length=128,
        epochs=3, batch_size=16, lr=4e-5, head_lr=4e-5, warmup=0.0,
        class_weight_power=0.0, label_smoothing=0.0, ema_decay=0.0, self_distill=0.0,
        freeze_word_embeddings=False, freeze_layers=0, audio=False, video=False, seed=13),
    # The audio and video branches over a trained text model (--init, default models/default;
    # its text encoder frozen), from the user's MELD.Raw or IEMOCAP media (--media):
    # erc_ros.training.multimodal_stage. The encoders and the head train together; lr is
    # the head's (the encoders' too), modality dropout 0.3, class weights (n/n_c)^0.5.
    # audio_dim / video_dim: the encoders' widths where the init model has none.
    "multimodal": dict(
        stage="multimodal", epochs=15, batch_size=8, lr=5e-4, modality_dropout=0.3,
        class_weight_power=0.5, audio_dim=64, video_dim=64, seed=13),
    # A face-expression expert for 48x48 grey faces (erc_ros.training.face_stage): a VGG-style
    # CNN trained from scratch on --faces (default FER2013 train), chosen on --faces-dev
    # (default FER2013 public_test), SGD + Nesterov, cosine, label smoothing, camera-like
    # augmentation, in float32 (docs/faces.md compares bf16). The rest: FaceStageConfig's
    # defaults.
    "face": dict(stage="face", epochs=30, batch_size=64, lr=0.02, seed=13, precision="fp32"),
    # The same at half the width (32-256 channels, 1.76 M parameters): a quarter of the cost
    # per face.
    "face-small": dict(stage="face", epochs=30, batch_size=64, lr=0.02, seed=13,
                       precision="fp32", net=dict(channels=(32, 64, 128, 256))),
    # Tests: the same with a tiny network.
    "face-tiny": dict(stage="face", epochs=1, batch_size=8, lr=0.05, seed=13, warmup_epochs=0,
                      net=dict(channels=(8, 16), convs_per_stage=1, hidden=0, dropout=0.0)),
    # The voice expert (erc_ros.training.voice_stage): a one-hidden-layer network on Whisper
    # tiny.en's pooled encoder states, trained on --voices (default RAVDESS) with two copies
    # of each clip through a robot's microphone (room, noise, level, speed, codec); figures,
    # calibration and gate from 6-fold cross-validation by speaker (docs/voice.md).
    "voice": dict(stage="voice", encoder="tiny.en", copies=2, folds=6, epochs=60, seed=13),
    # Tests: the same, no augmented copies, 2 folds, a few epochs, a small hidden layer.
    "voice-tiny": dict(stage="voice", encoder="base", copies=0, folds=2, epochs=5, seed=13,
                       net=dict(hidden=16)),
    # Tests: a tiny random BERT over the MiniLM vocabulary.
    "tiny": dict(
        encoder="tiny", pooling="mask", past_context=2, max_length=48,
        epochs=1, batch_size=8, lr=1e-3, head_lr=1e-3, warmup=0.1,
        class_weight_power=0.0, label_smoothing=0.0, ema_decay=0.9, self_distill=0.5,
        freeze_word_embeddings=False, freeze_layers=0, audio=True, video=True, seed=13),
}

#: The keys of a text recipe that a command-line flag of the same name overrides.
FLAG_KEYS = ("encoder", "past_context", "max_length", "freeze_layers", "epochs", "lr",
             "class_weight_power", "self_distill", "distill", "feature_distill", "seed",
             "select")


def with_flags(name: str, args) -> dict:
    """Recipe ``name`` (a copy) with the keys of :data:`FLAG_KEYS` that ``args`` sets."""
    r = dict(RECIPES[name])
    for k in FLAG_KEYS:
        v = getattr(args, k)
        if v is not None:
            r[k] = v
    return r
