"""Loss by pixel range: each rank's bands of the images add up to splatfacto's whole-image loss, in
value and gradient (the bands alone, any cut, 1 to 5 ranks), and a sharded render that keeps its
pixels in bands trains the Gaussians as the whole-image loss on each camera's rank does (gloo)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port
from pytorch_msssim import SSIM
from test_pixel_ranges import _scene

from splatfacto_dist.layouts.sharded.range_loss import HALO, bands, shares
from splatfacto_dist.layouts.sharded.range_plan import cut
from splatfacto_dist.render.tiles import tile_grid

SSIM_MODULE = SSIM(data_range=1.0, size_average=True, channel=3)


def _ssim(gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    return SSIM_MODULE(gt, pred)


def _whole_loss(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """splatfacto's loss of one [H, W, 3] image (ssim_lambda 0.2)."""
    nchw = [x.permute(2, 0, 1)[None] for x in (gt, pred)]
    return 0.8 * (gt - pred).abs().mean() + 0.2 * (1 - _ssim(*nchw))


@pytest.mark.parametrize("height, width", [(48, 40), (53, 37), (71, 45), (9, 30), (12, 100)])
@pytest.mark.parametrize("ranks", [1, 2, 3, 5])
def test_the_bands_of_an_image_add_up_to_its_whole_loss_and_gradient(height, width, ranks):
    """Cuts by random tile costs (ranges that start inside a tile row, empty ranges), heights that are
    not a multiple of 16 and one less than SSIM's window: the bands' shares sum to the image's L1,
    1 - SSIM and squared error, and their gradients, added where the bands overlap, to the image's;
    no band holds more than its loss rows and HALO rows around them."""
    generator = torch.Generator().manual_seed(height * 100 + ranks)
    tiles_x, tiles_y = tile_grid(width, height)
    gt = torch.rand((height, width, 3), dtype=torch.float64, generator=generator)
    pred = torch.rand((height, width, 3), dtype=torch.float64, generator=generator).requires_grad_()
    whole = _whole_loss(pred, gt)
    whole.backward()
    for trial in range(4):
        costs = torch.randint(0, 40, (tiles_x * tiles_y,), generator=generator).tolist()
        ranges = cut(costs, ranks)
        total, squared, gradient = 0.0, 0.0, torch.zeros_like(pred)
        split_rows = any(first % tiles_x for first, _ in ranges[1:])
        for band in bands(ranges, width, height):
            lo, hi = band.held
            assert lo >= band.loss[0] - HALO and hi <= band.loss[1] + HALO, band
            leaf = pred.detach()[lo:hi].clone().requires_grad_()
            l1, dssim, sq = shares(leaf, gt[lo:hi], band, height, _ssim)
            share = 0.8 * l1 + 0.2 * dssim
            share.backward()
            total, squared = total + float(share), squared + float(sq)
            gradient[lo:hi] += leaf.grad
        assert abs(total - float(whole)) < 1e-12, (trial, ranges, total, float(whole))
        assert abs(squared - float((gt - pred).square().mean())) < 1e-12
        assert torch.allclose(gradient, pred.grad, rtol=1e-9, atol=1e-15), (trial, ranges)
        if ranks > 1 and height >= 40 and split_rows:
            break  # this image had a cut inside a tile row
    loss_rows = [b.loss for b in bands(ranges, width, height)]
    assert loss_rows[0][0] == 0 and loss_rows[-1][1] == height
    assert all(a[1] == b[0] for a, b in zip(loss_rows, loss_rows[1:]))


def _train_step(world: int, by_range: bool):
    """One rank's step on its ring camera rendered from its shard in pixel ranges: its loss against
    a random ground truth, taken whole on the camera's rank (`by_range` False) or in bands on every
    rank (the model's functions and the ground truth's exchange); the loss value and the shard's
    and camera's gradients."""
    from splatfacto_dist import comm
    from splatfacto_dist.layouts.sharded import ShardedLayout
    from splatfacto_dist.layouts.sharded.ranges import held_rows
    from splatfacto_dist.models import loss_by_range
    from splatfacto_dist.scenes.scene import ring_cameras

    layout = ShardedLayout(pixel_ranges=True)
    rows = _scene()
    shard = {k: v[layout.hold(len(v))].clone().requires_grad_() for k, v in rows.items()}
    rank = comm.rank()
    viewmats = ring_cameras(world)[rank : rank + 1].clone().requires_grad_()
    K = torch.tensor([[[172.8, 0.0, 96.0], [0.0, 172.8, 72.0], [0.0, 0.0, 1.0]]])
    width, height = 192, 141  # not a multiple of 16
    gt = torch.rand((1, height, width, 3), generator=torch.Generator().manual_seed(rank))
    render, alpha, info = layout.render(
        shard, viewmats=viewmats, Ks=K, width=width, height=height, sh_degree=3, loss_by_range=by_range
    )
    if by_range:
        job = info["ranges_job"]
        held_heights = [job.held(c, rank)[1] - job.held(c, rank)[0] for c in range(world)]
        assert job.by_range and max(held_heights) < height  # a band of each camera, never its image
        held = torch.cat(held_rows(job, gt))
        l1, dssim, _ = loss_by_range.shares_of_step(job, render, held, _ssim)
        loss = 0.8 * l1 + 0.2 * dssim
        value = loss_by_range.step_mean(loss)
    else:
        loss = _whole_loss(render[0], gt[0])
        value = comm.all_reduce_sum(loss.detach()) / world
    loss.backward()
    return {"value": value, "viewmats": viewmats.grad, **{f"grad_{k}": v.grad for k, v in shard.items()}}


def _worker(rank: int, port: int, world: int, results) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        results[rank] = (_train_step(world, False), _train_step(world, True))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [3])
def test_a_loss_taken_in_bands_trains_as_the_whole_image_loss(world):
    """Every rank takes its bands' share of every camera's loss (the ground truth's rows sent by the
    camera's rank) and the Gaussians' and cameras' gradients equal those of each camera's rank
    taking its whole image's loss; the value each rank reports is the step's mean. (2 ranks: whole
    training runs, test_sharded; 5 ranks and other cuts: the bands alone, above.)"""
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), world, results), nprocs=world)
    for rank, (whole, banded) in sorted(results.items()):
        assert whole["grad_means"].abs().sum() > 0 and whole["viewmats"].abs().sum() > 0
        for key, want in whole.items():
            got = banded[key]
            scale = max(float(want.abs().max()), 1e-12)
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * scale), (rank, key, float((got - want).abs().max()))
