"""How ranks agree with rank 0, where the viewer lives, without ever waiting in a collective for long.

The viewer (rank 0 only) pauses and stops training, and in sharded mode asks for renders that
need every rank's Gaussians; a preemption signal may reach any rank. Ranks meet every `every`
steps in one tiny all-reduce of rank 0's state, its number of waiting viewer renders and whether
any rank was preempted; during a pause they keep meeting every 50 ms, so
no rank waits in a collective for longer than that (stock ranks would block in the next
all-reduce until NCCL's timeout), and a viewer render waits at most `every` steps.
"""

from __future__ import annotations

import time
from typing import Callable, Optional

import torch

from splatfacto_dist import comm
from splatfacto_dist.engine.viewer_renders import ViewerRenders

RUN, PAUSE, STOP, PREEMPT = 0, 1, 2, 3
_POLL_S = 0.05


class RankControl:
    """One training thread's side of the agreement (see the module docstring)."""

    def __init__(
        self, every: int, device: torch.device, on_served: Optional[Callable[[int, float], None]] = None
    ) -> None:
        self.every = max(every, 1)
        self.device = device
        self.on_served = on_served  # (step, ms the longest-waiting served viewer render waited)

    def agree_to_continue(
        self, step: int, local_state: Callable[[], int], renders: ViewerRenders, serve_empty: Callable[[], None]
    ) -> int:
        """The state every rank goes on with: RUN, STOP once rank 0 says stop, PREEMPT once any rank
        was signalled (launching/signals.py). `local_state()` is this rank's RUN/PAUSE/STOP/PREEMPT;
        viewer renders waiting on rank 0 are served by every rank before this returns or while paused."""
        if not comm.is_distributed():
            while local_state() == PAUSE:
                time.sleep(0.01)
            return local_state()
        if step % self.every:
            return RUN
        while True:
            state = self._meet(step, local_state, renders, serve_empty)
            if state != PAUSE:
                return state
            time.sleep(_POLL_S)

    def serve_until_stopped(
        self, local_state: Callable[[], int], renders: ViewerRenders, serve_empty: Callable[[], None]
    ) -> None:
        """After training, with the viewer kept open and the model sharded: meet every 50 ms and
        serve rank 0's viewer renders until rank 0 says stop (or the job is stopped: ctrl+c, or
        a rank's failure, which the launcher turns into the end of the job)."""
        while self._meet(None, local_state, renders, serve_empty) not in (STOP, PREEMPT):
            time.sleep(_POLL_S)

    def _meet(
        self,
        step: Optional[int],
        local_state: Callable[[], int],
        renders: ViewerRenders,
        serve_empty: Callable[[], None],
    ) -> int:
        """One agreement, one small all-reduce: rank 0's state and its waiting viewer renders (the other
        ranks add zeros), which every rank then serves, and whether any rank was preempted."""
        local, main = local_state(), comm.is_main()
        mine = [local if main and local != PREEMPT else 0, renders.pending() if main else 0, int(local == PREEMPT)]
        state, waiting, preempted = comm.all_reduce_ints(mine, device=self.device)
        if waiting:
            waited_ms = renders.serve(waiting, comm.is_main(), serve_empty)
            if self.on_served is not None and comm.is_main() and step is not None:
                self.on_served(step, waited_ms)
        return PREEMPT if preempted else state
