"""Loading a transformers backbone the same way for every modality: from a local directory
(or HF id) the user gives, or from a config dict (tiny random models in tests, and the
architecture recorded in a model directory's manifest)."""
from __future__ import annotations

from typing import Optional

from torch import nn


def load_backbone(pretrained: Optional[str], backbone: dict, freeze: bool = False,
                  **model_kwargs) -> nn.Module:
    """``AutoModel`` from ``pretrained`` if given, else from the config dict ``backbone``
    (with its ``model_type``). ``model_kwargs`` go to the constructor (e.g.
    ``add_pooling_layer=False``); ``freeze`` stops its gradients."""
    from transformers import AutoConfig, AutoModel

    if pretrained:
        model = AutoModel.from_pretrained(pretrained, **model_kwargs)
    else:
        cfg = dict(backbone)
        model = AutoModel.from_config(AutoConfig.for_model(cfg.pop("model_type"), **cfg),
                                      **model_kwargs)
    if freeze:
        model.requires_grad_(False)
    return model


class BackboneEncoder(nn.Module):
    """Base of the checkpoint-backed encoders (SSL audio, ViT video): holds the backbone,
    records its config when loaded from a checkpoint, and reads its width from it."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.backbone = load_backbone(config.pretrained, config.backbone,
                                      freeze=config.freeze_backbone)
        if config.pretrained:
            config.backbone = self.backbone.config.to_dict()

    @property
    def dim(self) -> int:
        return int(self.backbone.config.hidden_size)
