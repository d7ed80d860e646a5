"""The optimizer step of a training step: nerfstudio's `optimizer_scaler_step_some`, with the two
decisions that need every gradient of a group taken over the whole model.

- Gradient clipping (`max_norm`) scales a group by its global norm. Stock clips the Parameters the
  optimizers were built with (`Optimizers.parameters`), which densification replaces, so for the
  Gaussians it stops having any effect after the first refine; here it clips the live ones.
- The GradScaler skips an optimizer whose gradients hold an inf or NaN. A Gaussian shard sees only
  its own gradients, so ranks could disagree on skipping a step (then their loss scales and
  schedules drift apart): the skip is decided on the whole group's norm, which is non-finite
  exactly when some shard's gradients are.

Replicated, every rank already holds the averaged gradients, and the layout's norms are local.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
from nerfstudio.engine.optimizers import Optimizers
from torch.amp import GradScaler


def live_parameters(optimizers: Optimizers, name: str) -> List[torch.nn.Parameter]:
    """The parameters optimizer `name` steps now (densification replaces the Gaussians' Parameters;
    the optimizer's own lists are the ones gsplat keeps current)."""
    return [p for group in optimizers.optimizers[name].param_groups for p in group["params"]]


def step_optimizers(optimizers: Optimizers, scaler: GradScaler, names: List[str], layout) -> None:
    """Unscale, clip and step the optimizers `names` (see the module docstring); every rank calls it
    with the same `names`."""
    clip = {name: optimizers.config[name]["optimizer"].max_norm for name in names}
    clip = {name: max_norm for name, max_norm in clip.items() if max_norm is not None}
    agree = [name for name in names if scaler.is_enabled() and layout.sharded] + list(clip)
    if agree:
        for name in dict.fromkeys(agree):
            scaler.unscale_(optimizers.optimizers[name])
        norms = layout.squared_norms({name: _grads(optimizers, name) for name in dict.fromkeys(agree)})
        for name, squared in norms.items():
            finite = bool(torch.isfinite(squared))
            if scaler.is_enabled() and not finite:
                _mark_non_finite(scaler, optimizers.optimizers[name])
            if name in clip and finite:
                _clip(_grads(optimizers, name), clip[name], math.sqrt(float(squared)))
    for name in names:
        if any(p.grad is not None for p in live_parameters(optimizers, name)):
            scaler.step(optimizers.optimizers[name])


def _grads(optimizers: Optimizers, name: str) -> List[torch.Tensor]:
    return [p.grad for p in live_parameters(optimizers, name) if p.grad is not None]


def _clip(grads: List[torch.Tensor], max_norm: float, norm: float) -> None:
    """torch's `clip_grad_norm_` with the norm given: the whole model's, not this shard's."""
    coefficient = min(1.0, max_norm / (norm + 1e-6))
    if coefficient < 1.0:
        torch._foreach_mul_(grads, coefficient)


def _mark_non_finite(scaler: GradScaler, optimizer: torch.optim.Optimizer) -> None:
    """Make the scaler skip `optimizer` this step, as a rank whose shard held the inf/NaN does. The
    scaler keeps its per-optimizer verdict only in private state, read by `step` and `update`."""
    found: Dict[torch.device, torch.Tensor] = scaler._per_optimizer_states[id(optimizer)]["found_inf_per_device"]
    for flag in found.values():
        flag.fill_(1.0)
