"""Where erc_ros's shared files are: beside the package in a source checkout, else under
``share/erc_ros`` of the first ament prefix that has them (a colcon install)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

#: The source checkout's root (the package's parent folder).
CHECKOUT = Path(__file__).resolve().parents[1]


def share_path(*parts: str) -> Optional[Path]:
    """``<checkout>/<parts>`` if it exists, else ``<prefix>/share/erc_ros/<parts>`` of the
    first prefix on ``AMENT_PREFIX_PATH`` that has it; None if neither."""
    here = CHECKOUT.joinpath(*parts)
    if here.exists():
        return here
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        cand = Path(prefix, "share", "erc_ros", *parts)
        if cand.exists():
            return cand
    return None
