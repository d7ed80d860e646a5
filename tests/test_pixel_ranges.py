"""Pixel ranges: the cut of an image's rows by cost, and a sharded render by rows between gloo
processes equal to the render by camera (pixels, every gradient, densification statistics)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist.pixels.plan import cut, row_costs, tile_rows


def test_a_cut_covers_the_image_in_tile_aligned_ranges_balanced_by_cost():
    costs = [0, 0, 10, 10, 10, 10, 0, 40]  # 8 tile rows, 80 in all
    ranges = cut(120, 4, costs)  # the last tile row is 8 px tall
    assert ranges[0][0] == 0 and ranges[-1][1] == 120
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    assert all(top % 16 == 0 for top, _ in ranges)
    # Running costs at the boundaries 0..8: 0 0 0 10 20 30 40 40 80; shares 20, 40, 60. 20 is at
    # boundary 4; 40 at 6 and 7 (ties: the earlier); 60 is 20 from 6, 7 and 8 (the earliest, so
    # rank 2's range is empty: no cut splits the last row's 40).
    assert ranges == [(0, 64), (64, 96), (96, 96), (96, 120)]
    assert cut(120, 4, costs) == ranges  # the same numbers give the same cut
    assert cut(64, 2, [0, 0, 0, 0]) == [(0, 32), (32, 64)]  # nothing visible: equal rows
    assert cut(32, 3, [5, 5]) == [(0, 16), (16, 16), (16, 32)]  # more ranks than rows: an empty range
    assert cut(48, 1, [1, 2, 3]) == [(0, 48)]
    with pytest.raises(ValueError, match="3 row costs for an image of 2 tile rows"):
        cut(32, 2, [1, 1, 1])


def test_row_costs_count_the_pairs_touching_each_tile_row():
    means_y = torch.tensor([8.0, 40.0, 100.0, -30.0])
    radii = torch.tensor([4.0, 20.0, 3.0, 10.0])
    # rows 0; 1-3 (y 20..60); 6; none (above the image)
    assert row_costs(means_y, radii, 112).tolist() == [1, 1, 1, 1, 0, 0, 1]
    assert tile_rows(112) == 7


def _scene():
    """600 Gaussians with view-dependent colour, half of them elongated, some large enough to span
    several ranges."""
    from splatfacto_dist.scenes.scene import ground_truth_gaussians

    generator = torch.Generator().manual_seed(0)
    truth = ground_truth_gaussians()
    n = 600
    scales = truth["scales"][:n].clone()
    scales[::7] += 1.5  # every 7th Gaussian ~4.5x larger: it crosses range borders
    scales[::2, 0] += 0.7  # and every other one elongated, so that its rotation matters
    return {
        "means": truth["means"][:n],
        "quats": torch.randn((n, 4), generator=generator),
        "scales": scales,
        "opacities": torch.zeros((n, 1)),
        "features_dc": torch.randn((n, 3), generator=generator),
        "features_rest": 0.5 * torch.randn((n, 15, 3), generator=generator),
    }


def _render_and_backward(pixel_ranges: bool, absgrad: bool, world: int):
    """This rank's render of its ring camera (depth included) from its shard, the gradients of a
    weighted loss on it, its densification statistics and the most pairs it held."""
    from splatfacto_dist import comm
    from splatfacto_dist.scenes.scene import ring_cameras
    from splatfacto_dist.sharded import ShardedLayout
    from splatfacto_dist.strategy import SynchronizedDefaultStrategy

    layout = ShardedLayout(pixel_ranges=pixel_ranges)
    rows = _scene()
    shard = {k: v[layout.block(len(v))].clone().requires_grad_() for k, v in rows.items()}
    rank = comm.rank()
    viewmats = ring_cameras(world)[rank : rank + 1].clone().requires_grad_()
    K = torch.tensor([[[172.8, 0.0, 96.0], [0.0, 172.8, 72.0], [0.0, 0.0, 1.0]]])
    render, alpha, info = layout.render(
        shard, viewmats=viewmats, Ks=K, width=192, height=144, sh_degree=3, render_mode="RGB+ED", absgrad=absgrad
    )
    strategy = SynchronizedDefaultStrategy(layout=layout, absgrad=absgrad, refine_scale2d_stop_iter=1)
    strategy.step_pre_backward(shard, {}, {}, 0, info)
    weights = torch.rand(render.shape, generator=torch.Generator().manual_seed(rank))
    ((render * weights).sum() + alpha.sum()).backward()
    state = {"grad2d": None, "count": None, "radii": None}
    strategy._update_state(shard, state, info)
    return {
        "render": render.detach(),
        "alpha": alpha.detach(),
        "viewmats": viewmats.grad,
        **{f"grad_{k}": v.grad for k, v in shard.items()},
        **{f"state_{k}": v for k, v in state.items()},
        "most_received": layout.record(len(shard["means"]))["most_received"],
    }


def _worker(rank: int, port: int, world: int, results) -> None:
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        for absgrad in (False, True):
            results[(rank, absgrad)] = (
                _render_and_backward(False, absgrad, world),
                _render_and_backward(True, absgrad, world),
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_a_render_by_rows_equals_the_render_by_camera(world):
    """Every rank renders a range of every image: the images, the gradients of every shard and camera,
    and the statistics (2D gradients summed per Gaussian and image before the norm, absgrad too; one
    count per image, not per range; screen radii) equal the render by camera, while the most pairs
    a rank holds at once fall."""
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), world, results), nprocs=world)
    for (rank, absgrad), (by_camera, by_rows) in sorted(results.items()):
        assert by_camera["render"].abs().sum() > 1 and by_camera["state_count"].sum() > 50
        assert by_camera["grad_means"].abs().sum() > 0 and by_camera["viewmats"].abs().sum() > 0
        assert by_camera["state_grad2d"].sum() > 0 and by_camera["state_radii"].max() > 0
        for key, want in by_camera.items():
            if key == "most_received":
                continue
            got = by_rows[key]
            assert got.shape == want.shape, (key, got.shape, want.shape)
            scale = float(want.abs().max())
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0)), (
                rank,
                absgrad,
                key,
                float((got - want).abs().max()),
                scale,
            )
        assert by_rows["most_received"] < by_camera["most_received"], (rank, by_rows["most_received"])
