"""Shards drift apart as they densify; after a refine they are evened out again."""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist import comm
from splatfacto_dist.layouts.sharded.rows import RowCodec

REBALANCE_RATIO = 1.1
"""Rebalance after a refine once the largest shard exceeds the smallest by this factor (Grendel-GS's)."""


def rebalance(params: Dict[str, torch.nn.Parameter], optimizers: Dict[str, Any], state: Dict[str, Any]) -> None:
    """If max/min shard size > REBALANCE_RATIO, move Gaussians (parameters, Adam moments, statistics,
    ids) from the largest shards to the smallest until every shard holds floor or ceil of the mean.
    The move costs one all-to-all of ~3x the moved Gaussians' parameters (plus a few floats each);
    shards' order does not matter to training."""
    device = params["means"].device
    sizes = comm.all_gather_ints(len(params["means"]), device)
    if min(sizes) * REBALANCE_RATIO >= max(sizes) and min(sizes) > 0:
        return
    send_counts, recv_counts = rebalance_plan(sizes, comm.rank())
    n = sizes[comm.rank()]
    leaving = sum(send_counts)
    codec = RowCodec(params, optimizers, state)
    rows = codec.pack(params, optimizers, state, torch.arange(n - leaving, n, device=device))
    arrived = comm.all_to_all_rows(rows, send_counts, recv_counts)
    codec.replace(params, optimizers, state, torch.arange(n - leaving, device=rows.device), arrived)
    after = comm.all_gather_ints(len(params["means"]), device)
    if comm.is_main():
        CONSOLE.print(f"rebalanced Gaussian shards: {sizes} -> {after}")


def rebalance_plan(sizes: List[int], rank: int) -> Tuple[List[int], List[int]]:
    """(send_counts, recv_counts) of `rank` that bring every shard to floor/ceil of the mean.

    Surplus ranks give their last Gaussians, in rank order, to deficit ranks in rank order; every
    rank computes the same plan from the same sizes."""
    world, total = len(sizes), sum(sizes)
    target = [total // world + (1 if r < total % world else 0) for r in range(world)]
    surplus = [[r, sizes[r] - target[r]] for r in range(world) if sizes[r] > target[r]]
    deficit = [[r, target[r] - sizes[r]] for r in range(world) if sizes[r] < target[r]]
    moves = []
    while surplus and deficit:
        amount = min(surplus[0][1], deficit[0][1])
        moves.append((surplus[0][0], deficit[0][0], amount))
        surplus[0][1] -= amount
        deficit[0][1] -= amount
        if surplus[0][1] == 0:
            surplus.pop(0)
        if deficit[0][1] == 0:
            deficit.pop(0)
    send = [sum(a for s, d, a in moves if s == rank and d == r) for r in range(world)]
    recv = [sum(a for s, d, a in moves if d == rank and s == r) for r in range(world)]
    return send, recv
