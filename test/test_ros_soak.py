"""1-hour soak through the live composed nodes (``make soak``; kept out of ``make test``).

A generated 60-minute conversation bag (MELD dev dialogues spoken by espeak-ng, faces, timed
ASR) is played in real time into the composed nodes with /clock. Checked: no crash, resident
memory growth under 10% after warm-up (first 10 minutes), and zero lost utterances. Writes
``soak_rss.png`` and ``soak.json`` into ``$ERC_ROS_SOAK_OUT`` (default ``runs/soak``).

    make soak                                   # or:
    .venv/bin/python -m pytest -m soak test/test_ros_soak.py -s
    ERC_ROS_SOAK_MINUTES=5 ...                  # a shorter run with the same checks
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import rclpy

from erc_ros.ros.live import LiveSession
from erc_ros.ros.replay import bag_span
from erc_ros.evaluation import eval_bag

MINUTES = float(os.environ.get("ERC_ROS_SOAK_MINUTES", "60"))
OUT = Path(os.environ.get("ERC_ROS_SOAK_OUT", "runs/soak"))


@pytest.mark.soak
@pytest.mark.ros
@pytest.mark.timeout(int(MINUTES * 60 * 1.5 + 900))  # real-time playback + generation
def test_one_hour_soak(tmp_path):
    from erc_ros.bags import make_bag as mb
    from tqdm import tqdm
    bag = tmp_path / "soak"
    conv = mb.generate(minutes=MINUTES, seed=7)
    mb.write_bag(mb.bag_messages(conv, fps=5.0), bag)
    mb.write_labels(mb.turns_of(conv), bag / "labels.csv")
    del conv
    model_dir = os.environ.get("ERC_ROS_SOAK_MODEL", "")  # default: models/default
    start, end = bag_span(bag)
    proc = psutil.Process()
    rss: list[tuple[float, float]] = []
    stop = threading.Event()

    def sample():
        t0 = time.monotonic()
        while not stop.wait(5.0):
            rss.append((time.monotonic() - t0, proc.memory_info().rss / 2**20))

    rclpy.init()
    try:
        sess = LiveSession(bag, eval_bag.DEFAULT_CONFIG, model_dir=model_dir)
        assert sess.start(start)
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        bar = tqdm(total=int(end - start), unit="s", desc="soak", mininterval=10)
        done = [0.0]

        def progress(sec):
            bar.update(int(sec - done[0]))
            done[0] = int(sec)

        truth: list = []
        sess.player.play(bag, rate=1.0, progress=progress, ground_truth=truth)
        sess.finish(end, timeout=120)
        bar.close()
        alive = all(n.worker is not None and n.worker._thread is not None
                    and n.worker._thread.is_alive() for n in sess.comp.nodes)
        estimates = list(sess.estimates)
        errors = {**sess.comp.utterance.health.snapshot()["counts"],
                  **sess.comp.emotion.health.snapshot()["counts"]}
        sess.close()
    finally:
        stop.set()
        rclpy.try_shutdown()
    labels = eval_bag.read_labels(bag / "labels.csv")
    pairs = eval_bag.match(labels, estimates)
    lost = sum(1 for _, e in pairs if e is None)
    t = np.asarray([x for x, _ in rss])
    m = np.asarray([y for _, y in rss])
    warm = m[t >= min(600.0, 0.2 * t.max())]
    growth = float((warm[-20:].mean() - warm[:20].mean()) / warm[:20].mean()) if warm.size else 0
    OUT.mkdir(parents=True, exist_ok=True)
    summary = {"minutes": (end - start) / 60, "utterances": len(labels),
               "estimates": len(estimates), "lost": lost, "rss_growth_after_warmup": growth,
               "rss_mb_start": float(m[0]) if m.size else None,
               "rss_mb_end": float(m[-1]) if m.size else None, "counters": errors}
    (OUT / "soak.json").write_text(json.dumps(summary, indent=2))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.plot(t / 60, m)
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title(f"soak: {len(estimates)} estimates, {lost} lost, growth {growth:+.1%}")
    fig.tight_layout()
    fig.savefig(OUT / "soak_rss.png", dpi=110)
    print(json.dumps(summary, indent=2))
    assert alive, "a worker thread died"
    assert lost == 0, [lab for lab, e in pairs if e is None][:5]
    assert growth < 0.10, summary
    assert not any(k.startswith("errors.") for k in errors), errors
