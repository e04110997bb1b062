"""What a lifecycle cleanup frees goes back to the system (docs/ros.md, Lifecycle):

- a perception core its owner dropped is freed at once, by reference counting: its parts call
  it back without keeping it alive (a cycle kept every cleaned-up core, ~50 MB of models and
  sessions, until a full garbage collection);
- glibc's mmap threshold stays at 128 KiB while models load
  (:func:`erc_ros.process.tune_allocator`, :func:`erc_ros.process.loading_models`): a large
  block is mapped on its own even after a larger one was freed (glibc's own threshold would
  have grown past it), so a model a cleanup frees is unmapped instead of staying in the heap
  arena of the thread that loaded it; while they run it is 4 MiB, so that inference
  buffers are reused from the heap instead of mapped and faulted in at each use;
- :func:`erc_ros.process.release_memory` hands freed heap pages back.

The allocator checks run in a fresh interpreter each (the test process's heap is not theirs
to change).
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import pytest

from erc_ros.core.perception import PerceptionConfig, PerceptionCore

glibc = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")


def test_a_dropped_core_is_freed_without_the_collector():
    core = PerceptionCore(PerceptionConfig.from_dict({"diarization.enabled": False,
                                                      "faces.enabled": False}))
    core.close()
    gone = weakref.ref(core)
    gc.disable()  # what a long-running process sees between its rare full collections
    try:
        del core
        assert gone() is None, [type(r).__name__ for r in gc.get_referrers(gone())]
    finally:
        gc.enable()


_LIBC = """
import ctypes, sys
from erc_ros import process
if sys.argv[1] != "default":
    process.tune_allocator()
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
"""

# glibc's default: freeing a mapped 8 MiB block raises the threshold to 8 MiB, so the heap
# grows for the 1 MiB block after it (0 new mappings: what a configure met after the first
# inference); fixed, it is mapped (1).
_THRESHOLD = _LIBC + """
libc.free(libc.malloc(8 << 20))
n = libc.mallinfo2().hblks
p = libc.malloc(1 << 20)
print(libc.mallinfo2().hblks - n)
"""


# Within loading_models a 512 KiB block is mapped (1), after it it comes from the heap (0)
# and an 8 MiB one is still mapped (1); nested, the threshold moves back only when the outer
# block ends.
_LOADING = _LIBC + """
def mapped(size):
    n = libc.mallinfo2().hblks
    libc.malloc(size)
    return libc.mallinfo2().hblks - n
with process.loading_models():
    with process.loading_models():
        pass
    inside = mapped(512 << 10)
print(inside, mapped(512 << 10), mapped(8 << 20))
"""

# 200 MB of 4 KiB blocks, all freed but the last (which keeps the heap's top from being
# trimmed by free itself): RSS before and after release_memory, in MB.
_RELEASE = _LIBC + """
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) / 1024
blocks = [libc.malloc(4096) for _ in range(50000)]
for b in blocks:
    ctypes.memset(b, 1, 4096)
for b in blocks[:-1]:
    libc.free(b)
before = rss()
process.release_memory()
print(before, rss())
"""


def _probe(script: str, mode: str, stream: str = "stdout") -> str:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"}
    r = subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    return getattr(r, stream).strip()


@glibc
def test_the_mmap_threshold_stays_fixed():
    assert _probe(_THRESHOLD, "default") == "0"
    assert _probe(_THRESHOLD, "tuned") == "1"
    assert "128 KiB" in _probe("from erc_ros import process; print(process.tune_allocator())",
                               "tuned")


@glibc
def test_models_load_under_the_low_threshold_and_run_under_the_high_one():
    assert _probe(_LOADING, "tuned") == "1 0 1"
    # Not tuned: loading_models leaves glibc's own threshold alone (128 KiB at start).
    assert _probe(_LOADING, "default") == "1 1 1"


@glibc
def test_release_memory_hands_freed_heap_pages_back():
    before, after = map(float, _probe(_RELEASE, "tuned").split())
    assert before - after > 150, (before, after)  # 200 MB were freed
