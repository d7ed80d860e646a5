"""The pieces of sharded training alone: id-keyed draws, the rebalance plan, and a rebalance and a
checkpoint gather between two gloo processes."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist import comm, ops
from splatfacto_dist.sharded import ShardedLayout, rebalance_plan


def test_split_draws_depend_on_ids_not_on_storage_order():
    ids = torch.tensor([5, 17, 2**40 + 3, 9])
    order = torch.tensor([2, 0, 3, 1])
    assert torch.equal(ops.keyed_normal(ids, 42, 7, 6)[order], ops.keyed_normal(ids[order], 42, 7, 6))
    assert not torch.equal(ops.keyed_normal(ids, 42, 7, 6), ops.keyed_normal(ids, 42, 8, 6))
    samples = ops.keyed_normal(torch.arange(20000), 1, 1, 3)
    assert abs(float(samples.mean())) < 0.05 and abs(float(samples.std()) - 1) < 0.05
    children = torch.cat([ops.child_ids(ids, 3, k) for k in range(3)])
    assert len(set(children.tolist()) | set(ids.tolist())) == 4 * len(ids)


def test_rebalance_plan_evens_out_shards():
    sizes = [10, 4, 7]
    plans = [rebalance_plan(sizes, r) for r in range(3)]
    after = [sizes[r] - sum(plans[r][0]) + sum(plans[r][1]) for r in range(3)]
    assert sorted(after) == [7, 7, 7]
    for r in range(3):
        for s in range(3):
            assert plans[r][0][s] == plans[s][1][r]  # what r sends s is what s receives from r


def _shard(rank: int, n: int):
    """A shard of n Gaussians whose every value says which Gaussian it is, with Adam moments."""
    ids = torch.arange(n) + 1000 * rank
    params = torch.nn.ParameterDict(
        {
            "means": torch.nn.Parameter(ids[:, None].float().repeat(1, 3)),
            "features_rest": torch.nn.Parameter(ids[:, None, None].float().repeat(1, 15, 3)),
        }
    )
    optimizers = {name: torch.optim.Adam([p], lr=0.1) for name, p in params.items()}
    for p in params.values():
        p.grad = torch.ones_like(p)
    for optimizer in optimizers.values():
        optimizer.step()  # creates the moments
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(ids.reshape(-1, *[1] * (p.dim() - 1)).float().expand_as(p))
            optimizers[name].state[p]["exp_avg"].copy_(2 * p)
    state = {"ids": ids, "grad2d": ids.float() * 3, "scene_scale": 1.0}
    return params, optimizers, state


def _rebalance_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        params, optimizers, state = _shard(rank, [10, 4][rank])
        layout = ShardedLayout()
        layout.total = 14
        layout.after_refine(params, optimizers, state, grown=0, pruned=0)
        layout.verify_total(len(params["means"]))
        ids = state["ids"]
        means = params["means"][:, 0]
        moment = optimizers["means"].state[params["means"]]["exp_avg"][:, 0]
        rest = params["features_rest"][:, 0, 0]
        consistent = bool(
            torch.equal(means, ids.float()) and torch.equal(moment, 2 * ids.float()) and torch.equal(rest, ids.float())
        )
        consistent &= bool(torch.equal(state["grad2d"], 3 * ids.float()))
        gathered = comm.gather_rows_to_main(params["means"].detach())
        results[rank] = (len(ids), sorted(ids.tolist()), consistent, None if gathered is None else gathered.shape)
    finally:
        dist.destroy_process_group()


def test_rebalance_moves_gaussians_with_their_moments_statistics_and_ids():
    results = mp.Manager().dict()
    mp.spawn(_rebalance_worker, args=(free_port(), results), nprocs=2)
    (n0, ids0, ok0, gathered), (n1, ids1, ok1, _) = results[0], results[1]
    assert (n0, n1) == (7, 7)
    assert sorted(ids0 + ids1) == list(range(10)) + [1000, 1001, 1002, 1003]
    assert ok0 and ok1, "a moved Gaussian lost its moments, statistics or id"
    assert gathered == (14, 3)
