"""Densification that makes the same decision on every rank.

Each rank accumulates gsplat's statistics (`grad2d`, `count`, `radii`) over its own cameras only.
Just before a refine decision they are reduced across ranks, so the decision is the one a single
process would take having rendered every rank's cameras; the split's random samples come from a
generator seeded identically on every rank. With identical inputs, gsplat's duplicate / split /
prune / reset ops then leave parameters and Adam moments bitwise identical everywhere.

The per-step statistics update is also rewritten without `torch.where(mask)`: gsplat's version
makes the host wait for the GPU on every step (a nonzero), which stops Python from queueing the
next step while the GPU works, and with N ranks turns every step into a wait for the slowest one.
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
    def _update_state(
        self,
        params: Union[Dict[str, torch.nn.Parameter], torch.nn.ParameterDict],
        state: Dict[str, Any],
        info: Dict[str, Any],
        packed: bool = False,
    ) -> None:
        """gsplat's statistics update for unpacked [C, N] results, as masked sums (no host sync).

        `info` may also be the list of every render of the step (a batch of mixed image sizes is
        rendered in groups). Gradients are rescaled by the number of views the loss averaged over
        (`views_in_loss`, default the render's own camera count) to give per-view gradients.
        """
        if isinstance(info, list):
            for part in info:
                self._update_state(params, state, part, packed=packed)
            return None
        if packed:
            return super()._update_state(params, state, info, packed=packed)
        means2d = info[self.key_for_gradient]
        views = info.get("views_in_loss", info["n_cameras"])
        grads = (means2d.absgrad if self.absgrad else means2d.grad).clone()
        grads[..., 0] *= info["width"] / 2.0 * views
        grads[..., 1] *= info["height"] / 2.0 * views
        visible = info["radii"] > 0  # [C, N]
        n = len(list(params.values())[0])
        for key in ("grad2d", "count") + (("radii",) if self.refine_scale2d_stop_iter > 0 else ()):
            if state[key] is None:
                state[key] = torch.zeros(n, device=grads.device)
        state["grad2d"] += torch.where(visible, grads.norm(dim=-1), 0.0).sum(dim=0)
        state["count"] += visible.sum(dim=0)
        if self.refine_scale2d_stop_iter > 0:
            radii = torch.where(visible, info["radii"] / float(max(info["width"], info["height"])), 0.0)
            state["radii"] = torch.maximum(state["radii"], radii.amax(dim=0))

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
