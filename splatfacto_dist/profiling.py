"""Where a training step's time goes, per phase, when asked for (it costs device syncs)."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator

import torch


class PhaseTimer:
    """Wall time per named phase of the training step.

    Off by default: timing GPU work honestly needs a device synchronize at each phase boundary,
    which would itself slow training. The benchmark switches it on.
    """

    def __init__(self) -> None:
        self.enabled = False
        self.totals: Dict[str, float] = defaultdict(float)
        self.steps = 0

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
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
        return {name: 1000 * total / max(self.steps, 1) for name, total in self.totals.items()}


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


PHASES = PhaseTimer()
