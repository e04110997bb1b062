"""Soak: memory stays flat over a long stream (kept out of `make test`; run `make soak` or
`.venv/bin/python -m pytest -m soak test/test_core_soak.py`)."""
from __future__ import annotations

import argparse
import json

import pytest

from erc_ros.bench import soak_core

from core_support import cache_root


@pytest.mark.soak
def test_core_memory_is_flat_over_a_long_stream(tmp_path):
    p = argparse.ArgumentParser()
    soak_core.add_arguments(p)
    out = tmp_path / "soak.json"
    args = p.parse_args(["--minutes", "12", "--baseline-minute", "5",
                         "--cache", str(cache_root() / "espeak"), "--json", str(out),
                         "--plot", str(tmp_path / "soak.png")])
    rc = soak_core.run(args)
    summary = json.loads(out.read_text())
    assert summary["utterances"] > 100
    assert rc == 0, f"RSS grew {100 * summary['growth']:.1f}% after minute 5"
