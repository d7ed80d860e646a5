"""Saves of a sharded model: every shard gathered to rank 0's CPU in splatfacto's row order, in
bounded chunks."""

from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

from splatfacto_dist import comm
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES, WholeGaussians
from splatfacto_dist.layouts.sharded.rows import RowCodec

SAVE_CHUNK_BYTES = 64 << 20
"""The most bytes of packed Gaussians (parameters, Adam moments, ids) a save puts in one GPU buffer:
a model at capacity has no room for its shard twice, and 64 MiB chunks keep the save's transfers
large enough to run at the link's speed."""


def gather_whole(
    params: Mapping[str, torch.Tensor],
    optimizers: Mapping[str, torch.optim.Optimizer],
    ids: torch.Tensor,
    statistics: Mapping[str, torch.Tensor],
    total: int,
) -> Optional[WholeGaussians]:
    """On rank 0, the whole model of `total` Gaussians in splatfacto's row order; None on the other
    ranks, which only send.

    Rows leave every GPU at most SAVE_CHUNK_BYTES at a time, and rank 0 writes each chunk straight
    into the CPU tensors of the saved model: no GPU ever holds a shard-sized buffer for a save (a
    model at capacity has no room for one), and rank 0's host holds the whole model once. The live
    optimizer state is only read."""
    groups = {name: optimizers[name] for name in GAUSSIAN_NAMES}
    device = params["means"].device
    state = {"ids": ids.to(device), **statistics}  # ids: CPU until a refine moves them
    codec = RowCodec(params, groups, state)
    chunk_rows = max(1, SAVE_CHUNK_BYTES // (4 * max(codec.width, 1)))

    def make_rows(start: int, stop: int) -> torch.Tensor:
        return codec.pack(params, groups, state, torch.arange(start, stop, device=device))

    whole = codec.empty(total) if comm.is_main() else None
    for start, chunk in comm.gather_rows_to_main(len(params["means"]), make_rows, chunk_rows):  # ranks > 0 send
        codec.unpack_into(whole, start, chunk)  # type: ignore[arg-type]
    if whole is None:
        return None
    moments: Dict[str, Dict[str, torch.Tensor]] = {name: {} for name in GAUSSIAN_NAMES}
    for (kind, key), value in whole.items():
        if kind == "moment":
            name, moment = key.split("/")
            moments[name][moment] = value
    params_whole = {name: whole[("param", name)] for name in GAUSSIAN_NAMES}
    kept = {key: whole[("state", key)] for key in statistics}
    return WholeGaussians(params_whole, moments, whole[("state", "ids")], kept)
