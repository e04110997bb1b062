"""Process-wide settings, made once per process by its entry point and never by a component.

A component (the speaker embedder, a torch backend, the face detector) shares its process
with others: a thread count it set for itself would silently change everyone's, and the last
one set would win. So the entry points — each ``python -m erc_ros`` command, each node's
``main``, the composed process — call :func:`configure` once, from their parameters, and
log what it set; components only use what is there.

- the Fast DDS profile (:func:`set_environment`, ``config/fastdds.xml``);
- ``OMP_WAIT_POLICY=PASSIVE`` (:func:`set_environment`): torch's OpenMP threads otherwise
  busy-wait between parallel regions; on a shared 2-core machine (ONNX Runtime sessions, the
  ROS executor, other processes) that collapses: MiniLM at 128 tokens took 1.0-1.9 s with
  two spinning threads vs 0.1 s passive under load 11. It only acts if set before torch is
  first imported, so :func:`set_environment` runs at the very start of each entry point.
- torch's intra-op and inter-op thread counts (one pool per process: the speaker embedder
  and a torch backend share it);
- OpenCV's thread pool (its default of one thread per core oversubscribes a busy machine);
- glibc's allocator, in node processes (:func:`tune_allocator` at the first configure,
  :func:`loading_models` around each configure's loading, :func:`release_memory` after each
  cleanup). glibc raises its mmap threshold each time a mapped block is freed (up to
  32 MiB): after the first inference, the models a configure loads land in the heap arena
  of the thread that ran it (an executor thread, whichever took the transition; one arena
  per thread, up to 8 per core), and what the cleanup frees stays resident there, until
  every arena holds its own copy (+440 MB over 10 cycles of the composed nodes). While
  models load the threshold is fixed at 128 KiB: every large block of a model is mapped on
  its own and unmapped when a cleanup frees it; ``malloc_trim`` hands back the free pages
  left among the small ones (docs/ros.md, Lifecycle). While they run it is fixed at 4 MiB:
  at 128 KiB every buffer of an inference above it was mapped and faulted in at each use,
  and the embedded recognizer's decode took 1.9x as long on the AVX2 AMD kind (tiny.en, a
  2 s turn: 0.69 s against 0.37 s with glibc's own threshold; huge pages,
  ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, which the launch file sets through
  :func:`node_environment`, did not help there). At 4 MiB it takes 0.40 s (1, 8 and 32 MiB:
  the same alone; in the node 1 MiB left it ~10 % slower than 4 or 32 MiB), and 10
  lifecycle cycles with the recognizer grow RSS as much as before (+21 MB; 32 MiB: +56-59
  MB): a cleanup's ``malloc_trim`` hands back what the heap kept like any free page;
- :func:`freeze_heap` after start-up: collect once, then freeze what survived (torch,
  ONNX Runtime, the model, the message types) out of the collector's reach. A full
  collection then walks only what the running process allocates, instead of pausing every
  thread (the GIL) for tens of milliseconds over the whole start-up heap: those pauses were
  part of the tail of the end-to-end latency.

ONNX Runtime's thread counts are per session, not per process: they stay parameters of the
sessions (``threads`` of the emotion node, ``perception.vad.threads``).
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import gc
import logging
import os
import sys
import threading
from dataclasses import asdict, dataclass
from typing import Iterator, Optional

from erc_ros.paths import share_path

log = logging.getLogger("erc_ros.process")

_lock = threading.Lock()


@dataclass(frozen=True)
class ProcessSettings:
    torch_threads: Optional[int]  # None: torch not configured (the process runs none)
    torch_interop_threads: Optional[int]
    opencv_threads: int
    omp_wait_policy: str
    set_by: str

    def describe(self) -> str:
        torch = (f"torch {self.torch_threads} intra-op / {self.torch_interop_threads} inter-op "
                 "threads" if self.torch_threads else "torch not configured")
        return (f"process: {torch}, OpenCV {self.opencv_threads}, OMP_WAIT_POLICY "
                f"{self.omp_wait_policy or 'unset'}, Fast DDS profile "
                f"{os.environ.get('FASTDDS_DEFAULT_PROFILES_FILE') or 'none'} "
                f"(set by {self.set_by})")


_settings: Optional[ProcessSettings] = None


def fastdds_profile() -> Optional[str]:
    """erc_ros's Fast DDS profile, ``config/fastdds.xml`` (:func:`erc_ros.paths.share_path`)."""

    found = share_path("config", "fastdds.xml")
    return str(found) if found else None


def set_environment() -> None:
    """Environment that must be in place before torch (libgomp) loads and before the process
    joins DDS; idempotent. A value the user exported is kept.

    - ``OMP_WAIT_POLICY=PASSIVE`` (see the module docstring);
    - ``FASTDDS_DEFAULT_PROFILES_FILE``: erc_ros's Fast DDS profile (``config/fastdds.xml``:
      reliable writers announce what they sent every 50 ms instead of every 3 s, so a lost
      sample stalls its topic for ~50 ms instead of up to 3 s; readers free what they
      received instead of keeping buffers as large as the largest sample they ever got),
      with ``RMW_FASTRTPS_USE_QOS_FROM_XML=1``, without which rmw_fastrtps replaces the
      profile's memory policies with its own.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        profile = fastdds_profile()
        if profile:
            os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = profile
            os.environ.setdefault("RMW_FASTRTPS_USE_QOS_FROM_XML", "1")


#: glibc ``mallopt`` parameter number of ``M_MMAP_THRESHOLD`` (malloc.h).
_M_MMAP_THRESHOLD = -3
#: While models load, blocks at least this large are mapped on their own: glibc's initial
#: threshold, kept.
MMAP_THRESHOLD = 128 * 1024
#: While they run: inference buffers under it are reused from the heap instead of mapped
#: and faulted in at each use (the module docstring).
RUN_MMAP_THRESHOLD = 4 * 1024 * 1024
_allocator = ""  # what tune_allocator did; "" before it ran
_tuned = False  # whether tune_allocator fixed the threshold (loading_models moves it then)
_loading = 0  # loading_models blocks in progress


@functools.lru_cache(maxsize=1)
def _glibc() -> Optional[ctypes.CDLL]:
    """The C library when it is glibc (``mallopt``/``malloc_trim`` are glibc's), else None;
    looked up once."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # musl has no such symbol
        return libc
    except (OSError, AttributeError):
        return None


def tune_allocator() -> str:
    """Fix glibc's mmap threshold at :data:`MMAP_THRESHOLD` (see the module docstring), once:
    what it did, in words, the first time; ``""`` after. Left alone when the user set it
    (``MALLOC_MMAP_THRESHOLD_``, or ``mmap_threshold`` in ``GLIBC_TUNABLES``) or the C
    library is not glibc."""
    global _allocator, _tuned
    with _lock:
        if _allocator:
            return ""
        libc = _glibc()
        huge = HUGETLB_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
        if "MALLOC_MMAP_THRESHOLD_" in os.environ or \
                "mmap_threshold" in os.environ.get("GLIBC_TUNABLES", ""):
            _allocator = "malloc mmap threshold set by the environment"
        elif libc is None:
            _allocator = "allocator not tuned (not glibc)"
        elif libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1:
            _tuned = True
            _allocator = (f"malloc mmap threshold fixed at {MMAP_THRESHOLD >> 10} KiB while "
                          f"models load, {RUN_MMAP_THRESHOLD >> 20} MiB while they run ("
                          + ("huge pages for mapped blocks)" if huge else
                             "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 would back mapped blocks "
                             "with huge pages)"))
        else:
            _allocator = "malloc mmap threshold not set (mallopt refused)"
        return _allocator


@contextlib.contextmanager
def loading_models() -> Iterator[None]:
    """Around a configure's model loading: the mmap threshold at :data:`MMAP_THRESHOLD`
    inside (each block of a model mapped on its own), at :data:`RUN_MMAP_THRESHOLD` once no
    configure of this process is loading any more (see the module docstring). Changes
    nothing unless :func:`tune_allocator` fixed the threshold."""
    global _loading
    libc = _glibc()
    with _lock:
        _loading += 1
        if _tuned and libc is not None:
            libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    try:
        yield
    finally:
        with _lock:
            _loading -= 1
            if _tuned and libc is not None and _loading == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, RUN_MMAP_THRESHOLD)


#: glibc tunable that backs the blocks glibc maps with transparent huge pages (THP
#: ``madvise`` or ``always``): on the Xeon kind, with the threshold at 128 KiB while
#: inference ran, it made up the ~30 % Whisper base lost. Read by glibc at process start
#: only, so the launch file puts it in each node's environment (:func:`node_environment`).
HUGETLB_TUNABLE = "glibc.malloc.hugetlb=1"


def node_environment(environ: Optional[dict] = None) -> dict[str, str]:
    """Environment variables a node process should start with (``additional_env`` of the
    launch file's nodes, the child of ``lifecycle-memory``): ``GLIBC_TUNABLES`` with
    :data:`HUGETLB_TUNABLE` added to what ``environ`` (default: this process's) already sets;
    empty when it is there, or when the user chose the allocator's hugetlb or mmap threshold
    themselves."""
    environ = os.environ if environ is None else environ
    tunables = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in tunables or "MALLOC_MMAP_THRESHOLD_" in environ:
        return {}
    return {"GLIBC_TUNABLES": ":".join(t for t in (tunables, HUGETLB_TUNABLE) if t)}


def release_memory() -> None:
    """After a lifecycle cleanup: ``malloc_trim(0)``, which hands the free pages of every
    glibc arena back to the system (what the freed models and buffers left among the blocks
    still in use); a few milliseconds. Nothing where the C library is not glibc."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def configure(torch_threads: Optional[int] = 1, opencv_threads: int = 1,
              torch_interop_threads: int = 1, by: str = "") -> ProcessSettings:
    """Set the process-wide thread counts, once. The first call sets them and logs what it
    set; a later call asking for other values changes nothing and says so (a process has
    one torch pool: the entry point decides it). Returns the settings in effect.

    ``torch_threads=None``: a process that does not run torch (it is not imported for it;
    torch keeps its own defaults should something load it later)."""
    global _settings
    by = by or os.path.basename(sys.argv[0] or "python")
    with _lock:
        if _settings is not None:
            asked = (torch_threads, opencv_threads, torch_interop_threads)
            have = (_settings.torch_threads, _settings.opencv_threads,
                    _settings.torch_interop_threads)
            if asked != have:
                log.info("%s asked for torch %s / OpenCV %s threads; the process keeps %s",
                         by, torch_threads, opencv_threads, _settings.describe())
            return _settings
        set_environment()
        if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY") != "PASSIVE":
            log.warning("torch was imported before OMP_WAIT_POLICY=PASSIVE was set: its "
                        "threads busy-wait (call erc_ros.process.set_environment first)")
        if torch_threads is None:  # (not 0: a node asking for none is not told "stay 0")
            torch_interop_threads = None
        else:
            import torch

            torch.set_num_threads(max(1, int(torch_threads)))
            try:
                torch.set_num_interop_threads(max(1, int(torch_interop_threads)))
            except RuntimeError:  # settable only before the first inter-op work: torch's
                torch_interop_threads = torch.get_num_interop_threads()
            torch_threads, torch_interop_threads = (torch.get_num_threads(),
                                                    int(torch_interop_threads))
        try:
            import cv2

            cv2.setNumThreads(max(0, int(opencv_threads)))
        except ImportError:
            opencv_threads = 0
        _settings = ProcessSettings(torch_threads, torch_interop_threads,
                                    int(opencv_threads), os.environ.get("OMP_WAIT_POLICY", ""),
                                    by)
        log.info(_settings.describe())
        return _settings


def settings() -> Optional[ProcessSettings]:
    """The settings :func:`configure` made (``None`` before it ran)."""
    return _settings


def as_dict() -> dict:
    return asdict(_settings) if _settings is not None else {}


def freeze_heap() -> None:
    """After start-up (see the module docstring): one full collection, then ``gc.freeze``."""

    gc.collect()
    gc.freeze()
