"""Text encoder over a transformers ``AutoModel`` (masked-LM or sentence encoder).

Input: the prompt built by :class:`erc_ros.models.preprocessing.Preprocessor` (context with
speaker tags, current utterance, "Now <speaker> feels <mask>"). Output: the hidden state at
the mask token (``pooling="mask"``, for masked-LM style prompting), the masked mean
(``"mean"``, sentence encoders) or the first token (``"cls"``). The dimension is read from the
backbone config, never hard-coded.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch
from torch import nn

from erc_ros.models.encoders.backbone import load_backbone


@dataclass
class TextEncoderConfig:
    pretrained: Optional[str] = None  # local directory (or HF id) of the backbone weights
    backbone: dict = field(default_factory=dict)  # backbone config dict (AutoConfig.for_model)
    pooling: str = "mask"  # "mask" | "mean" | "cls"
    mask_token_id: int = 103
    freeze_word_embeddings: bool = False
    freeze_layers: int = 0  # freeze all embeddings and the first N transformer layers

    def to_dict(self) -> dict:
        return asdict(self)


def build_backbone(pretrained: Optional[str], backbone: dict) -> nn.Module:
    # the prompt encoder reads hidden states only: no pooler where the architecture has one
    if pretrained and not _is_bert_like(pretrained):
        return load_backbone(pretrained, backbone)
    try:
        return load_backbone(pretrained, backbone, add_pooling_layer=False)
    except TypeError:
        return load_backbone(pretrained, backbone)


def _is_bert_like(path: str) -> bool:
    from transformers import AutoConfig

    # Architectures whose model takes ``add_pooling_layer`` (elsewhere from_pretrained would
    # store the keyword in the config instead of refusing it).
    return AutoConfig.from_pretrained(path).model_type in ("bert", "roberta", "xlm-roberta",
                                                           "mpnet")


class TextEncoder(nn.Module):
    def __init__(self, config: TextEncoderConfig):
        super().__init__()
        self.config = config
        self.backbone = build_backbone(config.pretrained, config.backbone)
        if not config.backbone:
            d = self.backbone.config.to_dict()
            config.backbone = {k: d[k] for k in _BACKBONE_KEYS if k in d}
        self.backbone.config.attn_implementation = "eager"
        if config.freeze_word_embeddings:
            self.backbone.get_input_embeddings().weight.requires_grad_(False)
        if config.freeze_layers > 0:
            # Training cost and the stored size both shrink; the frozen part can be taken
            # from the packaged checkpoint at load time (see artefact.save_model_dir).
            self.backbone.embeddings.requires_grad_(False)
            for layer in self.backbone.encoder.layer[: config.freeze_layers]:
                layer.requires_grad_(False)

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """``input_ids``/``attention_mask`` [B, L] -> [B, D_t]."""
        h = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.pool(h, input_ids, attention_mask)

    # The frozen bottom (embeddings + the first ``freeze_layers`` layers) and the trained top,
    # run apart: training computes the bottom once per prompt and caches it (a teacher with 8
    # of 12 layers frozen then costs a third per step). forward == top(bottom) in eval mode.
    def bottom(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """[B, L] -> hidden states [B, L, D] after the frozen layers."""
        h = self.backbone.embeddings(input_ids=input_ids)
        return self._layers(h, attention_mask, 0, self.config.freeze_layers)

    def top(self, hidden: torch.Tensor, input_ids: torch.Tensor,
            attention_mask: torch.Tensor) -> torch.Tensor:
        """:meth:`bottom`'s hidden states -> [B, D_t] (the remaining layers, then pooling)."""
        layers = self.backbone.encoder.layer
        h = self._layers(hidden, attention_mask, self.config.freeze_layers, len(layers))
        return self.pool(h, input_ids, attention_mask)

    def _layers(self, h: torch.Tensor, attention_mask: torch.Tensor, a: int, b: int):
        from transformers.masking_utils import create_bidirectional_mask

        if a >= b:
            return h
        bb = self.backbone
        mask = create_bidirectional_mask(config=bb.config, inputs_embeds=h,
                                         attention_mask=attention_mask)
        extra = {}
        if hasattr(bb.encoder, "compute_position_bias"):  # MPNet: relative position bias
            extra["position_bias"] = bb.encoder.compute_position_bias(h)
        for layer in bb.encoder.layer[a:b]:
            out = layer(h, mask, **extra)
            h = out[0] if isinstance(out, tuple) else out
        return h

    def pool(self, h: torch.Tensor, input_ids: torch.Tensor,
             attention_mask: torch.Tensor) -> torch.Tensor:
        pooling = self.config.pooling
        if pooling == "mask":
            # First mask position per row (argmax over a 0/1 tensor exports to ONNX).
            is_mask = (input_ids == self.config.mask_token_id).to(torch.int64)
            pos = is_mask.argmax(dim=1)
            return h[torch.arange(h.shape[0], device=h.device), pos]
        if pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(h.dtype)
            return (h * m).sum(1) / m.sum(1).clamp_min(1.0)
        return h[:, 0]


# Keys kept from the backbone config so a model directory can rebuild it without the original
# checkpoint (the weights come from the directory's own safetensors).
_BACKBONE_KEYS = ("model_type", "vocab_size", "hidden_size", "num_hidden_layers",
                  "num_attention_heads", "intermediate_size", "hidden_act",
                  "hidden_dropout_prob", "attention_probs_dropout_prob",
                  "max_position_embeddings", "type_vocab_size", "initializer_range",
                  "layer_norm_eps", "pad_token_id", "position_embedding_type",
                  "bos_token_id", "eos_token_id", "relative_attention_num_buckets")
