"""Where a training step's time goes, per phase, measured on a sample of steps."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator

import torch


class PhaseTimer:
    """Wall time per named phase of the training step, on every `every`-th step only.

    Timing GPU work honestly needs a device synchronize at each phase boundary, which stalls the
    host's queueing of work; doing it on one step in `every` keeps the cost negligible, so the
    benchmark can report a breakdown of the same runs it times. "other" is the rest of the step
    (callbacks, Python, logging) and "step" the whole step.
    """

    def __init__(self) -> None:
        self.every = 0
        self.totals: Dict[str, float] = defaultdict(float)
        self.sampled = 0
        self._active = False
        self._step_start = 0.0

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def begin_step(self, step: int) -> None:
        self._active = self.enabled and step % self.every == 0
        if self._active:
            _sync()
            self._step_start = time.perf_counter()

    def end_step(self) -> None:
        if not self._active:
            return
        _sync()
        step = time.perf_counter() - self._step_start
        phases = sum(v for k, v in self.totals.items() if k not in ("step", "other"))
        self.totals["step"] += step
        self.sampled += 1
        self.totals["other"] = self.totals["step"] - phases
        self._active = False

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self._active:
            yield
            return
        _sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.totals[name] += time.perf_counter() - start

    def per_step_ms(self) -> Dict[str, float]:
        return {name: 1000 * total / max(self.sampled, 1) for name, total in self.totals.items()}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


PHASES = PhaseTimer()
