"""Viewer renders of a model whose every render needs every rank (the sharded layout).

nerfstudio's viewer renders on its own thread of rank 0, holding the trainer's lock. Such a render
cannot run there: every rank must take part, and collectives belong to the training threads. So
the viewer thread queues it (`ViewerRenders.submit`) and waits, letting the trainer's lock go
(`TrainLock`), and the training threads serve it together at their next agreement (control.py).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, List, Optional, Tuple

_held = threading.local()  # the TrainLocks the current thread holds


class TrainLock:
    """The trainer's lock (nerfstudio's viewer renders holding it), which knows which thread holds it,
    so a render waiting on the training threads can let it go without being handed it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        acquired = self._lock.acquire(blocking, timeout)
        if acquired:
            _held.locks = [*getattr(_held, "locks", []), self]
        return acquired

    def release(self) -> None:
        _held.locks = [lock for lock in getattr(_held, "locks", []) if lock is not self]
        self._lock.release()

    def locked(self) -> bool:
        return self._lock.locked()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()


def wait_unlocked(wait: Callable[[], Any]) -> Any:
    """`wait()` with every TrainLock this thread holds let go meanwhile (taken back after)."""
    held = list(getattr(_held, "locks", []))
    for lock in held:
        lock.release()
    try:
        return wait()
    finally:
        for lock in held:
            lock.acquire()


class ViewerRenders:
    """Rank 0's waiting viewer renders, served on the training threads (`serve`)."""

    def __init__(self) -> None:
        self._requests: List[Tuple[Callable[[], Any], Future, float]] = []
        self._lock = threading.Lock()
        self._closed: Optional[str] = None  # why renders can no longer be served

    def submit(self, render: Callable[[], Any]) -> Any:
        """From the viewer thread: queue `render` and wait for its result, the trainer's lock let go
        meanwhile. Once the ranks have stopped serving (`close`), a render fails at once instead of
        waiting forever."""
        future: Future = Future()
        with self._lock:
            if self._closed is not None:
                raise RuntimeError(self._closed)
            self._requests.append((render, future, time.perf_counter()))
        return wait_unlocked(future.result)

    def pending(self) -> int:
        with self._lock:
            return len(self._requests)

    def serve(self, count: int, is_main: bool, serve_empty: Callable[[], None]) -> float:
        """Every rank, on the training thread: serve rank 0's `count` oldest renders (the others take
        part through `serve_empty`). Returns, on rank 0, the longest a served render waited from its
        request to its result (ms)."""
        longest = 0.0
        for _ in range(count):
            if not is_main:
                serve_empty()
                continue
            with self._lock:
                render, future, requested = self._requests.pop(0)
            try:
                future.set_result(render())
            except Exception as err:  # noqa: BLE001 - the viewer thread re-raises it
                future.set_exception(err)
            longest = max(longest, 1000 * (time.perf_counter() - requested))
        return longest

    def close(self, why: str) -> None:
        """No more renders: fail the waiting ones and refuse new ones with `why`."""
        with self._lock:
            self._closed = why
            waiting, self._requests = self._requests, []
        for _, future, _ in waiting:
            future.set_exception(RuntimeError(why))
