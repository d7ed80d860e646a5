"""GPU checks of the sharded layout: its exchange equals replicated training, its checkpoint is one
whole model that stock ns-eval reads, and a save needs no shard-sized GPU buffer.

Two ranks run on two GPUs over NCCL, or share one GPU over gloo (--ranks-per-gpu 2) where the
machine has one: the code paths are the same, only the transport differs."""

from __future__ import annotations

from types import SimpleNamespace

import ecosystem
import pytest
import torch
from conftest import CUDA_TWO_RANKS, SAVES, SCHEDULE, SHARDED, assert_renders_match, gaussians, train

from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES
from splatfacto_dist.layouts.sharded import saving
from splatfacto_dist.layouts.sharded.rows import RowCodec

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
CUDA = CUDA_TWO_RANKS


def test_sharded_on_two_gpu_ranks_equals_replicated(tmp_path, scene):
    """SH degree 3 from step 24: the owners' colours come from gsplat's CUDA SH evaluation."""
    schedule = SCHEDULE + SAVES + CUDA + ["--pipeline.model.sh-degree-interval", "8"]
    replicated = train(tmp_path / "replicated", scene, 2, schedule)
    sharded_run = train(tmp_path / "sharded", scene, 2, schedule + SHARDED)
    assert len(gaussians(replicated)["means"]) == len(gaussians(sharded_run)["means"])
    assert_renders_match(replicated, sharded_run)


def test_sharded_gpu_run_with_default_saves_evaluates_and_exports(tmp_path, scene):
    """nerfstudio's default save schedule (every 2,000 images) over 4,000 images: the last checkpoint
    evaluates like the distributed eval and ns-export writes every Gaussian."""
    run = train(
        tmp_path / "run",
        scene,
        2,
        CUDA
        + SHARDED
        + ["--max-num-iterations", "4000", "--steps-per-save", "2000", "--eval-all-images-at-end", "True"],
    )
    ecosystem.check_ns_eval(run, tmp_path, last_step=1999)
    ecosystem.check_ns_export(run, tmp_path / "export")


def test_a_save_of_a_large_shard_needs_only_chunk_sized_gpu_buffers(monkeypatch):
    """2 M Gaussians at SH degree 3 with their Adam moments (1.4 GB): the save's extra GPU memory stays
    within a few chunks (the ids, the chunk, its index and copies), not a second shard."""
    from conftest import build_model

    model = build_model(random_init=True, layout="sharded").to("cuda")
    n = 2_000_000
    shapes = {name: (n, *model.gauss_params[name].shape[1:]) for name in GAUSSIAN_NAMES}
    for name, shape in shapes.items():
        model.gauss_params[name] = torch.nn.Parameter(torch.randn(shape, device="cuda"))
    model.strategy_state["ids"] = torch.arange(n)
    model.layout.hold(n)
    params = model.gauss_params
    optimizers = SimpleNamespace(optimizers={name: torch.optim.Adam([params[name]]) for name in GAUSSIAN_NAMES})
    for name in GAUSSIAN_NAMES:
        params[name].grad = torch.ones_like(params[name])
        optimizers.optimizers[name].step()
        params[name].grad = None
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    whole = model.layout.gather(params, optimizers.optimizers, model.strategy_state["ids"], {})
    extra = torch.cuda.max_memory_allocated() - before
    shard = sum(p.numel() * 3 * 4 for p in params.values())
    assert torch.equal(whole.params["means"], params["means"].cpu())
    bound = 4 * saving.SAVE_CHUNK_BYTES + n * 8  # a chunk, its packed columns, copies; the ids on the GPU
    assert bound < shard / 4
    assert extra <= bound, (extra, shard)
    assert RowCodec(params, optimizers.optimizers, {"ids": model.strategy_state["ids"]}).width == 3 * 59 + 2
