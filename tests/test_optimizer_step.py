"""The optimizer step decides on the whole model when the Gaussians are sharded: gradient clipping
by the global norm, and the GradScaler's inf/NaN skip taken by every rank together (2 gloo ranks)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist.engine.optimizer_step import _steps_directly, step_optimizers
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES


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
        step_optimizers(clipped, torch.amp.GradScaler("cpu", enabled=False), ["means"], GAUSSIAN_NAMES)
        scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
        scaler.scale(torch.ones(()))  # as the loss is scaled before backward
        scaled = _optimizers({"means": means * 4, "scales": scales * 4}, {})
        step_optimizers(scaled, scaler, ["means", "scales"], GAUSSIAN_NAMES)
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
    step_optimizers(optimizers, torch.amp.GradScaler("cpu", enabled=False), ["means"], ())
    assert torch.allclose(optimizers.params["means"].detach(), torch.tensor([[-0.6, -0.8]]), atol=1e-5)


def _adams(lrs: dict) -> SimpleNamespace:
    g = torch.Generator().manual_seed(0)
    shapes = {"means": (40, 3), "features_rest": (40, 15, 3), "opacities": (40, 1)}
    params = {name: torch.nn.Parameter(torch.randn(shape, generator=g)) for name, shape in shapes.items()}
    return SimpleNamespace(
        optimizers={name: torch.optim.Adam([p], lr=lrs[name], eps=1e-15, fused=True) for name, p in params.items()},
        config={name: {"optimizer": SimpleNamespace(max_norm=None)} for name in params},
        params=params,
    )


def test_fused_adams_stepped_together_equal_each_stepped_alone():
    """Same kernel on the same state: parameters and moments are bitwise those of torch's own
    `step()`, also after a refine grows a parameter and its moments as gsplat's ops do."""
    lrs = {"means": 1.6e-4, "features_rest": 0.0025 / 20, "opacities": 0.05}
    alone, together = _adams(lrs), _adams(lrs)
    g = torch.Generator().manual_seed(1)
    for step in range(6):
        if step == 3:  # a refine: every parameter and its moments grow by 5 rows (zeros for the moments)
            for run in (alone, together):
                for name, optimizer in run.optimizers.items():
                    old = run.params[name]
                    new = torch.nn.Parameter(torch.cat([old.detach(), old.detach()[:5]]))
                    state = optimizer.state.pop(old)
                    for key in ("exp_avg", "exp_avg_sq"):
                        state[key] = torch.cat([state[key], torch.zeros_like(state[key][:5])])
                    optimizer.param_groups[0]["params"] = [new]
                    optimizer.state[new] = state
                    run.params[name] = new
        grads = {name: torch.randn(p.shape, generator=g) for name, p in alone.params.items()}
        for run in (alone, together):
            for name, p in run.params.items():
                p.grad = grads[name].clone()
        for optimizer in alone.optimizers.values():
            optimizer.step()
        if step > 0:  # after each one's own first step (which made its state), all step together
            assert all(_steps_directly(optimizer) for optimizer in together.optimizers.values())
        step_optimizers(together, torch.amp.GradScaler("cpu", enabled=False), list(lrs), ())
        for name in lrs:
            assert torch.equal(alone.params[name], together.params[name]), (step, name)
            a, b = (
                alone.optimizers[name].state[alone.params[name]],
                together.optimizers[name].state[together.params[name]],
            )
            assert all(torch.equal(a[key], b[key]) for key in ("step", "exp_avg", "exp_avg_sq")), (step, name)


def test_an_adam_with_a_variant_or_hooks_steps_by_its_own_step():
    amsgrad = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=0.1, fused=True, amsgrad=True)
    hooked = torch.optim.Adam([torch.nn.Parameter(torch.ones(2))], lr=0.1, fused=True)
    hooked.register_step_post_hook(lambda *args: None)
    for optimizer in (amsgrad, hooked):
        optimizer.param_groups[0]["params"][0].grad = torch.ones(2)
        optimizer.step()
        assert not _steps_directly(optimizer)
