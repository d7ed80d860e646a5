"""Where a rank's time and GPU memory go: per phase of sampled training steps, and per stage of its
start-up."""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from typing import Dict, Iterator, List, Tuple

import torch


class PhaseTimer:
    """Wall time per named phase of the training step, on every `every`-th step only.

    Timing GPU work honestly needs a device synchronize at each phase boundary, which stalls the
    host's queueing of work; doing it on one step in `every` keeps the cost negligible, so the
    benchmark can report a breakdown of the same runs it times. "other" is the rest of the step
    (callbacks, Python, logging) and "step" the whole step.
    """

    def __init__(self, every: int = 0) -> None:
        self.every = every
        self.totals: Dict[str, float] = defaultdict(float)
        self.sampled = 0
        self._active = False
        self._started = False
        self._step_start = 0.0
        self.parts: Dict[str, float] = defaultdict(float)  # measured inside a phase by other means
        self.memory = PhaseMemory()

    def reset(self, every: int) -> None:
        """Start over for a new run, sampling one step in `every` (0: none)."""
        self.__init__(every)  # type: ignore[misc]

    @property
    def enabled(self) -> bool:
        return self.every > 0

    def begin_step(self, step: int) -> None:
        """Start timing `step` if it is sampled. A run's first step never is: it pays one-time costs
        (lazy loading of CUDA kernels, first allocations, cuDNN autotuning) that would dominate
        the means of phases as short as densification's."""
        self._active = self.enabled and self._started and step % self.every == 0
        self._started = True
        if self._active:
            _sync()
            self.memory.restart()
            self._step_start = time.perf_counter()

    def end_step(self) -> None:
        if not self._active:
            return
        _sync()
        self.memory.between()
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
        self.memory.between()
        start = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.totals[name] += time.perf_counter() - start
            self.memory.close(name)

    def note(self, name: str, seconds: float) -> None:
        """Add `seconds` of a part of a phase that the phase's own clock cannot see (the wait of pixel
        ranges for the slowest rank: `pixels.balance`), on sampled steps; not subtracted from "other"."""
        if self._active:
            self.parts[name] += seconds

    def per_step_ms(self) -> Dict[str, float]:
        totals = {**self.totals, **self.parts}
        return {name: 1000 * total / max(self.sampled, 1) for name, total in totals.items()}


class PhaseMemory:
    """Per phase of the sampled steps, the GPU memory allocated when it began (what persists into
    it: owned parameters, optimizer moments, gradients) and the most allocated within it, so a
    benchmark can say where a rank's peak bytes go. A phase's own peak needs the allocator's peak
    counter reset at its start; the peak before each reset is kept, so `peak_bytes` is still the
    whole run's. Time between phases counts as "other". Nothing is recorded on CPU."""

    def __init__(self) -> None:
        self.phases: Dict[str, Dict[str, float]] = {}
        self._earlier_peak = 0
        self._start = 0

    def restart(self) -> None:
        """A sampled step begins: count afresh (the steps since the last sampled one are no phase)."""
        if _cuda_in_use():
            self._earlier_peak = self.peak_bytes()
            torch.cuda.reset_peak_memory_stats()
            self._start = torch.cuda.memory_allocated()

    def between(self) -> None:
        """A phase (or the step) begins: what happened since the last boundary was "other"."""
        self.close("other")

    def close(self, name: str) -> None:
        """Phase `name` has just ended (the device synchronized): keep its highest peak with the
        allocation it started from, and count afresh."""
        if not _cuda_in_use():
            return
        peak = torch.cuda.max_memory_allocated()
        entry = self.phases.setdefault(name, {"start_mb": 0.0, "peak_mb": 0.0})
        if peak / 2**20 > entry["peak_mb"]:  # the start that goes with the phase's highest peak
            entry.update(start_mb=self._start / 2**20, peak_mb=peak / 2**20)
        self.restart()

    def peak_bytes(self) -> int:
        """The most this process allocated on its GPU since it started, across the resets."""
        return max(self._earlier_peak, torch.cuda.max_memory_allocated())


def _cuda_in_use() -> bool:
    """Whether this process has a GPU to time and measure (never initialising CUDA to find out)."""
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def _sync() -> None:
    if _cuda_in_use():
        torch.cuda.synchronize()


PHASES = PhaseTimer()


class DeviceTimer:
    """One stretch of a rank's work, timed without making the host wait: CUDA events on a GPU
    (read once they have completed), the host's clock on the CPU, where work is synchronous."""

    def __init__(self, device: torch.device) -> None:
        self._cuda = device.type == "cuda"
        if self._cuda:
            self._start, self._stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._began, self._seconds = time.perf_counter(), 0.0

    def stop(self) -> None:
        if self._cuda:
            self._stop.record()
        else:
            self._seconds = time.perf_counter() - self._began

    def done(self) -> bool:
        """Whether `microseconds` can answer without waiting for the GPU."""
        return not self._cuda or self._stop.query()

    def microseconds(self) -> int:
        if self._cuda:
            self._stop.synchronize()
            return int(1000 * self._start.elapsed_time(self._stop))
        return int(1e6 * self._seconds)


class StartupTimeline:
    """When this process finished each stage of its start-up, so a rank can say where the time from
    its creation to its first step went (the part of a short run that does not shrink with N)."""

    def __init__(self) -> None:
        self.marks: List[Tuple[str, float]] = []

    def mark(self, stage: str) -> None:
        """`stage` has just finished (wall clock)."""
        self.marks.append((stage, time.time()))

    def stages(self, since: float) -> Dict[str, float]:
        """Each stage's seconds since the previous mark (the first since `since`), in order."""
        out, last = {}, since
        for stage, at in self.marks:
            out[stage] = at - last
            last = at
        return out

    def breakdown(self, since: float) -> str:
        """ "stage seconds, ..." of `stages`."""
        return ", ".join(f"{stage} {seconds:.1f}" for stage, seconds in self.stages(since).items())


STARTUP = StartupTimeline()
