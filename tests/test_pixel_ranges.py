"""Pixel ranges: the cut of an image's rows by cost, and a sharded render by rows between gloo
processes equal to the render by camera (pixels, every gradient, densification statistics)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist.pixels.plan import SHARE, cut, owned_pixels, rendered_rows, tile_costs, tile_grid, tile_rectangles


def test_a_cut_covers_the_tiles_in_contiguous_ranges_balanced_by_cost():
    costs = [0, 0, 10, 10, 10, 10, 0, 40]  # 80 in all
    ranges = cut(costs, 4)
    assert ranges[0][0] == 0 and ranges[-1][1] == 8 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    # Running costs at the boundaries 0..8: 0 0 0 10 20 30 40 40 80; shares 20, 40, 60. 20 is at
    # boundary 4; 40 at 6 and 7 (ties: the earlier); 60 is 20 from 6, 7 and 8 (the earliest, so
    # rank 2's range is empty: no cut splits the last tile's 40).
    assert ranges == [(0, 4), (4, 6), (6, 6), (6, 8)]
    assert cut(costs, 4) == ranges  # the same numbers give the same cut
    assert cut([0, 0, 0, 0], 2) == [(0, 2), (2, 4)]  # nothing visible: equal numbers of tiles
    assert cut([5, 5], 3) == [(0, 1), (1, 1), (1, 2)]  # more ranks than tiles: an empty range
    assert cut([1, 2, 3], 1) == [(0, 3)]
    with pytest.raises(ValueError, match="cannot cut an image for 0 ranks"):
        cut([1], 0)


def test_the_cut_by_bisection_is_the_rule_a_scan_gives():
    """Each cut: the earliest boundary, not before the previous cut, whose running cost is nearest
    its share; checked against a plain scan on costs with runs of zeros and ties."""
    generator = torch.Generator().manual_seed(3)
    for trial in range(300):
        tiles = int(torch.randint(1, 40, (1,), generator=generator))
        costs = (
            torch.randint(0, 4, (tiles,), generator=generator) * torch.randint(0, 2, (tiles,), generator=generator)
        ).tolist()
        ranks = int(torch.randint(1, 10, (1,), generator=generator))
        weights = costs if sum(costs) else [1] * tiles
        running = [0]
        for w in weights:
            running.append(running[-1] + w)
        bounds = [0]
        for k in range(1, ranks):
            share = running[-1] * k / ranks
            bounds.append(min(range(bounds[-1], tiles + 1), key=lambda t: (abs(running[t] - share), t)))
        assert cut(costs, ranks) == list(zip(bounds, bounds[1:] + [tiles])), (trial, costs, ranks)


def test_a_range_of_tiles_renders_the_rows_it_spans_and_keeps_its_own_tiles():
    # 40 x 40 px: 3 x 3 tiles, the last column and row 8 px. Tiles 2..6: the last of row 0, all of
    # row 1, the first of row 2.
    assert tile_grid(40, 40) == (3, 3)
    assert rendered_rows((2, 7), 40, 40) == (0, 40) and rendered_rows((3, 6), 40, 40) == (16, 32)
    assert rendered_rows((4, 4), 40, 40) == (0, 0)
    assert tile_rectangles((2, 7), 40, 40) == [(2, 3, 0, 1), (0, 3, 1, 2), (0, 1, 2, 3)]
    assert tile_rectangles((4, 5), 40, 40) == [(1, 2, 1, 2)]
    mask = owned_pixels((2, 7), 40, 40, torch.device("cpu"))[..., 0]
    assert mask.shape == (40, 40)
    assert mask[:16, 32:].all() and not mask[:16, :32].any()  # row 0: only its last tile
    assert mask[16:32].all()  # row 1: all of it
    assert mask[32:, :16].all() and not mask[32:, 16:].any()  # row 2: only its first tile
    ranges = cut([1] * 9, 4)
    owned = sum(
        torch.nn.functional.pad(owned_pixels(r, 40, 40, torch.device("cpu")), (0, 0, 0, 0, top, 40 - bottom))
        for r, (top, bottom) in ((r, rendered_rows(r, 40, 40)) for r in ranges)
        if r[1] > r[0]
    )
    assert torch.equal(owned, torch.ones(40, 40, 1))  # every pixel is one range's


def test_tile_costs_spread_each_pair_over_the_tiles_it_touches():
    means2d = torch.tensor([[8.0, 8.0], [24.0, 40.0], [40.0, 8.0], [-30.0, -30.0]])
    radii = torch.tensor([4.0, 12.0, 3.0, 10.0])
    # tile (0, 0); the 3 x 2 tiles x 0..2, y 1..2 (24 +- 12 px, 40 +- 12 px); tile (2, 0); none (outside)
    big = SHARE // 6
    expected = torch.tensor([[SHARE, 0, SHARE], [big, big, big], [big, big, big]]).reshape(-1)
    assert torch.equal(tile_costs(means2d, radii, 40, 40), expected)


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
    from splatfacto_dist.sharded import ranges

    ranges.PROJECTION_CHUNK = 128  # the shard of 200-300 rows replays in 2-3 chunks
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
