"""Viewer renders of a sharded model: every rank takes part in each, so rank 0's viewer thread
queues them and the training threads serve them together at their next agreement."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, List, Optional, Tuple


class ViewerQueue:
    """Rank 0's waiting viewer renders, served on the training thread (`serve`)."""

    def __init__(self) -> None:
        self._requests: List[Tuple[Callable[[], Any], Future, float]] = []
        self._lock = threading.Lock()
        self._closed: Optional[str] = None  # why renders can no longer be served

    def submit(self, render: Callable[[], Any], train_lock: Optional[Any]) -> Any:
        """From the viewer thread: queue `render` and wait for its result.

        The viewer holds the trainer's lock while it renders; it is let go while waiting, so the
        training thread can reach its next rank agreement (where every rank serves the request).
        Once the ranks have stopped serving (`close`), a render fails at once instead of waiting
        forever.
        """
        future: Future = Future()
        with self._lock:
            if self._closed is not None:
                raise RuntimeError(self._closed)
            self._requests.append((render, future, time.perf_counter()))
        held = train_lock is not None and train_lock.locked()
        if held:
            train_lock.release()
        try:
            return future.result()
        finally:
            if held:
                train_lock.acquire()

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
