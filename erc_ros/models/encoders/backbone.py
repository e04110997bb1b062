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
