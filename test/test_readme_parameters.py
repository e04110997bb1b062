"""The README's parameter tables say what the code declares: every node parameter and every
PerceptionConfig field appears as ``| `name` | `default` |`` (a renamed, added or re-defaulted
parameter fails here until the README follows)."""
from __future__ import annotations

from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _row(name: str, default) -> str:
    if isinstance(default, bool):
        default = str(default).lower()
    elif isinstance(default, str) and default == "":
        default = '""'
    return f"| `{name}` | `{default}` |"


@pytest.mark.parametrize("module", ["utterance_node", "emotion_node"])
def test_readme_lists_every_node_parameter_with_its_default(module):
    import importlib

    params = importlib.import_module(f"erc_ros.ros.{module}").PARAMETERS
    missing = [_row(n, d) for n, (d, _) in params.items() if _row(n, d) not in README]
    assert not missing, missing


def test_readme_lists_every_perception_parameter_with_its_default():
    from erc_ros.core.perception import PerceptionConfig

    missing = [f"| `{k}` | `{v}` |" for k, v, _ in PerceptionConfig.describe()
               if f"| `{k}` | `{v}` |" not in README]
    assert not missing, missing
