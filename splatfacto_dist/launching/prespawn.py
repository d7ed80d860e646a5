"""Rank processes started before the command line is parsed, so their imports overlap the parent's.

A spawned CUDA rank spends most of its start-up importing torch and nerfstudio, and the parent
spends as long again importing nerfstudio to parse ns-train's command line. One after the other,
the two add up; here the ranks start first and wait for the parsed config. This module
imports only the standard library: the parent must reach `Prespawned(...)` in well under a second.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from multiprocessing.connection import Connection, wait
from typing import Any, List

from splatfacto_dist.launching.signals import PREEMPTED_EXIT, forwarded_to
from splatfacto_dist.reporting.records import first_failure

_GRACE_S = 5.0


def _worker(local_rank: int, conn: Connection) -> None:
    """Import what every rank needs, then run the rank the parent describes (or exit on None)."""
    import importlib

    from splatfacto_dist.launching import rank

    importlib.import_module("splatfacto_dist.method")  # the config classes the parent will send
    from splatfacto_dist.reporting.profiling import STARTUP

    STARTUP.mark("imports")
    message = conn.recv()
    conn.close()
    if message is None:
        return
    config, job = message
    rank.run_rank(local_rank, config, job)


class RankFailed(SystemExit):
    """A rank exited non-zero; the others were stopped. Carries the one line to show."""

    def __init__(self, message: str) -> None:
        super().__init__(1)
        self.message = message


class Prespawned:
    """`count` spawned rank processes, idle until `run` hands them a config or `dismiss` sends them off."""

    def __init__(self, count: int) -> None:
        ctx = mp.get_context("spawn")
        self._started = False
        self._conns: List[Connection] = []
        self._procs: List[Any] = []
        for local_rank in range(count):
            ours, theirs = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(local_rank, theirs), name=f"rank-{local_rank}")
            proc.start()
            theirs.close()
            self._conns.append(ours)
            self._procs.append(proc)

    def __len__(self) -> int:
        return len(self._procs)

    def dismiss(self) -> None:
        """Tell every idle rank to exit (the parsed job did not match the guess, or failed a check)."""
        if self._started:
            return
        self._started = True
        for conn in self._conns:
            try:
                conn.send(None)
            except OSError:
                pass
        self._stop(self._procs, grace_s=_GRACE_S)

    def run(self, config: Any, job: Any) -> None:
        """Start training on every rank and wait, passing preemption signals on; if one fails, stop the
        rest and raise `RankFailed`; if they were preempted (and saved), exit with PREEMPTED_EXIT."""
        self._started = True
        for conn in self._conns:
            conn.send((config, job))
            conn.close()
        alive = list(self._procs)
        with forwarded_to([p.pid for p in self._procs]):
            while alive:
                wait([p.sentinel for p in alive])
                ended = [p for p in alive if not p.is_alive()]
                for proc in ended:
                    alive.remove(proc)
                if any(p.exitcode not in (0, PREEMPTED_EXIT) for p in ended):
                    self._stop(alive, grace_s=_GRACE_S)  # peers of a failed rank fail on their own, mostly
                    failed = ", ".join(
                        f"{i} ({_how(p.exitcode)})"
                        for i, p in enumerate(self._procs)
                        if p.exitcode not in (0, PREEMPTED_EXIT)
                    )
                    first = first_failure(config.get_base_dir()) or "a rank failed"  # not a peer's lost connection
                    raise RankFailed(f"{first}; local ranks that ended in error: {failed}, the others were stopped")
        if any(p.exitcode == PREEMPTED_EXIT for p in self._procs):
            raise SystemExit(PREEMPTED_EXIT)  # the ranks saved and said so

    @staticmethod
    def _stop(procs: List[Any], grace_s: float) -> None:
        """Give `procs` `grace_s` to end by themselves (and say why, if they failed), then end them."""
        deadline = time.monotonic() + grace_s
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join(timeout=5)
            if proc.is_alive():
                proc.kill()
                proc.join()


def _how(exitcode: int) -> str:
    return f"signal {-exitcode}" if exitcode < 0 else f"exit code {exitcode}"
