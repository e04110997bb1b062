"""Ray's cost per task here (run_piece wrapper, ray.wait one at a time) and a worker's
start (imports + the default pipeline), for the scaling estimate (docs/results.md).

    .venv/bin/python tools/bench/ray_overhead.py
"""
import time
from erc_ros.jobs import RayJobs


def nothing(i):
    return i


def load(_):
    t = time.perf_counter()
    from erc_ros.evaluation import eval_bag
    eval_bag.make_pipeline(threads=1)
    return time.perf_counter() - t


if __name__ == "__main__":
    t = time.perf_counter()
    with RayJobs(2) as jobs:
        print(f"ray start {jobs.start_seconds:.2f} s")
        list(jobs.map(nothing, [(i, (i,)) for i in range(20)]))  # workers up
        for n in (200, 1000):
            t = time.perf_counter()
            out = list(jobs.map(nothing, [(i, (i,)) for i in range(n)]))
            dt = time.perf_counter() - t
            print(f"{n} empty tasks: {dt:.2f} s, {1000 * dt / n:.2f} ms per task (2 CPUs)")
        got = [o.value for o in jobs.map(load, [(i, (i,)) for i in range(2)])]
        print("worker pipeline load (imports + default model): " + ", ".join(f"{x:.2f} s" for x in got))
