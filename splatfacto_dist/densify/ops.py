"""Pure operations on Gaussians that must not depend on where a Gaussian is stored.

Every Gaussian carries a 62-bit id. Random draws that change a Gaussian (the split's position
samples) are a hash of (seed, step, id), never a position in a tensor, so replicated and sharded
runs, on any rank count, draw the same numbers for the same Gaussian. Children of a refine get ids
hashed from their parent's. Optimizer-state surgery goes through gsplat's
`_update_param_with_optimizer`, as gsplat's own ops do. A group may live in host memory
(offload/): every index is taken to the device of the tensor it indexes (`_on`).
"""

from __future__ import annotations

import math
from typing import Dict, Union

import torch
import torch.nn.functional as F
from gsplat.strategy.ops import _update_param_with_optimizer
from gsplat.utils import normalized_quat_to_rotmat

Params = Union[Dict[str, torch.nn.Parameter], torch.nn.ParameterDict]

_MASK31 = (1 << 31) - 1


def _hash31(x: torch.Tensor) -> torch.Tensor:
    """A 31-bit integer hash (int64 arithmetic that never overflows)."""
    x = x & _MASK31
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK31
    x = ((x >> 16) ^ x) * 0x45D9F3B & _MASK31
    return (x >> 16) ^ x


def _mix(ids: torch.Tensor, *salts: int) -> torch.Tensor:
    """A 31-bit hash of each id (all 62 bits) and the salts."""
    h = _hash31(ids & _MASK31)
    h = _hash31(h ^ (ids >> 31))
    for salt in salts:
        h = _hash31(h ^ (salt & _MASK31))
    return h


def child_ids(ids: torch.Tensor, step: int, which: int) -> torch.Tensor:
    """62-bit ids for the `which`-th children made at `step` of Gaussians `ids`."""
    return (_mix(ids, step, which, 1) << 31) | _mix(ids, step, which, 2)


def keyed_normal(ids: torch.Tensor, seed: int, step: int, shape_tail: int) -> torch.Tensor:
    """[len(ids), shape_tail] standard normal samples, each a function of (seed, step, id, column)."""
    cols = torch.arange(shape_tail, device=ids.device)
    u1 = (_mix(ids[:, None] * 64 + cols[None, :] * 2, seed, step).double() + 1.0) / (_MASK31 + 2.0)
    u2 = (_mix(ids[:, None] * 64 + cols[None, :] * 2 + 1, seed, step).double() + 1.0) / (_MASK31 + 2.0)
    return (torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2 * math.pi * u2)).float()


def _on(index: torch.Tensor, tensor: torch.Tensor) -> torch.Tensor:
    """`index` where `tensor` is (the same tensor when it already is there)."""
    return index.to(tensor.device)  # blocking: a non-blocking copy to the host may not have landed yet


def _extend_state(state: Dict, keep: torch.Tensor, added: Dict[str, torch.Tensor]) -> None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = torch.cat((value[keep], added[key]))


@torch.no_grad()
def duplicate(params: Params, optimizers: Dict, state: Dict, mask: torch.Tensor, step: int) -> None:
    """gsplat's duplicate; the copies get ids of their own (identical twins would draw identical noise)."""
    sel = torch.where(mask)[0]
    _update_param_with_optimizer(
        lambda name, p: torch.nn.Parameter(torch.cat([p, p[_on(sel, p)]])),
        lambda key, v: torch.cat([v, torch.zeros((len(sel), *v.shape[1:]), device=v.device)]),
        params,
        optimizers,
    )
    added = {k: v[sel] for k, v in state.items() if isinstance(v, torch.Tensor)}
    added["ids"] = child_ids(state["ids"][sel], step, 0)
    _extend_state(state, torch.arange(len(mask), device=mask.device), added)


@torch.no_grad()
def split(
    params: Params, optimizers: Dict, state: Dict, mask: torch.Tensor, seed: int, step: int, revised_opacity: bool
) -> None:
    """gsplat's split, with position samples keyed by (seed, step, id) instead of the global RNG."""
    sel = torch.where(mask)[0]
    rest = torch.where(~mask)[0]
    parents = state["ids"][sel]
    scales = torch.exp(params["scales"][sel])
    rotmats = normalized_quat_to_rotmat(F.normalize(params["quats"][sel], dim=-1))
    noise = keyed_normal(parents, seed, step, 6).reshape(len(sel), 2, 3).transpose(0, 1)
    samples = torch.einsum("nij,nj,bnj->bni", rotmats, scales, noise)  # [2, N, 3]

    def param_fn(name: str, p: torch.Tensor) -> torch.nn.Parameter:
        repeats = [2] + [1] * (p.dim() - 1)
        if name == "means":
            p_split = (p[sel] + samples).reshape(-1, 3)
        elif name == "scales":
            p_split = torch.log(scales / 1.6).repeat(2, 1)
        elif name == "opacities" and revised_opacity:
            p_split = torch.logit(1.0 - torch.sqrt(1.0 - torch.sigmoid(p[sel]))).repeat(repeats)
        else:
            p_split = p[_on(sel, p)].repeat(repeats)
        return torch.nn.Parameter(torch.cat([p[_on(rest, p)], p_split]))

    _update_param_with_optimizer(
        param_fn,
        lambda key, v: torch.cat([v[_on(rest, v)], torch.zeros((2 * len(sel), *v.shape[1:]), device=v.device)]),
        params,
        optimizers,
    )
    added = {k: v[sel].repeat([2] + [1] * (v.dim() - 1)) for k, v in state.items() if isinstance(v, torch.Tensor)}
    added["ids"] = torch.cat([child_ids(parents, step, 1), child_ids(parents, step, 2)])
    _extend_state(state, rest, added)


@torch.no_grad()
def remove(params: Params, optimizers: Dict, state: Dict, mask: torch.Tensor) -> None:
    """gsplat's remove (prune), wherever each group lives."""
    keep = torch.where(~mask)[0]
    _update_param_with_optimizer(
        lambda name, p: torch.nn.Parameter(p[_on(keep, p)]), lambda key, v: v[_on(keep, v)], params, optimizers
    )
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = value[_on(keep, value)]


def image_gradient_norms(grads: torch.Tensor, width: int, height: int, views: int) -> torch.Tensor:
    """gsplat's densification statistic of one image, for [..., 2] 2D-mean gradients (or absgrads)
    summed over that image: each axis in half-image units (W/2, H/2), times the images the loss
    averaged over (a per-image gradient), then the norm. Statistics taken by camera (strategy.py)
    and in pixel ranges (sharded/ranges.py) both go through this one rule."""
    scaled = torch.stack([grads[..., 0] * (width / 2.0 * views), grads[..., 1] * (height / 2.0 * views)], -1)
    return scaled.norm(dim=-1)


def screen_radii(radii: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Screen radii as the fraction of the image's larger side that gsplat's statistics keep."""
    return radii / float(max(width, height))
