"""Memory across lifecycle cycles of the composed process with the real models (issue 30).

The composed process (``python -m erc_ros.ros.composed``: the default model on ONNX Runtime
INT8, the face-expression expert, and with ``asr: embedded`` Whisper base in the utterance
node) is driven from this process over its ``change_state`` services, as ``ros2 lifecycle
set`` drives it, serving a few utterances of the sample bag between cycles; its RSS is read
after each cycle (:mod:`erc_ros.bench.lifecycle_memory`, which prints the same table)::

    python -m erc_ros lifecycle-memory --cycles 30 [--asr embedded]
    make soak      # the 30-cycle runs below, or:
    .venv/bin/python -m pytest -m soak test/test_ros_lifecycle_memory.py -s

The models are those ``make setup`` prepared (its cache, read only: loading never builds).
"""
from __future__ import annotations

import argparse

import pytest

from conftest import SETUP_CACHE
from erc_ros.runtime.backends import cpu_int8
from erc_ros.bench import lifecycle_memory

pytestmark = pytest.mark.ros

#: The normal suite's bound on four cycles. Before the fix the RSS after cycle 4 was 250-270
#: MB above cycle 1's (default launch, ONNX Runtime INT8; 50-110 MB a cycle); after it, 30
#: cycles stay within a 36 MB band after the transitions and a 50 MB band after serving
#: (docs/ros.md). 100 MB is the issue's own bound: twice the band, under half the growth.
SHORT_MAX_GROWTH_MB = 100.0


def _args(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    lifecycle_memory.add_arguments(p)
    return p.parse_args([*argv, "--env", f"ERC_ROS_CACHE={SETUP_CACHE}"])


def _run(args) -> lifecycle_memory.Result:
    res = lifecycle_memory.measure(args)
    log = open(res.log).read() if res.log else ""
    assert res.cycles and all(c.estimates > 0 for c in res.cycles), (res, log[-4000:])
    # precision auto: INT8 on a CPU with VNNI, FP32 on one without (runtime.backends)
    auto = "int8" if cpu_int8()[0] else "fp32"
    assert res.backend == f"onnxruntime/{auto}", (
        f"the default model ran on {res.backend!r}, not what a robot runs: `make setup` "
        f"prepares it in {SETUP_CACHE}", log[-2000:])
    assert res.face_expert.startswith("face expert"), res.face_expert
    return res


@pytest.mark.long
def test_four_cycles_keep_no_model_memory():
    """The normal suite's short run: four cycles of the default launch (~1 min)."""
    res = _run(_args("--cycles", "4", "--turns", "2", "--max-growth", str(SHORT_MAX_GROWTH_MB)))
    assert res.ok, (res.reasons, [(round(c.rss_mb), round(c.served_mb)) for c in res.cycles])


@pytest.mark.soak
@pytest.mark.timeout(3600)
@pytest.mark.parametrize("asr", ["bag", "embedded"])
def test_thirty_cycles_stay_flat(asr):
    """Issue 30's bound: RSS after 30 cycles within 100 MB of the first cycle's, and within
    20 MB over the last 10, with the default launch and with the embedded recognizer."""
    res = _run(_args("--cycles", "30", "--asr", asr))
    if asr == "embedded":
        # asr.model auto: base or tiny.en, by this CPU's speed (loads both at each configure)
        assert res.recognizer in ("Whisper base", "Whisper tiny.en"), res.recognizer
    assert res.ok, (res.reasons, [(round(c.rss_mb), round(c.served_mb)) for c in res.cycles])
