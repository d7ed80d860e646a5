"""Preemption: a SIGTERM or SIGUSR1 ends training with a checkpoint of the last finished step.

SLURM sends SIGTERM at preemption and at the time limit (`sbatch --signal=USR1@120` sends SIGUSR1
ahead of it), to every task; torchrun forwards SIGTERM to its workers; our launcher forwards what
it receives to its ranks (`forwarded_to`). A rank only notes the signal (`Preemption`): a handler
runs on the main thread between two bytecodes, mid-step, mid-collective. The ranks act on it at
their next agreement (engine/control.py: any rank's note counts), where every rank has finished
the same steps: they save together, and every process exits with `PREEMPTED_EXIT`, which a
requeue script tells apart from success (0) and failure. A second signal only notes again, so it
cannot interrupt a save (which is atomic anyway). Standard library only: the launcher imports it
before anything heavy.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT = 75
"""Exit code of a preempted job whose checkpoint was saved (BSD's EX_TEMPFAIL: try again)."""


class Preemption:
    """A process's note of a preemption signal; handlers installed by `watch` on the main thread."""

    def __init__(self) -> None:
        self.signal: Optional[int] = None

    def watch(self) -> None:
        """Note PREEMPT_SIGNALS from now on (Python runs handlers on the main thread only)."""
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPT_SIGNALS:
                signal.signal(signum, self._note)

    def unwatch(self) -> None:
        """Let PREEMPT_SIGNALS end the process again (training is over: nothing to save at an agreement)."""
        if threading.current_thread() is threading.main_thread():
            for signum in PREEMPT_SIGNALS:
                signal.signal(signum, signal.SIG_DFL)

    def _note(self, signum: int, frame: Any) -> None:
        if self.signal is None:
            self.signal = signum

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal is not None else "none"


PREEMPTION = Preemption()
"""This process's note: a rank watches from its first moment (`launching.rank`, `prespawn`), before its
trainer exists, so that a signal during start-up is acted on at the first agreement, not fatal."""


@contextmanager
def forwarded_to(pids: Sequence[int]) -> Iterator[None]:
    """Pass PREEMPT_SIGNALS this process receives on to `pids` (its ranks), instead of dying of them
    (which would end the ranks through their parent-death signal, unsaved)."""

    def forward(signum: int, frame: Any) -> None:
        for pid in pids:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, forward) for signum in PREEMPT_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
