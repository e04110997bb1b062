"""Name -> (config class, module class) for the fusion heads; a checkpoint stores the name."""
from __future__ import annotations

import importlib

HEADS = {
    "concat": ("erc_ros.models.fusion.concat", "ConcatConfig", "ConcatFusion"),
    "magt": ("erc_ros.models.fusion.magt", "MagtConfig", "MagtFusion"),
    "lpg": ("erc_ros.models.fusion.lpg", "LpgConfig", "LpgFusion"),
    "residual": ("erc_ros.models.fusion.residual", "ResidualConfig", "ResidualFusion"),
}


def head_classes(name: str):
    if name not in HEADS:
        raise ValueError(f"unknown fusion head {name!r}; known: {sorted(HEADS)}")
    mod, cfg_cls, cls = HEADS[name]
    m = importlib.import_module(mod)
    return getattr(m, cfg_cls), getattr(m, cls)


def build_fusion(name: str, config: dict):
    cfg_cls, cls = head_classes(name)
    fields = set(cfg_cls.__dataclass_fields__)
    return cls(cfg_cls(**{k: v for k, v in config.items() if k in fields}))
