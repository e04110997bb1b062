"""eval-bag over many bags: the same results on a local Ray cluster (--workers 2) as in one
process, a broken bag reported with its reason while the others are scored, and a second
run that reads back what was scored instead of replaying it.

Real parts: bags written by make-bag (espeak-ng speech, camera frames, transcripts), the
offline replay eval-bag always runs, a real Ray instance on this machine (the Ray extra).
"""
from __future__ import annotations

import shutil
import sys

import pytest

from erc_ros.evaluation import eval_bag
from erc_ros.paths import demo_bag

SCRIPTS = [
    """Alice [joy]: Good morning, I had a wonderful dream about the sea.
Bob [anger]: I told you the meeting was cancelled and nobody listened!
Alice [sadness]: I am sorry, I missed the message completely.
""",
    """Carol [surprise]: You bought a boat? When did that happen?
Dan [joy]: Last week, and it floats better than I hoped.
Carol [neutral]: Then we should take it to the lake on Sunday.
""",
    """Erin [fear]: Did you hear that noise in the basement just now?
Frank [neutral]: It is the heater, it always clicks when it starts.
""",
]
SETS = ("perception.diarization.warmup=false",)
#: A bag shipped in the repository (12 turns, 4 MB).
SCRIPT_BAG = demo_bag()
#: Columns that hold times measured while the bag ran, not results.
TIMED = {"latency_ms"}


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    from _ros_support import make_bag
    root = tmp_path_factory.mktemp("jobs")
    good = [make_bag(root / f"conv{i}", script=s) for i, s in enumerate(SCRIPTS)]
    broken = root / "broken"  # a bag cut short: its MCAP has no summary and no end
    shutil.copytree(good[0], broken)
    mcap = next(broken.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 3])
    return [str(good[0]), str(broken), str(good[1]), str(good[2])]


def _run(bags, model, store, **kw):
    import csv
    out = store.parent / f"{store.name}-out"
    kw.setdefault("sets", SETS)
    r = eval_bag.evaluate(bags, model_dir=str(model), threads=1, progress_bar=False,
                          store=store, out=out, **kw)
    with open(out / "utterances.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return r, rows


def _results(r: dict) -> dict:
    keep = ("utterances", "estimates", "lost", "accuracy", "weighted_f1", "macro_f1",
            "per_class_f1", "support", "confusion", "model_id", "duration_s")
    return {k: r[k] for k in keep} | {"bags": [(b["bag"], b["estimates"], b["lost"])
                                               for b in r["bags"]]}


def _untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMED} for row in rows]


@pytest.fixture(scope="module")
def single(bags, model, tmp_path_factory):
    store = tmp_path_factory.mktemp("single") / "store"
    return store, *_run(bags, model, store)


def test_a_broken_bag_is_reported_and_the_others_are_scored(single, bags):
    _, r, rows = single
    assert [f["bag"] for f in r["failed"]] == [bags[1]]
    assert "magic" in r["failed"][0]["error"] or "Error" in r["failed"][0]["error"]
    assert [b["bag"] for b in r["bags"]] == [bags[0], bags[2], bags[3]]
    assert r["utterances"] == r["estimates"] == 8 and r["lost"] == 0
    assert {row["bag"] for row in rows} == {"conv0", "conv1", "conv2"}
    summary = eval_bag.summary_markdown(r)
    assert "1 bag(s) failed" in summary and bags[1] in summary


def test_ray_workers_give_the_single_process_results(single, bags, model, tmp_path):
    pytest.importorskip("ray", reason="the Ray extra (make setup-ray) is not installed")
    _, r1, rows1 = single
    r2, rows2 = _run(bags, model, tmp_path / "store", workers=2)
    assert r2["workers"]["pieces"] == 4 and r2["workers"]["cpus"] == 2
    assert [f["bag"] for f in r2["failed"]] == [bags[1]]
    assert r2["failed"][0]["error"] == r1["failed"][0]["error"]
    # the same replay, code and thread count in another process: the same numbers, exactly
    assert _results(r2) == _results(r1)
    assert _untimed(rows2) == _untimed(rows1)


def test_a_second_run_reads_back_what_was_scored(single, bags, model):
    store, r1, rows1 = single
    again, rows = _run(bags, model, store)
    assert again["resumed"] == 3  # the broken bag is tried again; it fails again
    assert [f["bag"] for f in again["failed"]] == [bags[1]]
    assert _results(again) == _results(r1) and rows == rows1
    # another setting is another result: scored, not read back
    other, _ = _run(bags[:1], model, store, sets=SETS + ("perception.vad.threshold=0.6",))
    assert other["resumed"] == 0
    fresh, _ = _run(bags[:1], model, store, resume=False)
    assert fresh["resumed"] == 0


def test_without_ray_the_options_say_how_to_get_it(bags, model, monkeypatch, capsys):
    import argparse
    monkeypatch.setitem(sys.modules, "ray", None)  # as if the extra were not installed
    p = argparse.ArgumentParser()
    eval_bag.add_arguments(p)
    args = p.parse_args([bags[0], "--model-dir", str(model), "--workers", "2", "--fresh"])
    assert eval_bag.run(args) == 2
    assert "make setup-ray" in capsys.readouterr().err
    args = p.parse_args([bags[0], "--workers", "2", "--live"])
    assert eval_bag.run(args) == 2


def test_the_recognizer_is_chosen_once_for_the_whole_run():
    """--asr embedded with asr.model auto: the choice (a timed decode: machine and load
    dependent) is made once and pinned, so every bag and worker runs the same model and a
    kept result names it; a configured model is kept as it is."""
    s = eval_bag.Settings(asr="embedded")
    pinned, choice = eval_bag.pin_recognizer(s)
    assert choice["model"] in ("base", "tiny.en") and choice["reason"]
    assert pinned.sets == (f"perception.asr.model={choice['model']}",)
    assert pinned.key(SCRIPT_BAG) != s.key(SCRIPT_BAG)
    fixed = eval_bag.Settings(asr="embedded", sets=("perception.asr.model=tiny.en",))
    assert eval_bag.pin_recognizer(fixed) == (fixed, {"model": "tiny.en", "reason": "configured"})
    assert eval_bag.pin_recognizer(eval_bag.Settings()) == (eval_bag.Settings(), None)
