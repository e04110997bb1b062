"""A bounded work queue drained by one worker thread (callbacks only enqueue).

Bounded by a count (``capacity``) and, where ``max_bytes`` is set, by the bytes of what it
holds (``size_of`` each item), queued or being handled: one item over ``max_bytes`` still
goes in when nothing else is held, so the largest input accepted is never refused for its
size alone. Dropped items (queue full) are counted in :class:`NodeHealth` under
``dropped.<name>``; the
worker calls ``idle()`` every ``period`` seconds even when nothing arrives (the utterance
node polls the core there, so utterances complete on silence).
"""
from __future__ import annotations

import threading
from collections import deque
from typing import Any, Callable, Optional

from erc_ros.ros.diagnostics import NodeHealth


class Worker:
    def __init__(self, name: str, capacity: int, handle: Callable[[list], None],
                 health: NodeHealth, idle: Optional[Callable[[], None]] = None,
                 period: float = 0.02, on_error: Optional[Callable[[BaseException], None]] = None,
                 max_bytes: int = 0, size_of: Optional[Callable[[Any], int]] = None):
        self.name, self.capacity = name, int(capacity)
        self.max_bytes, self._size_of = int(max_bytes), size_of
        self._bytes = 0  # held: queued and being handled (with max_bytes)
        self._handle, self._idle, self._period = handle, idle, float(period)
        self._health = health
        self._on_error = on_error
        self._q: deque = deque()
        self._cv = threading.Condition()
        self._stop = False
        self._drain = False
        self._busy = False
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._stop = self._drain = False
        self._thread = threading.Thread(target=self._run, name=f"erc_{self.name}", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0, drain: bool = False) -> bool:
        """Stop the thread and join it for at most ``timeout`` s; ``drain``: after it has
        handled what is queued (a shutdown that must not lose taken input). Returns whether
        the thread has ended."""
        with self._cv:
            self._stop = True
            self._drain = drain
            self._cv.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
            return not thread.is_alive()
        return True

    def put(self, item: Any) -> bool:
        size = self._size_of(item) if self.max_bytes and self._size_of else 0
        with self._cv:
            if len(self._q) >= self.capacity or \
                    (size and self._bytes and self._bytes + size > self.max_bytes):
                self._health.count(f"dropped.{self.name}")
                return False
            self._q.append((item, size))
            self._bytes += size
            self._cv.notify()
        return True

    @property
    def held_bytes(self) -> int:
        """Bytes of the items queued or being handled (0 without ``max_bytes``)."""
        return self._bytes

    def wake(self) -> None:
        """Run ``idle()`` now instead of at the end of the period (e.g. a result is ready)."""
        with self._cv:
            self._cv.notify()

    def depth(self) -> int:
        return len(self._q)

    def idle_now(self) -> bool:
        with self._cv:
            return not self._q and not self._busy

    def _run(self) -> None:
        while True:
            with self._cv:
                if not self._q and not self._stop:
                    self._cv.wait(self._period)
                if self._stop and not (self._drain and self._q):
                    return
                items = [item for item, _ in self._q]
                taken = sum(size for _, size in self._q)
                self._q.clear()
                self._busy = True
            try:
                if items:
                    self._handle(items)
                if self._idle is not None:
                    self._idle()
            except Exception as err:  # keep the node up; report it
                self._health.count(f"errors.{self.name}")
                if self._on_error:
                    self._on_error(err)
            finally:
                del items
                with self._cv:
                    self._busy = False
                    self._bytes -= taken
