"""Pure operations on Gaussians that must not depend on where a Gaussian is stored.

Every Gaussian carries a 62-bit id. Random draws that change a Gaussian (the split's position
samples) are a hash of (seed, step, id), never a position in a tensor, so replicated and sharded
runs, on any rank count, draw the same numbers for the same Gaussian. Children of a refine get ids
hashed from their parent's. Optimizer-state surgery goes through gsplat's
`_update_param_with_optimizer`, as gsplat's own ops do.
"""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Tuple, Union

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


def _extend_state(state: Dict, keep: torch.Tensor, added: Dict[str, torch.Tensor]) -> None:
    for key, value in state.items():
        if isinstance(value, torch.Tensor):
            state[key] = torch.cat((value[keep], added[key]))


@torch.no_grad()
def duplicate(params: Params, optimizers: Dict, state: Dict, mask: torch.Tensor, step: int) -> None:
    """gsplat's duplicate; the copies get ids of their own (identical twins would draw identical noise)."""
    sel = torch.where(mask)[0]
    _update_param_with_optimizer(
        lambda name, p: torch.nn.Parameter(torch.cat([p, p[sel]])),
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
            p_split = p[sel].repeat(repeats)
        return torch.nn.Parameter(torch.cat([p[rest], p_split]))

    _update_param_with_optimizer(
        param_fn,
        lambda key, v: torch.cat([v[rest], torch.zeros((2 * len(sel), *v.shape[1:]), device=v.device)]),
        params,
        optimizers,
    )
    added = {k: v[sel].repeat([2] + [1] * (v.dim() - 1)) for k, v in state.items() if isinstance(v, torch.Tensor)}
    added["ids"] = torch.cat([child_ids(parents, step, 1), child_ids(parents, step, 2)])
    _extend_state(state, rest, added)


class RowCodec:
    """Packs every per-Gaussian tensor (parameters, their Adam moments, strategy state, ids) into one
    float32 row per Gaussian, so moving Gaussians between ranks is one collective."""

    def __init__(self, params: Params, optimizers: Dict, state: Dict) -> None:
        self.fields: List[Tuple[str, str, Tuple[int, ...], torch.dtype]] = []
        for name, p in params.items():
            self.fields.append(("param", name, tuple(p.shape[1:]), p.dtype))
            for key, v in optimizers[name].state.get(p, {}).items():
                if key != "step":
                    self.fields.append(("moment", f"{name}/{key}", tuple(v.shape[1:]), v.dtype))
        for key, v in state.items():
            if isinstance(v, torch.Tensor):
                self.fields.append(("state", key, tuple(v.shape[1:]), v.dtype))

    @staticmethod
    def _width(shape: Tuple[int, ...], dtype: torch.dtype) -> int:
        return math.prod(shape) * (2 if dtype == torch.int64 else 1)

    @property
    def width(self) -> int:
        """float32 columns of one packed row."""
        return sum(self._width(shape, dtype) for _, _, shape, dtype in self.fields)

    def _tensors(self, params: Params, optimizers: Dict, state: Dict) -> List[torch.Tensor]:
        out = []
        for kind, key, _, _ in self.fields:
            if kind == "param":
                out.append(params[key])
            elif kind == "moment":
                name, moment = key.split("/")
                out.append(optimizers[name].state[params[name]][moment])
            else:
                out.append(state[key])
        return out

    def pack(self, params: Params, optimizers: Dict, state: Dict, rows: torch.Tensor) -> torch.Tensor:
        """[len(rows), width] float32 rows of the Gaussians at `rows`."""
        columns = []
        for t in self._tensors(params, optimizers, state):
            part = t.detach()[rows].reshape(len(rows), math.prod(t.shape[1:]))
            columns.append(part.contiguous().view(torch.float32) if part.dtype == torch.int64 else part.float())
        return torch.cat(columns, dim=1) if columns else torch.zeros((len(rows), 0))

    def _fields(self, packed: torch.Tensor) -> Iterator[Tuple[Tuple[str, str], torch.Tensor]]:
        """((kind, key), [len(packed), *shape] tensor of its dtype) of every field of packed rows."""
        start = 0
        for kind, key, shape, dtype in self.fields:
            width = self._width(shape, dtype)
            part = packed.new_empty((len(packed), width)).copy_(packed[:, start : start + width])
            start += width
            yield (kind, key), (part.view(torch.int64) if dtype == torch.int64 else part.to(dtype)).reshape(-1, *shape)

    def unpack(self, packed: torch.Tensor) -> Dict[Tuple[str, str], torch.Tensor]:
        """{(kind, key): tensor} from packed rows."""
        return dict(self._fields(packed))

    def empty(self, n: int) -> Dict[Tuple[str, str], torch.Tensor]:
        """{(kind, key): uninitialised CPU tensor of `n` rows}, to receive packed chunks."""
        return {(kind, key): torch.empty((n, *shape), dtype=dtype) for kind, key, shape, dtype in self.fields}

    def unpack_into(self, whole: Dict[Tuple[str, str], torch.Tensor], start: int, packed: torch.Tensor) -> None:
        """Write packed rows into rows start.. of `empty`'s tensors."""
        for key, part in self._fields(packed):
            whole[key][start : start + len(packed)] = part

    def replace(self, params: Params, optimizers: Dict, state: Dict, keep: torch.Tensor, packed: torch.Tensor) -> None:
        """Keep the Gaussians at `keep` and append the packed ones, parameters, moments and state alike."""
        arrived = self.unpack(packed)
        for name in list(params.keys()):
            _update_param_with_optimizer(
                lambda _, p: torch.nn.Parameter(torch.cat([p.detach()[keep], arrived[("param", name)]])),
                lambda key, v: torch.cat([v[keep], arrived[("moment", f"{name}/{key}")]]),
                params,
                optimizers,
                names=[name],
            )
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and ("state", key) in arrived:
                state[key] = torch.cat([value[keep], arrived[("state", key)]])


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
