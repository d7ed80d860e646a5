"""Densification that makes the same decision on every rank.

Each rank accumulates gsplat's statistics (`grad2d`, `count`, `radii`) over its own cameras only.
Just before a refine decision they are reduced across ranks, so the decision is the one a single
process would take having rendered every rank's cameras; the split's random samples come from a
generator seeded identically on every rank. With identical inputs, gsplat's duplicate / split /
prune / reset ops then leave parameters and Adam moments bitwise identical everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

import torch
from gsplat.strategy import DefaultStrategy

from splatfacto_dist import comm


@dataclass
class SynchronizedDefaultStrategy(DefaultStrategy):
    """gsplat's `DefaultStrategy` with cross-rank statistics and a shared random stream."""

    seed: int = 0

    @torch.no_grad()
    def _grow_gs(
        self,
        params: Union[Dict[str, torch.nn.Parameter], torch.nn.ParameterDict],
        optimizers: Dict[str, torch.optim.Optimizer],
        state: Dict[str, Any],
        step: int,
    ) -> Tuple[int, int]:
        comm.reduce_densification_stats(state)
        with comm.shared_rng(self.seed, step, state["grad2d"].device):
            return super()._grow_gs(params, optimizers, state, step)
