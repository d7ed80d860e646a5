"""The optimizer step decides on the whole model when the Gaussians are sharded: gradient clipping
by the global norm, and the GradScaler's inf/NaN skip taken by every rank together (2 gloo ranks)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist.layout import ReplicatedLayout
from splatfacto_dist.optimizer_step import step_optimizers
from splatfacto_dist.sharded import ShardedLayout


def _optimizers(grads: dict, max_norm: dict) -> SimpleNamespace:
    params = {name: torch.nn.Parameter(torch.zeros_like(g)) for name, g in grads.items()}
    for name, p in params.items():
        p.grad = grads[name].clone()
    return SimpleNamespace(
        optimizers={name: torch.optim.SGD([p], lr=1.0) for name, p in params.items()},
        config={name: {"optimizer": SimpleNamespace(max_norm=max_norm.get(name))} for name in grads},
        params=params,
    )


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        # This rank's shard of "means" ([3, 0] on rank 0, [0, 4] on rank 1: whole norm 5), and of
        # "scales", whose gradient is inf on rank 1 only.
        means = torch.tensor([[3.0, 0.0]]) if rank == 0 else torch.tensor([[0.0, 4.0]])
        scales = torch.tensor([[1.0, 1.0]]) if rank == 0 else torch.tensor([[float("inf"), 1.0]])
        clipped = _optimizers({"means": means, "scales": scales}, {"means": 1.0})
        step_optimizers(clipped, torch.amp.GradScaler("cpu", enabled=False), ["means"], ShardedLayout())
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        scaler.scale(torch.ones(()))  # as the loss is scaled before backward
        scaled = _optimizers({"means": means * 4, "scales": scales * 4}, {})
        step_optimizers(scaled, scaler, ["means", "scales"], ShardedLayout())
        scaler.update()
        results[rank] = (
            clipped.params["means"].detach().tolist(),
            scaled.params["means"].detach().tolist(),
            scaled.params["scales"].detach().tolist(),
            scaler.get_scale(),
        )
    finally:
        dist.destroy_process_group()


def test_sharded_ranks_clip_by_the_global_norm_and_skip_a_non_finite_step_together():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), results), nprocs=2)
    for rank, expected_clipped in ((0, [[-0.6, 0.0]]), (1, [[0.0, -0.8]])):
        clipped, means, scales, scale = results[rank]
        assert torch.allclose(torch.tensor(clipped), torch.tensor(expected_clipped), atol=1e-5), clipped
        assert scales == [[0.0, 0.0]], "a rank stepped the group whose gradient was inf on another rank"
        assert means != [[0.0, 0.0]], "a finite group must still step"
        assert scale == 2.0, "every rank's scaler backs off together"


def test_replicated_clipping_uses_the_live_parameters():
    """Stock clips `Optimizers.parameters`, the Parameters before any densification replaced them."""
    optimizers = _optimizers({"means": torch.tensor([[3.0, 4.0]])}, {"means": 1.0})
    step_optimizers(optimizers, torch.amp.GradScaler("cpu", enabled=False), ["means"], ReplicatedLayout())
    assert torch.allclose(optimizers.params["means"].detach(), torch.tensor([[-0.6, -0.8]]), atol=1e-5)
