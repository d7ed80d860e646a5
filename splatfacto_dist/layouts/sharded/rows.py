"""One float32 row per Gaussian holding all of it (parameters, Adam moments, strategy state, ids):
moving Gaussians between ranks (a rebalance) or to rank 0 (a save) is then one collective of rows,
whatever the model's groups are. Rows are packed on the device of the row indices, whichever
device (GPU, or host memory when offloaded) each group lives on."""

from __future__ import annotations

import math
from typing import Dict, Iterator, List, Tuple

import torch
from gsplat.strategy.ops import _update_param_with_optimizer

from splatfacto_dist.densify.ops import Params


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
            part = t.detach()[rows.to(t.device)].to(rows.device).reshape(len(rows), math.prod(t.shape[1:]))
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

        def kept(value: torch.Tensor, field: Tuple[str, str]) -> torch.Tensor:
            return torch.cat([value.detach()[keep.to(value.device)], arrived[field].to(value.device)])

        for name in list(params.keys()):
            _update_param_with_optimizer(
                lambda _, p: torch.nn.Parameter(kept(p, ("param", name))),
                lambda key, v: kept(v, ("moment", f"{name}/{key}")),
                params,
                optimizers,
                names=[name],
            )
        for key, value in state.items():
            if isinstance(value, torch.Tensor) and ("state", key) in arrived:
                state[key] = kept(value, ("state", key))
