"""What machine a timing was taken on: the CPU's model name and flags, and a GEMM figure
measured in the same run.

Machines of the same kind have come with CPUs 5x apart (a Xeon with AVX-512 VNNI at
~320 GFLOP/s FP32 on 2 threads, an AMD EPYC with AVX2 only at ~61), so every benchmark that
reports a time also reports :func:`describe`: ``cpu`` (``lscpu``'s model name),
``flags`` (avx2 / avx512f / avx512_vnni / amx), ``cpus`` and ``gemm_gflops``: FP32
2048x2048 matrix products in torch on ``threads`` threads (best of ``repeats``; the machines
are shared, so the best run is the machine, the others include its neighbours), and the
1-minute load average when it was measured.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys

from erc_ros.runtime.backends import cpu_flags as all_flags


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_flags() -> list[str]:

    have = all_flags()
    return [w for w in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if w in have]


_GEMM = """
import sys, time, torch
threads, n, repeats = (int(x) for x in sys.argv[1:4])
torch.set_num_threads(threads)
g = torch.Generator().manual_seed(0)
a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
torch.mm(a, b)
best = float("inf")
for _ in range(repeats):
    t = time.perf_counter()
    torch.mm(a, b)
    best = min(best, time.perf_counter() - t)
print(2 * n ** 3 / best / 1e9)
"""


def gemm_gflops(threads: int = 2, n: int = 2048, repeats: int = 5) -> float:
    """FP32 GEMM throughput (GFLOP/s) of an n x n torch matrix product on ``threads``
    threads, in a process of its own (its thread count is that process's setting, not the
    caller's)."""

    r = subprocess.run([sys.executable, "-c", _GEMM, str(threads), str(n), str(repeats)],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"GEMM measurement failed: {r.stderr.strip()[-300:]}")
    return float(r.stdout.strip().splitlines()[-1])


def describe(threads: int = 2) -> dict:
    return {"cpu": cpu_model(), "flags": cpu_flags(), "cpus": os.cpu_count(),
            "gemm_gflops": round(gemm_gflops(threads), 1), "gemm_threads": threads,
            "load_average_1m": round(os.getloadavg()[0], 2)}


def line(m: dict) -> str:
    """One line for a summary."""
    return (f"{m['cpu']} ({', '.join(m['flags']) or 'no AVX2'}; {m['cpus']} CPUs), FP32 GEMM "
            f"{m['gemm_gflops']:.0f} GFLOP/s on {m['gemm_threads']} threads, load "
            f"{m['load_average_1m']:.1f}")
