"""The optimizer step of a training step: nerfstudio's `optimizer_scaler_step_some`, with the two
decisions that need every gradient of a group taken over the whole model.

- Gradient clipping (`max_norm`) scales a group by its global norm. Stock clips the Parameters the
  optimizers were built with (`Optimizers.parameters`), which densification replaces, so for the
  Gaussians it stops having any effect after the first refine; here it clips the live ones.
- The GradScaler skips an optimizer whose gradients hold an inf or NaN. A Gaussian shard sees only
  its own gradients, so ranks could disagree on skipping a step (then their loss scales and
  schedules drift apart): the skip is decided on the whole group's norm, which is non-finite
  exactly when some shard's gradients are.

A replicated group's gradients are already averaged on every rank, so its norm is local; a split
group's (`GaussianLayout.split_groups`) is the sum of the ranks' squares.
"""

from __future__ import annotations

import math
from typing import Dict, List, Tuple

import torch
from nerfstudio.engine.optimizers import Optimizers
from torch.amp import GradScaler
from torch.optim import optimizer as optimizer_hooks  # the hooks `register_optimizer_step_*_hook` adds

from splatfacto_dist import comm


def live_parameters(optimizers: Optimizers, name: str) -> List[torch.nn.Parameter]:
    """The parameters optimizer `name` steps now (densification replaces the Gaussians' Parameters;
    the optimizer's own lists are the ones gsplat keeps current)."""
    return [p for group in optimizers.optimizers[name].param_groups for p in group["params"]]


def squared_norms(grads: Dict[str, List[torch.Tensor]], split_groups: Tuple[str, ...]) -> Dict[str, torch.Tensor]:
    """Each group's squared L2 gradient norm over the whole model (for clipping, the scaler's
    inf/NaN check and gradient logs): the groups in `split_groups` summed over the ranks in one small
    all-reduce, so every rank must ask for the same groups."""
    norms = {name: _squared_norm(values) for name, values in grads.items()}
    split = [name for name in norms if name in split_groups]
    if split:
        devices = [norms[name].device for name in split if norms[name].device.type != "cpu"]
        device = devices[0] if devices else torch.device("cpu")  # a group without gradients gives a CPU 0
        summed = comm.all_reduce_sum(torch.stack([norms[name].to(device) for name in split]))
        norms.update(zip(split, summed))
    return norms


def _squared_norm(values: List[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of every element of `values` (0 for none), as one float32 scalar."""
    total = torch.zeros((), device=values[0].device if values else "cpu")
    for value in values:
        total = total + value.detach().float().pow(2).sum()
    return total


def step_optimizers(
    optimizers: Optimizers, scaler: GradScaler, names: List[str], split_groups: Tuple[str, ...]
) -> None:
    """Unscale, clip and step the optimizers `names` (see the module docstring); every rank calls it
    with the same `names`."""
    clip = {name: optimizers.config[name]["optimizer"].max_norm for name in names}
    clip = {name: max_norm for name, max_norm in clip.items() if max_norm is not None}
    agree = [name for name in names if scaler.is_enabled() and name in split_groups] + list(clip)
    if agree:
        for name in dict.fromkeys(agree):
            scaler.unscale_(optimizers.optimizers[name])
        norms = squared_norms({name: _grads(optimizers, name) for name in dict.fromkeys(agree)}, split_groups)
        for name, squared in norms.items():
            finite = bool(torch.isfinite(squared))
            if scaler.is_enabled() and not finite:
                _mark_non_finite(scaler, optimizers.optimizers[name])
            if name in clip and finite:
                _clip(_grads(optimizers, name), clip[name], math.sqrt(float(squared)))
    stepped = [optimizers.optimizers[name] for name in names if _grads(optimizers, name)]
    together = [optimizer for optimizer in stepped if not scaler.is_enabled() and _steps_directly(optimizer)]
    fused_adam_steps(together)
    for optimizer in stepped:
        if not any(optimizer is other for other in together):
            scaler.step(optimizer)


def fused_adam_steps(optimizers: List[torch.optim.Optimizer]) -> None:
    """What `step()` does for each of these fused Adams (`_steps_directly`), by the same kernel on the
    same state, one step-count increment for all: torch.optim's per-call Python (hooks, profiler
    ranges, state grouping) costs the host more than the kernels cost the GPU at splatfacto's six
    groups, and the host is what a 1-GPU step waits on."""
    if not optimizers:
        return
    groups = [optimizer.param_groups[0] for optimizer in optimizers]
    states = [optimizer.state[group["params"][0]] for optimizer, group in zip(optimizers, groups)]
    torch._foreach_add_([state["step"] for state in states], 1)
    for group, state in zip(groups, states):
        (param,) = group["params"]
        beta1, beta2 = group["betas"]
        torch._fused_adam_(
            [param], [param.grad], [state["exp_avg"]], [state["exp_avg_sq"]], [], [state["step"]],
            amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2, weight_decay=group["weight_decay"],
            eps=group["eps"], maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip


def _steps_directly(optimizer: torch.optim.Optimizer) -> bool:
    """A fused Adam over one parameter whose state its own first step made (`fused_adam_steps` never
    creates state), with nothing its `step()` would add: no hooks, no variant of the update."""
    if type(optimizer) is not torch.optim.Adam or len(optimizer.param_groups) != 1:
        return False
    group = optimizer.param_groups[0]
    variant = any(
        group.get(key) for key in ("amsgrad", "maximize", "capturable", "differentiable", "decoupled_weight_decay")
    )
    if not group.get("fused") or variant or len(group["params"]) != 1 or isinstance(group["lr"], torch.Tensor):
        return False
    param = group["params"][0]
    state = optimizer.state.get(param, {})
    if param.grad is None or param.grad.is_sparse or not {"step", "exp_avg", "exp_avg_sq"} <= state.keys():
        return False
    hooks = optimizer._optimizer_step_pre_hooks or optimizer._optimizer_step_post_hooks
    global_hooks = optimizer_hooks._global_optimizer_pre_hooks or optimizer_hooks._global_optimizer_post_hooks
    return not hooks and not global_hooks and state["step"].device == param.device


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
