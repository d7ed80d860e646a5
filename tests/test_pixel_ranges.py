"""Pixel ranges: the cut of an image's rows by cost, and a sharded render by rows between gloo
processes equal to the render by camera (pixels, every gradient, densification statistics)."""

from __future__ import annotations

from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist.layouts.sharded.range_plan import (
    SHARE,
    cut,
    owned_pixels,
    rendered_rows,
    tile_costs,
    tile_rectangles,
)
from splatfacto_dist.render.tiles import tile_bounds, tile_grid


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


def test_the_reference_rasterizer_draws_each_pair_on_the_tiles_ranges_route_it_to():
    """One tile rule (`render.tiles`): the pixels the CPU reference composites for a pair are exactly
    the pixels of the tiles `tile_bounds` gives it, which decide the ranges' costs and routes."""
    from splatfacto_dist.render.raster import _tile_pixel_pairs

    width, height = 40, 40  # 3 x 3 tiles, the last column and row 8 px
    means2d = torch.tensor([[8.0, 8.0], [24.0, 40.0], [16.0, 16.0], [-30.0, -30.0], [39.5, 20.0]])
    radii = torch.tensor([4, 12, 16, 10, 0], dtype=torch.int32)
    x0, x1, y0, y1 = tile_bounds(means2d, radii, width, height)
    # centre -/+ radius in tiles, floored and ceiled, clipped: (0.25 +- 0.25), (1.5, 2.5 +- 0.75), (1 +- 1), outside
    assert x0.tolist()[:4] == [0, 0, 0, 0] and x1.tolist()[:4] == [1, 3, 2, 0]
    assert y0.tolist()[:4] == [0, 1, 0, 0] and y1.tolist()[:4] == [1, 3, 2, 0]
    gauss, pixel, _ = _tile_pixel_pairs(means2d, radii, torch.ones(5), torch.zeros(5, dtype=torch.long), width, height)
    for g in range(len(means2d)):
        drawn = torch.zeros(height, width, dtype=torch.bool)
        drawn.view(-1)[pixel[gauss == g]] = True
        tiles = torch.zeros(height, width, dtype=torch.bool)
        if radii[g] > 0:  # the rasterizer skips what was not projected
            tiles[int(y0[g]) * 16 : int(y1[g]) * 16, int(x0[g]) * 16 : int(x1[g]) * 16] = True
        assert torch.equal(drawn, tiles), g


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


def _render_and_backward(pixel_ranges: bool, absgrad: bool, world: int, tile_price: int = 0, statistics: bool = True):
    """This rank's render of its ring camera (depth included) from its shard, the gradients of a
    weighted loss on it, its densification statistics and the most pairs it held; `tile_price`
    moves the ranges' cuts (`pixels.balance`); `statistics` False: a render whose statistics nothing
    reads (after stop-split-at)."""
    from splatfacto_dist import comm
    from splatfacto_dist.densify.strategy import SynchronizedDefaultStrategy
    from splatfacto_dist.layouts.sharded import ShardedLayout
    from splatfacto_dist.scenes.scene import ring_cameras

    layout = ShardedLayout(pixel_ranges=pixel_ranges)
    layout._balance.tile_price = tile_price
    rows = _scene()
    shard = {k: v[layout.hold(len(v))].clone().requires_grad_() for k, v in rows.items()}
    rank = comm.rank()
    viewmats = ring_cameras(world)[rank : rank + 1].clone().requires_grad_()
    K = torch.tensor([[[172.8, 0.0, 96.0], [0.0, 172.8, 72.0], [0.0, 0.0, 1.0]]])
    strategy = SynchronizedDefaultStrategy(absgrad=absgrad, refine_scale2d_stop_iter=1)
    state = {"grad2d": None, "count": None, "radii": None}
    render, alpha, info = layout.render(
        shard, viewmats=viewmats, Ks=K, width=192, height=144, sh_degree=3, render_mode="RGB+ED", absgrad=absgrad,
        statistics=strategy.statistics_buffers(shard, state) if statistics else None,
    )  # fmt: skip
    strategy.step_pre_backward(shard, {}, state, 0, info)
    weights = torch.rand(render.shape, generator=torch.Generator().manual_seed(rank))
    ((render * weights).sum() + alpha.sum()).backward()
    if statistics:
        strategy._add_statistics(shard, state, info, layout)
    else:
        assert info["ranges_job"].stats is None and state["grad2d"] is None  # nothing allocated, nothing taken
    return {
        "render": render.detach(),
        "alpha": alpha.detach(),
        "viewmats": viewmats.grad,
        **{f"grad_{k}": v.grad for k, v in shard.items()},
        **{f"state_{k}": v for k, v in state.items()},
        "most_received": layout.record(len(shard["means"]))["most_received"],
        "cuts": info["ranges_job"].ranges if "ranges_job" in info else None,
    }


def _worker(rank: int, port: int, world: int, results) -> None:
    from splatfacto_dist.layouts.sharded import ranges

    ranges.PROJECTION_CHUNK = 128  # the shard of 200-300 rows replays in 2-3 chunks
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        for absgrad in (False, True):
            results[(rank, absgrad)] = (
                _render_and_backward(False, absgrad, world),
                _render_and_backward(True, absgrad, world),
                _render_and_backward(True, absgrad, world, tile_price=20 * SHARE),
                _render_and_backward(True, absgrad, world, statistics=False),
            )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("world", [2, 3])
def test_a_render_in_pixel_ranges_equals_the_render_by_camera(world):
    """Every rank renders a range of every image: the images, the gradients of every shard and camera,
    and the statistics (2D gradients summed per Gaussian and image before the norm, absgrad too; one
    count per image, not per range; screen radii) equal the render by camera, while the most pairs
    a rank holds at once fall; with tiles priced (other cuts) too. A render whose statistics are
    not read skips them and is otherwise the same."""
    results = mp.Manager().dict()
    mp.spawn(_worker, args=(free_port(), world, results), nprocs=world)
    moved = False
    for (rank, absgrad), (by_camera, by_rows, priced, unread) in sorted(results.items()):
        _assert_same_render(rank, absgrad, by_camera, by_rows)
        _assert_same_render(rank, absgrad, by_camera, priced)
        moved |= priced["cuts"] != by_rows["cuts"]
        for key, want in by_rows.items():  # no statistics taken: the same render and gradients
            if not key.startswith("state_") and isinstance(want, torch.Tensor):
                assert torch.allclose(unread[key], want, rtol=1e-4, atol=1e-5 * max(float(want.abs().max()), 1.0)), key
    assert moved, "the tile price did not move any cut"


def _assert_same_render(rank: int, absgrad: bool, by_camera: dict, by_rows: dict) -> None:
    assert by_camera["render"].abs().sum() > 1 and by_camera["state_count"].sum() > 50
    assert by_camera["grad_means"].abs().sum() > 0 and by_camera["viewmats"].abs().sum() > 0
    assert by_camera["state_grad2d"].sum() > 0 and by_camera["state_radii"].max() > 0
    for key, want in by_camera.items():
        if key in ("most_received", "cuts"):
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


def test_the_tile_price_is_the_fitted_time_of_a_tile_in_pair_cost_units():
    from splatfacto_dist.layouts.sharded.range_balance import MIN_SAMPLES, fitted_tile_price

    generator = torch.Generator().manual_seed(3)
    pairs = torch.randint(0, 50_000, (64,), generator=generator).tolist()
    tiles = torch.randint(0, 400, (64,), generator=generator).tolist()
    samples = [(p, t, 3 * p + 600 * t + 50) for p, t in zip(pairs, tiles)]  # a tile costs 200 pair units
    assert fitted_tile_price(samples) == 200
    assert fitted_tile_price(samples[: MIN_SAMPLES - 1]) is None  # too few to tell
    assert fitted_tile_price([(p, 7, y) for p, _, y in samples]) is None  # tiles never vary
    assert fitted_tile_price([(p, t, 1000 * t - p) for p, t, _ in samples]) is None  # time falls with pairs
    assert fitted_tile_price([(p, t, 3 * p - 600 * t + 10**9) for p, t, _ in samples]) == 0  # never negative


def test_the_running_fit_keeps_the_sums_of_its_window_exactly():
    from splatfacto_dist.layouts.sharded.range_balance import RunningFit, fitted_tile_price

    generator = torch.Generator().manual_seed(4)
    pairs = torch.randint(0, 50_000, (700,), generator=generator).tolist()
    tiles = torch.randint(0, 400, (700,), generator=generator).tolist()
    noise = torch.randint(-500, 500, (700,), generator=generator).tolist()
    samples = [
        (p, t, 3 * p + (600 if i < 300 else 900) * t + 50 + e) for i, (p, t, e) in enumerate(zip(pairs, tiles, noise))
    ]
    running, fresh = RunningFit(window=200), RunningFit(window=200)
    for sample in samples:
        running.add(sample)
    for sample in samples[-200:]:
        fresh.add(sample)
    assert running.sums == fresh.sums and list(running.samples) == samples[-200:]
    assert running.price() == fitted_tile_price(samples[-200:]) == 300  # the latest samples' price, not the first
    window = torch.tensor(samples[-200:], dtype=torch.float64)  # the same fit in floats
    design = torch.stack([window[:, 0], window[:, 1], torch.ones(200, dtype=torch.float64)], 1)
    a, b, _ = torch.linalg.lstsq(design, window[:, 2:]).solution.flatten().tolist()
    assert round(b / a) == running.price()


def test_a_tile_price_gives_the_range_of_empty_tiles_fewer_of_them():
    from splatfacto_dist.layouts.sharded.range_balance import RangeBalance

    costs = [0] * 60 + [100] * 40  # the top of the image empty, its bottom full of pairs
    balance = RangeBalance()
    by_pairs = cut(balance.tile_costs(costs), 2)
    balance.tile_price = 100
    priced = cut(balance.tile_costs(costs), 2)
    assert by_pairs == [(0, 80), (80, 100)] and priced == [(0, 65), (65, 100)], (by_pairs, priced)


def _balance_worker(rank: int, port: int, world: int, results) -> None:
    import time as clock

    from splatfacto_dist.layouts.sharded.range_balance import RangeBalance

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=120)
    )
    try:
        balance, waits = RangeBalance(), []
        costs = [0] * 30 + [SHARE] * 30
        for render in range(8):
            balance.settle()
            waits.append(balance.last_wait_s)
            for camera in range(3):
                timer = balance.time(costs, cut(balance.tile_costs(costs), world), torch.device("cpu"))
                clock.sleep(0.02 * rank + 0.0003 * (render % 3))  # the last rank the slowest, by far (a busy host too)
                timer.stop()
        balance.settle()
        waits.append(balance.last_wait_s)
        results[rank] = (balance.tile_price, list(balance._fit.samples), waits)
    finally:
        dist.destroy_process_group()


def test_every_rank_learns_the_same_price_from_every_ranks_range_times():
    """The times are each rank's own, so only their exchange makes the cuts agree: every rank holds
    the same samples and price; the faster ranks' wait for the slowest is what they lacked of its time."""
    world = 2
    results = mp.Manager().dict()
    mp.spawn(_balance_worker, args=(free_port(), world, results), nprocs=world)
    prices, samples = {results[r][0] for r in range(world)}, [results[r][1] for r in range(world)]
    assert len(prices) == 1 and samples[0] == samples[1] and len(samples[0]) == 8 * 3 * world
    fast, slow = results[0][2], results[world - 1][2]
    assert fast[0] == slow[0] == 0  # nothing was timed before the first render
    assert all(w > 3 * 0.015 for w in fast[1:]) and all(w == 0 for w in slow[1:]), (fast, slow)
