"""A bounded work queue drained by one worker thread (callbacks only enqueue).

Dropped items (queue full) are counted in :class:`NodeHealth` under ``dropped.<name>``; the
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
                 period: float = 0.02, on_error: Optional[Callable[[BaseException], None]] = None):
        self.name, self.capacity = name, int(capacity)
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
        with self._cv:
            if len(self._q) >= self.capacity:
                self._health.count(f"dropped.{self.name}")
                return False
            self._q.append(item)
            self._cv.notify()
        return True

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
                items = list(self._q)
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
                with self._cv:
                    self._busy = False
