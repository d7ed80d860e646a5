"""The replica checker (`--verify-replicas-every`) catches what it exists for: a parameter or an Adam
moment that differs by one bit on one rank, named; and stays quiet on equal replicas (2 gloo ranks)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist import comm
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES, named_tensors


def _replicas():
    """A model's replicated state as the trainer lists it: Gaussian groups and a camera group, each
    with a stepped Adam (moments to compare)."""
    torch.manual_seed(0)  # the same on every rank
    module = torch.nn.Module()
    module.gauss_params = torch.nn.ParameterDict(
        {name: torch.nn.Parameter(torch.randn(5, 3)) for name in GAUSSIAN_NAMES}
    )
    module.camera_opt = torch.nn.Parameter(torch.randn(2, 6))
    optimizers = {name: torch.optim.Adam([p], lr=0.01) for name, p in module.gauss_params.items()}
    optimizers["camera_opt"] = torch.optim.Adam([module.camera_opt], lr=0.01)
    for p in module.parameters():
        p.grad = torch.ones_like(p)
    for optimizer in optimizers.values():
        optimizer.step()
    return module, optimizers


def _one_bit(t: torch.Tensor) -> None:
    """Flip the lowest mantissa bit of one element (the smallest difference a float can have)."""
    with torch.no_grad():
        t.view(-1).view(torch.int32)[3] ^= 1


def _checked(module, optimizers, skip=()) -> str:
    try:
        comm.verify_replicas(named_tensors(list(module.named_parameters()), optimizers, skip))
    except comm.ReplicaMismatch as err:
        return str(err)
    return "equal"


def _worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        outcomes = []
        module, optimizers = _replicas()
        outcomes.append(_checked(module, optimizers))
        if rank == 1:
            _one_bit(module.gauss_params["scales"])
        outcomes.append(_checked(module, optimizers))
        module, optimizers = _replicas()
        if rank == 1:
            _one_bit(optimizers["opacities"].state[module.gauss_params["opacities"]]["exp_avg_sq"])
        outcomes.append(_checked(module, optimizers))
        outcomes.append(_checked(module, optimizers, skip=GAUSSIAN_NAMES))  # a sharded layout's list
        results[rank] = outcomes
    finally:
        dist.destroy_process_group()


def test_the_replica_checker_names_a_planted_parameter_and_adam_moment_difference():
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), results), nprocs=2)
    for rank in (0, 1):
        equal, parameter, moment, sharded = results[rank]
        assert equal == "equal"
        assert parameter == "rank 1 differs from rank 0 in 'gauss_params.scales'"
        assert moment == "rank 1 differs from rank 0 in 'optimizer[opacities].exp_avg_sq'"
        assert sharded == "equal"  # split groups are each rank's own: not compared
