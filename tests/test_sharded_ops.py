"""The pieces of sharded training alone: id-keyed draws, the rebalance plan, and a rebalance and a
checkpoint gather between two gloo processes."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import build_model, free_port

from splatfacto_dist import comm
from splatfacto_dist.densify import ops
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES
from splatfacto_dist.layouts.sharded import ShardedLayout, exchange, saving
from splatfacto_dist.layouts.sharded.exchange import project_pairs
from splatfacto_dist.layouts.sharded.rebalance import rebalance_plan
from splatfacto_dist.layouts.sharded.rows import RowCodec


def test_split_draws_depend_on_ids_not_on_storage_order():
    ids = torch.tensor([5, 17, 2**40 + 3, 9])
    order = torch.tensor([2, 0, 3, 1])
    assert torch.equal(ops.keyed_normal(ids, 42, 7, 6)[order], ops.keyed_normal(ids[order], 42, 7, 6))
    assert not torch.equal(ops.keyed_normal(ids, 42, 7, 6), ops.keyed_normal(ids, 42, 8, 6))
    samples = ops.keyed_normal(torch.arange(20000), 1, 1, 3)
    assert abs(float(samples.mean())) < 0.05 and abs(float(samples.std()) - 1) < 0.05
    children = torch.cat([ops.child_ids(ids, 3, k) for k in range(3)])
    assert len(set(children.tolist()) | set(ids.tolist())) == 4 * len(ids)


def test_pairs_sent_to_renderers_are_recomputed_in_backward_not_kept():
    """Between forward and backward the owner keeps nothing per sent pair (the activated copies, SH
    coefficients and projections are recomputed); the values and gradients are those of projecting
    and colouring the rows for each pair's camera, as the rasterizer would."""
    from splatfacto_dist.layouts.sharded.exchange import camera_meta, camera_rows
    from splatfacto_dist.render.raster import activate, camera_centres, project, view_colors

    generator = torch.Generator().manual_seed(0)
    n = 400
    rows = {
        "means": torch.randn((n, 3), generator=generator) + torch.tensor([0.0, 0.0, 4.0]),
        "quats": torch.randn((n, 4), generator=generator),
        "scales": torch.randn((n, 3), generator=generator) - 3,
        "opacities": torch.randn((n, 1), generator=generator),
        "features_dc": torch.randn((n, 3), generator=generator),
        "features_rest": torch.randn((n, 15, 3), generator=generator),
    }
    rows = {k: v.requires_grad_() for k, v in rows.items()}
    K = torch.tensor([[50.0, 0, 32], [0, 50, 24], [0, 0, 1]])
    viewmats = torch.eye(4).repeat(3, 1, 1)
    viewmats[1:, :3, 3] = torch.tensor([[0.1, 0.0, 0.0], [0.0, 0.2, 0.3]])
    cameras = camera_rows(viewmats.requires_grad_(), K.expand(3, 3, 3), torch.device("cpu"))
    meta = camera_meta(3, 64, 48, False, True, None)
    counts = [1, 2]  # rank 0's camera, then rank 1's two
    saved = []
    parameters = {v.untyped_storage().data_ptr() for v in rows.values()}

    def keep(tensor: torch.Tensor) -> torch.Tensor:  # what stays alive for backward, beyond the parameters
        if tensor.untyped_storage().data_ptr() not in parameters:
            saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(keep, lambda tensor: tensor):
        packed, order, send_counts = project_pairs(rows, counts, cameras, meta, 3)
    assert sum(saved) < 1024 * 3, saved  # the cameras, once per camera; without the recomputation: ~0.5 KB a pair
    assert packed.shape == (len(order), 12) and sum(send_counts) == len(order)
    weights = torch.randn(packed.shape, generator=generator)
    weights[:, -3:] = 0  # depth (sorting only), radius and camera carry no gradient
    inputs = list(rows.values()) + [viewmats]
    grads = torch.autograd.grad((packed * weights).sum(), inputs)

    direct = {k: v.detach().clone().requires_grad_() for k, v in rows.items()}
    poses = viewmats.detach().clone().requires_grad_()
    active = activate(direct)
    blocks, indices = [], []
    for camera, local in ((0, 0), (1, 0), (2, 1)):
        radii, means2d, depths, conics, compensations = project(
            active["means"], active["quats"], active["scales"], poses[camera : camera + 1], K[None], 64, 48, True
        )
        (index,) = torch.nonzero(radii[0] > 0, as_tuple=True)
        assert 50 < len(index) < n  # the camera sees part of the rows: the selection is tested
        centre = camera_centres(poses[camera : camera + 1])[0]  # -R^T t, as the replicated colours
        colors = view_colors(active["means"][index], active["colors"][index], centre, 3)
        opacities = (active["opacities"] * compensations[0])[index, None]
        columns = [means2d[0][index], conics[0][index], opacities, colors, depths[0][index, None]]
        ids = torch.full((len(index), 1), float(local))
        blocks.append(torch.cat([*columns, radii[0][index, None].float(), ids], 1))
        indices.append(index)
    expected = torch.cat(blocks)
    assert torch.equal(order, torch.cat(indices)) and send_counts == [
        len(indices[0]),
        len(indices[1]) + len(indices[2]),
    ]
    assert torch.allclose(packed, expected, atol=1e-6)
    want = torch.autograd.grad((expected * weights).sum(), list(direct.values()) + [poses])
    for got, wanted in zip(grads, want):
        assert torch.allclose(got, wanted, atol=1e-5)


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
        assert layout.after_refine(params, optimizers, state, (1 - rank, rank, 0)) == (1, 1, 0)
        layout.total = 14
        layout.verify_total(len(params["means"]))
        ids = state["ids"]
        means = params["means"][:, 0]
        moment = optimizers["means"].state[params["means"]]["exp_avg"][:, 0]
        rest = params["features_rest"][:, 0, 0]
        consistent = bool(
            torch.equal(means, ids.float()) and torch.equal(moment, 2 * ids.float()) and torch.equal(rest, ids.float())
        )
        consistent &= bool(torch.equal(state["grad2d"], 3 * ids.float()))
        chunks = list(comm.gather_rows_to_main(len(ids), lambda a, b: params["means"].detach()[a:b], 3))
        gathered = [(start, tuple(chunk.shape)) for start, chunk in chunks]
        results[rank] = (len(ids), sorted(ids.tolist()), consistent, gathered)
    finally:
        dist.destroy_process_group()


def test_rebalance_moves_gaussians_with_their_moments_statistics_and_ids():
    results = mp.Manager().dict()
    mp.spawn(_rebalance_worker, args=(free_port(), results), nprocs=2)
    (n0, ids0, ok0, gathered), (n1, ids1, ok1, _) = results[0], results[1]
    assert (n0, n1) == (7, 7)
    assert sorted(ids0 + ids1) == list(range(10)) + [1000, 1001, 1002, 1003]
    assert ok0 and ok1, "a moved Gaussian lost its moments, statistics or id"
    assert gathered == [(0, (3, 3)), (3, (3, 3)), (6, (1, 3)), (7, (3, 3)), (10, (3, 3)), (13, (1, 3))]


def test_a_save_makes_bounded_chunks_and_only_reads_the_live_optimizer_state(monkeypatch):
    """No save packs more than SAVE_CHUNK_BYTES of Gaussians at once (a model at capacity has no room
    for its shard twice on its GPU), the saved model is the live one, and the live Adam state is
    left as it was (a save once wrote the gathered model's moments into it)."""
    model = build_model(random_init=False, layout="sharded")
    params = model.gauss_params
    optimizers = SimpleNamespace(
        optimizers={name: torch.optim.Adam([params[name]], lr=0.01) for name in GAUSSIAN_NAMES}
    )
    for p in params.values():
        p.grad = torch.randn_like(p)
    for optimizer in optimizers.optimizers.values():
        optimizer.step()
    live = {name: dict(optimizers.optimizers[name].state[params[name]]) for name in GAUSSIAN_NAMES}
    width = RowCodec(params, optimizers.optimizers, {"ids": model.strategy_state["ids"]}).width
    monkeypatch.setattr(saving, "SAVE_CHUNK_BYTES", 7 * 4 * width)
    packed_rows = []
    pack = RowCodec.pack

    def recording_pack(self, params, optimizers, state, rows):
        packed_rows.append(len(rows))
        return pack(self, params, optimizers, state, rows)

    monkeypatch.setattr(RowCodec, "pack", recording_pack)
    whole = model.layout.gather(params, optimizers.optimizers, model.strategy_state["ids"], {})
    assert max(packed_rows) == 7 and sum(packed_rows) == len(params["means"]) == 300
    assert torch.equal(whole.ids, model.strategy_state["ids"])
    for name in GAUSSIAN_NAMES:
        assert torch.equal(whole.params[name], params[name])
        now = optimizers.optimizers[name].state[params[name]]
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(whole.moments[name][key], live[name][key])
            assert now[key] is live[name][key]  # the live tensors, unreplaced
            assert whole.moments[name][key] is not live[name][key]  # the save's own copy


def _colour_scene():
    """600 Gaussians with strongly view-dependent colour (SH degree 3), drawn alike on every rank."""
    from splatfacto_dist.scenes.scene import ground_truth_gaussians

    generator = torch.Generator().manual_seed(0)
    truth = ground_truth_gaussians()
    n = 600
    rows = {
        "means": truth["means"][:n],
        "quats": torch.randn((n, 4), generator=generator),
        "scales": truth["scales"][:n],
        "opacities": torch.zeros((n, 1)),
        "features_dc": torch.randn((n, 3), generator=generator),
        "features_rest": 0.5 * torch.randn((n, 15, 3), generator=generator),
    }
    weights = torch.rand((2, 36, 48, 3), generator=generator)
    return rows, weights


def _camera_gradient(layout, rows, weights, cameras: slice) -> torch.Tensor:
    """d(weighted render)/d(viewmats) of the ring cameras `cameras`, rendered from `rows` by `layout`."""
    from splatfacto_dist.scenes.scene import ring_cameras

    viewmats = ring_cameras(2)[cameras].clone().requires_grad_()
    K = torch.tensor([[[43.2, 0.0, 24.0], [0.0, 43.2, 18.0], [0.0, 0.0, 1.0]]]).repeat(len(viewmats), 1, 1)
    render, _, _ = layout.render(rows, viewmats=viewmats, Ks=K, width=48, height=36, sh_degree=3)
    (grad,) = torch.autograd.grad((render * weights[cameras]).sum(), viewmats)
    return grad


def test_cameras_learn_through_the_owners_projection_and_colour_as_when_replicated(monkeypatch):
    """The gradient of a render with respect to its cameras (a camera-pose optimizer's) equals the
    replicated render's, the colour's dependence on the view direction included. All of it comes
    back through the gathered cameras (the owners project and colour): without their gradient the
    render does not depend on its cameras at all."""
    from splatfacto_dist.layouts.replicated import ReplicatedLayout
    from splatfacto_dist.scenes.scene import ring_cameras

    rows, weights = _colour_scene()
    replicated = _camera_gradient(ReplicatedLayout(), rows, weights, slice(0, 2))
    assert torch.allclose(
        _camera_gradient(ShardedLayout(), rows, weights, slice(0, 2)), replicated, rtol=1e-4, atol=1e-5
    )
    monkeypatch.setattr(exchange.AllCameras, "apply", lambda local, counts: local.detach())
    K = torch.tensor([[[43.2, 0.0, 24.0], [0.0, 43.2, 18.0], [0.0, 0.0, 1.0]]])
    render, _, _ = ShardedLayout().render(
        rows, viewmats=ring_cameras(2)[:1].requires_grad_(), Ks=K, width=48,
        height=36, sh_degree=3,
    )  # fmt: skip
    assert render.abs().sum() > 0 and not render.requires_grad


def _cropped_view(layout, shard, rows):
    """Rank 0's viewer render (depth included) with a crop box, rank 1 serving it without knowing
    the box, next to the replicated render of it and of the whole scene."""
    from nerfstudio.data.scene_box import OrientedBox

    from splatfacto_dist.layouts.replicated import ReplicatedLayout
    from splatfacto_dist.scenes.scene import ring_cameras

    box = OrientedBox(R=torch.eye(3), T=rows["means"].mean(0), S=torch.full((3,), 1.6))
    view = dict(viewmats=ring_cameras(2)[:1], Ks=torch.tensor([[[43.2, 0.0, 24.0], [0.0, 43.2, 18.0], [0.0, 0.0, 1.0]]]),
                width=48, height=36, sh_degree=3, render_mode="RGB+ED")  # fmt: skip
    with torch.no_grad():
        if comm.rank() == 0:
            got = layout.render(shard, crop=box, **view)[0]
        else:
            no_cameras = {"viewmats": torch.zeros((0, 4, 4)), "Ks": torch.zeros((0, 3, 3)), "width": 0, "height": 0}
            layout.render(shard, sh_degree=3, **no_cameras)
            got = None
        want = ReplicatedLayout().render(rows, crop=box, **view)[0]
        whole = ReplicatedLayout().render(rows, **view)[0]
    return got, want, whole


def _camera_worker(rank: int, port: int, results) -> None:
    from splatfacto_dist.layouts.replicated import ReplicatedLayout

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        rows, weights = _colour_scene()
        layout = ShardedLayout()
        shard = {k: v[layout.hold(len(v))] for k, v in rows.items()}
        mine = slice(rank, rank + 1)  # each rank renders one camera from every rank's Gaussians
        results[rank] = (
            _camera_gradient(layout, shard, weights, mine),
            _camera_gradient(ReplicatedLayout(), rows, weights, mine),
        )
        results[f"crop{rank}"] = _cropped_view(layout, shard, rows)
    finally:
        dist.destroy_process_group()


def test_two_ranks_cameras_get_the_whole_gradient_of_their_render():
    """2 gloo ranks, each owning half of the Gaussians: a camera's gradient is that of its render
    from the whole model (it came through the owners' exchange, which averages). A viewer's crop
    box (which only the viewer's rank knows) crops every owner's Gaussians."""
    results = mp.Manager().dict()
    mp.spawn(_camera_worker, args=(free_port(), results), nprocs=2)
    for rank in (0, 1):
        got, want = results[rank]
        assert want.abs().max() > 1e-3
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-5), float((got - want).abs().max())
    got, want, whole = results["crop0"]
    assert not torch.allclose(want, whole, atol=1e-2)  # the box leaves part of the scene out
    assert want[..., :3].abs().sum() > 1  # and keeps some of it
    assert torch.allclose(got, want, atol=1e-5), float((got - want).abs().max())


def _empty_side_worker(rank: int, port: int, results, pixel_ranges: bool) -> None:
    from datetime import timedelta

    from splatfacto_dist.densify.strategy import SynchronizedDefaultStrategy
    from splatfacto_dist.scenes.scene import ring_cameras

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        rows, _ = _colour_scene()
        layout = ShardedLayout(pixel_ranges=pixel_ranges)
        shard = {k: v[layout.hold(len(v))].clone() for k, v in rows.items()}
        if rank == 0:
            shard["means"] = shard["means"] + torch.tensor([0.0, 0.0, 1e3])  # far out of every view
        shard = {k: v.requires_grad_() for k, v in shard.items()}  # a default run: no camera optimizer
        viewmats = ring_cameras(2)[rank : rank + 1]
        if rank == 0:
            viewmats = viewmats.clone()
            viewmats[0, 2, 3] = -1e4  # rank 0's camera sees no Gaussian either
        K = torch.tensor([[[172.8, 0.0, 96.0], [0.0, 172.8, 72.0], [0.0, 0.0, 1.0]]])  # 9 tile rows to cut
        strategy = SynchronizedDefaultStrategy(absgrad=True)
        state = {"grad2d": None, "count": None, "radii": None}
        render, _, info = layout.render(
            shard, viewmats=viewmats, Ks=K, width=192, height=144, sh_degree=3, absgrad=True,
            statistics=strategy.statistics_buffers(shard, state),
        )  # fmt: skip
        strategy.step_pre_backward(shard, {}, state, 0, info)
        render.sum().backward()  # both ranks reach the exchanges' backward, or this hangs until the timeout
        strategy._add_statistics(shard, state, {**info, "views_in_loss": 1}, layout)
        results[rank] = (
            layout.record(len(shard["means"]))["most_received"],
            float(render.abs().sum()),
            float(shard["means"].grad.abs().sum()),
            float(state["count"].sum()),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("pixel_ranges", [False, True])
def test_a_rank_that_sends_and_receives_nothing_still_takes_part_in_backward_and_statistics(pixel_ranges):
    """Rank 0's shard is out of every view and its camera sees nothing: it sends no pair, and
    receives none (by camera) or only its range of rank 1's image (by rows). With gradients on the
    parameters only (a default run), its backward still reaches every exchange and its
    densification statistics still take their all-to-all, so rank 1 trains."""
    results = mp.Manager().dict()
    mp.spawn(_empty_side_worker, args=(free_port(), results, pixel_ranges), nprocs=2)
    (received0, image0, grad0, count0), (received1, image1, grad1, count1) = results[0], results[1]
    assert image0 == 0 and grad0 == 0 and count0 == 0
    assert image1 > 1 and grad1 > 0 and count1 > 50
    if pixel_ranges:  # rank 1's image in two ranges: each rank receives about half of its Gaussians
        assert 0 < received0 < count1 and 0 < received1 < count1 and received0 + received1 >= count1
    else:
        assert received0 == 0 and received1 == count1


def test_packed_rows_are_read_by_their_named_columns():
    """The camera rows, the cameras' host rows and the projected pairs' rows are read by the names
    `exchange` gives their columns: each name picks what its writer put there."""
    from nerfstudio.data.scene_box import OrientedBox

    from splatfacto_dist.layouts.sharded.exchange import _crop_of, camera_meta, camera_rows

    viewmats, K = torch.arange(32.0).reshape(2, 4, 4), torch.arange(18.0).reshape(2, 3, 3)
    cameras = camera_rows(viewmats, K, torch.device("cpu"))
    assert torch.equal(cameras[1, exchange.VIEWMAT].reshape(4, 4), viewmats[1])
    assert torch.equal(cameras[1, exchange.K].reshape(3, 3), K[1])
    box = OrientedBox(R=torch.eye(3) * 2, T=torch.tensor([1.0, 2.0, 3.0]), S=torch.tensor([4.0, 5.0, 6.0]))
    meta = camera_meta(2, 64, 48, True, False, box)
    flags = [int(meta[1, c]) for c in (exchange.WIDTH, exchange.HEIGHT, exchange.DEPTH_FLAG, exchange.ANTIALIASED)]
    assert flags == [64, 48, 1, 0]
    crop = _crop_of(meta[1])
    assert torch.equal(crop.R, box.R) and torch.equal(crop.T, box.T) and torch.equal(crop.S, box.S)
    assert _crop_of(camera_meta(1, 64, 48, False, False, None)[0]) is None
    # pairs: 12 floats (colour 3), or 13 when a camera of the render asks for depth (colour 4)
    assert exchange.pair_width(camera_meta(1, 64, 48, False, False, None)) == 12 and exchange.pair_width(meta) == 13
    assert exchange.pair_columns(12) == [2, 3, 1, 3, 1, 1, 1] and exchange.pair_columns(13) == [2, 3, 1, 4, 1, 1, 1]
    row = torch.arange(13.0)[None]
    assert row[0, exchange.MEANS2D].tolist() == [0, 1] and int(row[0, exchange.MEAN_Y]) == 1
    assert row[0, exchange.CONIC].tolist() == [2, 3, 4] and int(row[0, exchange.OPACITY]) == 5
    assert [int(row[0, c]) for c in (exchange.DEPTH, exchange.RADIUS, exchange.CAMERA)] == [10, 11, 12]
    assert exchange.colour_channels(13) == 4 and exchange.FIXED_COLUMNS == 9
