"""Densification that takes the same decisions for a Gaussian wherever it is stored.

gsplat's refine schedule (`step_post_backward`), with the Gaussian layout passed into each call:
statistics (`grad2d`, `count`, `radii`) are computed per rendered Gaussian and handed to the
layout, which returns them to their owners (sharded) or keeps them (replicated, where they are
all-reduced just before a refine). Either way the decision for a Gaussian is the one a single
process would take having rendered every camera of the interval. Random draws are keyed by the
Gaussians' ids (ops.py), and refine counts go to the layout, which keeps the total and rebalances
shards.

The per-step statistics update is also rewritten without `torch.where(mask)`: gsplat's version
makes the host wait for the GPU on every step (a nonzero), which stops Python from queueing the
next step while the GPU works, and with N ranks turns every step into a wait for the slowest one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Tuple, Union

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import reset_opa

from splatfacto_dist.densify import ops
from splatfacto_dist.layouts.contract import GaussianLayout

Params = Union[Dict[str, torch.nn.Parameter], torch.nn.ParameterDict]


@dataclass
class SynchronizedDefaultStrategy(DefaultStrategy):
    """gsplat's `DefaultStrategy` with layout-aware statistics and id-keyed random draws."""

    seed: int = 0
    report_refines: bool = False
    """Print each refine's counts of the whole model (gsplat's `verbose` counts this rank's shard)."""

    def step_pre_backward(self, params, optimizers, state, step: int, info: Dict[str, Any]) -> None:
        """gsplat's (keep the 2D means' gradient), but for a render by pixel ranges, whose backward
        adds the statistics to the buffers it was given (`statistics_buffers`)."""
        if "ranges_job" not in info:
            super().step_pre_backward(params, optimizers, state, step, info)

    def statistics_buffers(self, params: Params, state: Dict[str, Any]) -> Dict[str, torch.Tensor]:
        """The statistics this strategy keeps (grad2d, count, and radii while screen-size splits
        last), made where missing; the Gaussian ids moved to the parameters' device."""
        n, device = len(params["means"]), params["means"].device
        ids = state.get("ids")  # the model's (made on the CPU with it); split and duplicate need them
        if ids is not None and ids.device != device:
            state["ids"] = ids.to(device)
        keys = ("grad2d", "count") + (("radii",) if self.refine_scale2d_stop_iter > 0 else ())
        for key in keys:
            if state[key] is None:
                state[key] = torch.zeros(n, device=device)
        return {key: state[key] for key in keys}

    def step_post_backward(  # type: ignore[override]
        self,
        params: Params,
        optimizers: Dict[str, torch.optim.Optimizer],
        state: Dict[str, Any],
        step: int,
        info: List[Dict[str, Any]],
        layout: GaussianLayout,
        packed: bool = False,
    ) -> None:
        """gsplat's schedule: add the step's statistics (`info`: every render of the step); on a
        refine step, meet them across ranks, grow, prune, let the layout count (and rebalance) and
        clear them; on a reset step, reset opacities."""
        assert not packed, "splatfacto-dist's renders give [C, N] or [P] pair statistics, not gsplat's packed ones"
        if step >= self.refine_stop_iter:
            return
        for part in info:
            self._add_statistics(params, state, part, layout)
        if (
            step > self.refine_start_iter
            and step % self.refine_every == 0
            and step % self.reset_every >= self.pause_refine_after_reset
        ):
            layout.reduce_stats(state)
            n_dupli, n_split = self._grow_gs(params, optimizers, state, step)
            n_prune = self._prune_gs(params, optimizers, state, step)
            dupli, split, pruned = layout.after_refine(params, optimizers, state, (n_dupli, n_split, n_prune))
            if self.report_refines:
                print(
                    f"Step {step}: {dupli} GSs duplicated, {split} GSs split. Now having {layout.total + pruned} GSs."
                )
                print(f"Step {step}: {pruned} GSs pruned. Now having {layout.total} GSs.")
            state["grad2d"].zero_()
            state["count"].zero_()
            if self.refine_scale2d_stop_iter > 0:
                state["radii"].zero_()
            torch.cuda.empty_cache()
        if step % self.reset_every == 0:
            reset_opa(params=params, optimizers=optimizers, state=state, value=self.prune_opa * 2.0)

    @torch.no_grad()
    def _add_statistics(
        self, params: Params, state: Dict[str, Any], info: Dict[str, Any], layout: GaussianLayout
    ) -> None:
        """gsplat's statistics update for unpacked [C, M] results, as masked sums (no host sync).

        Gradients are rescaled by the number of views the loss averaged over (`views_in_loss`,
        default the render's own camera count) to give per-view gradients.
        """
        n = len(params["means"])
        self.statistics_buffers(params, state)
        track_radii = self.refine_scale2d_stop_iter > 0
        if "ranges_job" in info:  # its backward added the owners' statistics to these buffers already
            return
        means2d = info[self.key_for_gradient]
        views = info.get("views_in_loss", info["n_cameras"])
        radii = info["radii"] if info["radii"].dim() == 2 else info["radii"][None]  # [C, M]; [1, M] for M pairs
        grads = (means2d.absgrad if self.absgrad else means2d.grad).reshape(*radii.shape, 2)
        norms = ops.image_gradient_norms(grads, info["width"], info["height"], views)
        visible = radii > 0
        rows = torch.stack([torch.where(visible, norms, 0.0).sum(dim=0), visible.sum(dim=0).float()], 1)
        maxima = None
        if track_radii:
            radii = torch.where(visible, ops.screen_radii(radii, info["width"], info["height"]), 0.0)
            maxima = radii.amax(dim=0)
        sums, maxima = layout.stats_to_owners(rows, maxima, n, info)
        state["grad2d"] += sums[:, 0]
        state["count"] += sums[:, 1]
        if track_radii:
            state["radii"] = torch.maximum(state["radii"], maxima)

    @torch.no_grad()
    def _prune_gs(
        self, params: Params, optimizers: Dict[str, torch.optim.Optimizer], state: Dict[str, Any], step: int
    ) -> int:
        """gsplat's pruning (same criteria), by `ops.remove`, which reaches groups in host memory."""
        is_prune = torch.sigmoid(params["opacities"].flatten()) < self.prune_opa
        if step > self.reset_every:
            is_prune |= torch.exp(params["scales"]).max(dim=-1).values > self.prune_scale3d * state["scene_scale"]
            if step < self.refine_scale2d_stop_iter:
                is_prune |= state["radii"] > self.prune_scale2d
        n_prune = int(is_prune.sum().item())
        if n_prune > 0:
            ops.remove(params, optimizers, state, is_prune)
        return n_prune

    @torch.no_grad()
    def _grow_gs(
        self,
        params: Params,
        optimizers: Dict[str, torch.optim.Optimizer],
        state: Dict[str, Any],
        step: int,
    ) -> Tuple[int, int]:
        """gsplat's growth (same criteria, duplicates first, then splits), with id-keyed ops."""
        grads = state["grad2d"] / state["count"].clamp_min(1)
        is_grad_high = grads > self.grow_grad2d
        is_small = torch.exp(params["scales"]).max(dim=-1).values <= self.grow_scale3d * state["scene_scale"]
        is_dupli = is_grad_high & is_small
        is_split = is_grad_high & ~is_small
        if step < self.refine_scale2d_stop_iter:
            is_split |= state["radii"] > self.grow_scale2d
        n_dupli, n_split = int(is_dupli.sum().item()), int(is_split.sum().item())
        if n_dupli > 0:
            ops.duplicate(params, optimizers, state, is_dupli, step)
        is_split = torch.cat([is_split, torch.zeros(n_dupli, dtype=torch.bool, device=is_split.device)])
        if n_split > 0:
            ops.split(params, optimizers, state, is_split, self.seed, step, self.revised_opacity)
        return n_dupli, n_split
