"""Benchmarks: each writes its figures as JSON beside a picture of them (:func:`write_run`)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable


def write_run(result: dict, json_path: str | Path, plot: Callable[[dict, Path], None]
              ) -> tuple[Path, Path]:
    """Write ``result`` to ``json_path`` (its folder made) and ``plot(result, OUT.png)``
    beside it; the two paths."""
    out = Path(json_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    png = out.with_suffix(".png")
    plot(result, png)
    return out, png
