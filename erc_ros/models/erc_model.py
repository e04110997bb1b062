"""The emotion-recognition-in-conversation model, decomposed in stages.

The runtime runs each stage on any backend and caches per conversation::

    model.preprocessor                 numpy/tokenizers only: prompt ids, audio features, faces
    model.text_encoder(ids, mask)      -> [B, D_t]   (hidden state at the prompt's mask token)
    model.audio_encoder(**audio)       -> [B, D_a]   (optional: None when the model has none)
    model.video_encoder(**video)       -> [B, D_v]   (optional)
    model.fusion(text[B,T,Dt], audio[B,T,Da], video[B,T,Dv], modality_mask[B,T,3] bool,
                 speaker_ids[B,T] long, padding_mask[B,T] bool (True = padded))
                                       -> (logits[B,T,C], modality_weights[B,T,3])

A missing optional encoder is fed zeros of its width with the modality masked off.
``model.label_names`` and ``model.valence_arousal`` ([C, 2] in [-1, 1]) describe the classes.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from erc_ros.core.types import Utterance
from erc_ros.models.encoders.audio import AudioEncoderConfig, build_audio_encoder
from erc_ros.models.encoders.text import TextEncoder, TextEncoderConfig
from erc_ros.models.encoders.video import VideoEncoderConfig, build_video_encoder
from erc_ros.models.fusion import build_fusion
from erc_ros.models.labels import DEFAULT_VALENCE_AROUSAL, MELD_LABELS
from erc_ros.models.preprocessing import Preprocessor, PreprocessorConfig, packaged_minilm_dir


@dataclass
class ErcModelConfig:
    model_id: str = "erc-model"
    label_names: tuple = MELD_LABELS
    valence_arousal: dict = field(default_factory=dict)  # label -> (v, a); defaults filled in
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    audio: Optional[AudioEncoderConfig] = None
    video: Optional[VideoEncoderConfig] = None
    fusion_head: str = "concat"
    fusion: dict = field(default_factory=dict)  # head config (dims filled in from encoders)
    preprocessing: PreprocessorConfig = field(default_factory=PreprocessorConfig)
    # Modalities the fusion head was trained on (None: every modality with an encoder). An
    # encoder whose modality the head never saw is not run and counts as absent: its
    # projection is untrained (zero-initialised), so running it only costs time and swaps
    # the head's learned "missing" vector for an untrained one.
    trained_modalities: Optional[tuple] = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["label_names"] = list(self.label_names)
        if self.trained_modalities is not None:
            d["trained_modalities"] = list(self.trained_modalities)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ErcModelConfig":
        d = dict(d)
        return cls(model_id=d.get("model_id", "erc-model"),
                   label_names=tuple(d["label_names"]),
                   valence_arousal={k: tuple(v) for k, v in d.get("valence_arousal", {}).items()},
                   text=TextEncoderConfig(**d["text"]),
                   audio=AudioEncoderConfig(**d["audio"]) if d.get("audio") else None,
                   video=VideoEncoderConfig(**d["video"]) if d.get("video") else None,
                   fusion_head=d.get("fusion_head", "concat"), fusion=dict(d.get("fusion", {})),
                   preprocessing=PreprocessorConfig.from_dict(d.get("preprocessing", {})),
                   trained_modalities=(tuple(d["trained_modalities"])
                                       if d.get("trained_modalities") is not None else None))


def tiny_text_config(vocab_size: int = 30522) -> TextEncoderConfig:
    """A tiny random BERT (hidden 16, 2 layers) for tests, with the MiniLM vocabulary."""
    return TextEncoderConfig(backbone=dict(
        model_type="bert", vocab_size=vocab_size, hidden_size=16, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=32, max_position_embeddings=512))


class ErcModel(nn.Module):
    def __init__(self, config: ErcModelConfig, tokenizer_file: str | Path):
        super().__init__()
        # The model's own copy, completed with what only the built parts know (the mask id,
        # the audio feature size, the fusion dimensions): the caller's config is not touched.
        self.config = config = copy.deepcopy(config)
        self.preprocessor = Preprocessor(config.preprocessing, tokenizer_file)
        config.text.mask_token_id = self.preprocessor.mask_id
        if config.audio is not None and config.audio.kind == "prosody":
            config.audio.in_dim = self.preprocessor.audio_feature_dim  # before it is built
        self.text_encoder = TextEncoder(config.text)
        self.audio_encoder = build_audio_encoder(config.audio) if config.audio else None
        self.video_encoder = build_video_encoder(config.video) if config.video else None
        config.fusion = dict(config.fusion, text_dim=self.text_encoder.dim,
                             audio_dim=self.audio_encoder.dim if self.audio_encoder else 1,
                             video_dim=self.video_encoder.dim if self.video_encoder else 1,
                             num_classes=len(config.label_names),
                             max_speakers=config.preprocessing.max_speakers)
        self.fusion = build_fusion(config.fusion_head, config.fusion)
        for k in config.label_names:
            config.valence_arousal.setdefault(k, DEFAULT_VALENCE_AROUSAL.get(k.lower(), (0.0, 0.0)))

    # -- descriptions --------------------------------------------------------------------
    @property
    def label_names(self) -> list[str]:
        return list(self.config.label_names)

    @property
    def valence_arousal(self) -> np.ndarray:
        return np.asarray([self.config.valence_arousal[k] for k in self.label_names], np.float32)

    def uses(self, modality: str) -> bool:
        """Whether predictions use ``modality`` ("text", "audio" or "video"): it has an
        encoder and the fusion head was trained with it (``config.trained_modalities``)."""
        if modality != "text" and getattr(self, f"{modality}_encoder") is None:
            return False
        trained = self.config.trained_modalities
        return trained is None or modality in trained

    @property
    def dims(self) -> tuple[int, int, int]:
        f = self.config.fusion
        return f["text_dim"], f["audio_dim"], f["video_dim"]

    # -- convenience for training and offline scoring (the runtime calls the stages) --------
    def encode(self, utterances: Sequence[Utterance], contexts: Sequence[Sequence[Utterance]],
               futures: Optional[Sequence[Sequence[Utterance]]] = None,
               device: torch.device | str = "cpu", text: Optional[torch.Tensor] = None):
        """Encode utterances (each with its own context) -> text [N,Dt], audio [N,Da],
        video [N,Dv], modality mask [N,3] (all torch). ``text``: the text vectors, already
        computed (training's frozen-prefix path); the text encoder then does not run."""
        pre = self.preprocessor
        if text is None:
            futures = futures or [()] * len(utterances)
            ids = [pre.text_ids(u, c, f) for u, c, f in zip(utterances, contexts, futures)]
            t = pre.pad_text(ids)
            text = self.text_encoder(torch.as_tensor(t["input_ids"], device=device),
                                     torch.as_tensor(t["attention_mask"], device=device))
        n = len(utterances)
        _, da, dv = self.dims
        mask = torch.tensor([[u.has_text, u.has_audio and self.uses("audio"),
                              u.has_video and self.uses("video")]
                             for u in utterances], dtype=torch.bool, device=device)
        audio = torch.zeros(n, da, device=device)
        video = torch.zeros(n, dv, device=device)
        if bool(mask[:, 1].any()):
            rows = [i for i in range(n) if mask[i, 1]]
            feats = [pre.audio_inputs(utterances[i]) for i in rows]
            audio[rows] = torch.cat([self.audio_encoder(**_batch(f, device)) for f in feats])
        if bool(mask[:, 2].any()):
            rows = [i for i in range(n) if mask[i, 2]]
            feats = [pre.video_inputs(utterances[i]) for i in rows]
            video[rows] = torch.cat([self.video_encoder(**_batch(f, device)) for f in feats])
        return text, audio, video, mask

    @torch.no_grad()
    def predict_dialogue(self, utterances: Sequence[Utterance], future_context: bool = False,
                         batch_size: int = 32) -> np.ndarray:
        """Class probabilities [T, C] for every utterance of one dialogue (past context
        only unless ``future_context``), exactly as the stages run live."""
        self.eval()
        k = self.config.preprocessing.prompt.past_context
        parts = []
        for s in range(0, len(utterances), batch_size):
            idx = range(s, min(s + batch_size, len(utterances)))
            ctx = [utterances[max(0, i - k):i] for i in idx]
            fut = [utterances[i + 1:] if future_context else () for i in idx]
            parts.append(self.encode([utterances[i] for i in idx], ctx, fut))
        text, audio, video, mask = (torch.cat(x) for x in zip(*parts))
        spk = torch.as_tensor(self.preprocessor.speaker_ids(utterances))[None]
        pad = torch.zeros(1, len(utterances), dtype=torch.bool)
        logits, _ = self.fusion(text[None], audio[None], video[None], mask[None], spk, pad)
        return torch.softmax(logits[0], -1).numpy()


def _batch(inputs: dict, device) -> dict:
    return {k: torch.as_tensor(v, device=device) for k, v in inputs.items()}


def build_model(config: ErcModelConfig, tokenizer_file: str | Path | None = None) -> ErcModel:
    """Build a model; the tokenizer defaults to the packaged MiniLM's."""

    return ErcModel(config, tokenizer_file or packaged_minilm_dir() / "tokenizer.json")
