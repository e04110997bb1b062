"""Many independent pieces of work (bags to score, clips to read) on Ray.

``eval-bag --workers N`` and the media reading of ``train``/``evaluate --media DIR --workers
N`` hand their pieces to :class:`RayJobs`: a local Ray instance with ``N`` CPUs on this
machine, or an existing cluster (``--ray-address``). Each piece is one Ray task that runs the
same function the single-process path runs; its result comes back to the calling process,
which puts the pieces in order, so the outcome does not depend on which worker ran what.

A piece that raises is reported with its reason (:class:`Outcome` ``error``) and does not
stop the others; so is one whose worker process died (a crash, the memory killer). Nothing is
retried: a broken bag would fail again.

Ray is an optional extra (``make setup-ray``: ``requirements-ray.txt``); the commands run
without it in one process. On a cluster every node needs erc_ros installed as here (the
same version, with its models prepared) and the bags or media at the same paths.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional

#: What a user without the extra is told.
RAY_MISSING = ("Ray is not installed: it is the optional extra for --workers / --ray-address "
               "(make setup-ray, or pip install -r requirements-ray.txt); without those "
               "options the command runs in this process")


@dataclass
class Outcome:
    """One piece's result: ``value`` (``error`` None), or ``error`` ("Type: message")."""
    key: Any
    value: Any = None
    error: Optional[str] = None
    seconds: float = 0.0  # the piece's own wall time, in its worker

    @property
    def ok(self) -> bool:
        return self.error is None


def describe(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def run_piece(fn: Callable, key: Any, args: tuple) -> Outcome:
    """``fn(*args)`` as an :class:`Outcome`: what runs in a worker (and, for the same
    failure handling, in the single-process path)."""
    t0 = time.perf_counter()
    try:
        return Outcome(key, fn(*args), seconds=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 -- reported with the piece, the others go on
        return Outcome(key, error=describe(e), seconds=time.perf_counter() - t0)


def add_arguments(p, what: str) -> None:
    """``--workers N`` and ``--ray-address ADDRESS``, the same in every command."""
    p.add_argument("--workers", type=int, default=0, metavar="N",
                   help=f"{what} on a local Ray of N CPUs (the Ray extra: make setup-ray); "
                        "0: in this process")
    p.add_argument("--ray-address", default=None, metavar="ADDRESS",
                   help=f"{what} on an existing Ray cluster (auto, or ray://host:10001); "
                        "every node runs erc_ros as installed here")


def wanted(args) -> bool:
    return bool(getattr(args, "workers", 0)) or bool(getattr(args, "ray_address", None))


class RayJobs:
    """A Ray instance to run pieces on: ``workers`` CPUs of a local one started here, or
    the cluster at ``address`` (``auto``: the one ``ray start`` runs on this machine).
    ``cpus_per_piece``: the CPUs Ray reserves for each task (its threads)."""

    def __init__(self, workers: int = 0, address: Optional[str] = None,
                 cpus_per_piece: float = 1.0):
        try:
            import ray
        except ImportError as e:
            raise RuntimeError(RAY_MISSING) from e
        self.ray = ray
        self.cpus_per_piece = cpus_per_piece
        self.started_here = not ray.is_initialized()
        t0 = time.perf_counter()
        if self.started_here:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # never phone home
            kw: dict = dict(include_dashboard=False, log_to_driver=False,
                            logging_level="warning", configure_logging=True)
            if address:
                ray.init(address=address, **kw)
            else:
                if workers < 1:
                    raise ValueError(f"workers must be at least 1, got {workers}")
                ray.init(num_cpus=workers, **kw)
        self.start_seconds = time.perf_counter() - t0
        self.cpus = int(ray.cluster_resources().get("CPU", 0))

    def map(self, fn: Callable, pieces: Iterable[tuple[Any, tuple]]) -> Iterator[Outcome]:
        """``fn(*args)`` for each ``(key, args)``, one Ray task each; outcomes as they
        finish (not in order)."""
        ray = self.ray
        remote = ray.remote(run_piece).options(num_cpus=self.cpus_per_piece, max_retries=0)
        pending = {remote.remote(fn, key, args): key for key, args in pieces}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                key = pending.pop(ref)
                try:
                    yield ray.get(ref)
                except Exception as e:  # noqa: BLE001 -- the worker died (crash, memory)
                    yield Outcome(key, error=describe(e))

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()

    def __enter__(self) -> "RayJobs":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
