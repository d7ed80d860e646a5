"""Cameras dealt to steps by measured cost (camera_costs.py): every camera still once an epoch, each
step's cameras of like cost on every rank, the same deal on every rank, and a resume that finishes
the epoch the saving run began."""

from __future__ import annotations

import random
import time
from collections import Counter
from statistics import mean

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port

from splatfacto_dist import comm
from splatfacto_dist.data.camera_costs import NEIGHBOURS, CameraCosts, deal_by_cost, dealt_by
from splatfacto_dist.data.datamanager import CameraSchedule
from splatfacto_dist.reporting.profiling import DeviceTimer


def epoch_of(n: int, world: int, costs, epoch: int, per_rank: int = 1):
    """Each step's cameras on every rank: with `costs`, shards and epoch dealt by them."""
    schedules = [CameraSchedule(n, world, r, world, per_rank, seed=5, deal=costs) for r in range(world)]
    spe = schedules[0].steps_per_epoch
    return [[s.cameras_for_step(t, costs) for s in schedules] for t in range(epoch * spe, (epoch + 1) * spe)]


def view_costs(n: int, seed: int = 11) -> list:
    """Costs in no relation to the camera index, spread as views that see more or less of a scene
    (log-normal, sd 25%)."""
    rng = random.Random(seed)
    return [int(5000 * rng.lognormvariate(0, 0.25)) for _ in range(n)]


def step_spread(steps, costs) -> float:
    """Mean over steps of (slowest rank - fastest rank) / mean rank: what the ranks wait."""
    spreads = []
    for step in steps:
        per_rank = [sum(costs[c] for c in cams) for cams in step]
        spreads.append((max(per_rank) - min(per_rank)) / mean(per_rank))
    return mean(spreads)


@pytest.mark.parametrize("world, n, per_rank", [(2, 61, 1), (4, 300, 1), (3, 37, 1), (2, 48, 3)])
def test_balanced_epochs_see_every_camera_and_pair_cameras_of_like_cost(world, n, per_rank):
    costs = view_costs(n)
    for epoch in (1, 2):
        balanced, seeded = epoch_of(n, world, costs, epoch, per_rank), epoch_of(n, world, None, epoch, per_rank)
        seen = Counter(c for step in balanced for cams in step for c in cams)
        assert sorted(seen) == list(range(n))  # every camera, and as often as the seeded order shows them
        assert sorted(seen.values()) == sorted(Counter(c for s in seeded for cams in s for c in cams).values())
        assert step_spread(balanced, costs) < step_spread(seeded, costs) / 2, (
            step_spread(balanced, costs),
            step_spread(seeded, costs),
        )


def test_balance_keeps_the_order_random_and_varies_the_pairs():
    costs = view_costs(40)
    one, two = epoch_of(40, 2, costs, 1), epoch_of(40, 2, costs, 2)
    firsts = [step[0][0] for step in one]
    assert sorted(firsts, key=lambda c: costs[c]) != firsts  # steps do not go from cheap to costly
    pairs = lambda steps: {tuple(c for cams in step for c in cams) for step in steps}  # noqa: E731
    assert pairs(one) != pairs(two)  # neighbouring quantiles are reshuffled each epoch
    # ... yet a step's cameras stay within a few quantile positions of each other
    shards = CameraSchedule(40, 2, 0, 2, 1, 5, deal=costs).shards
    rank_of = {c: i for shard in shards for i, c in enumerate(sorted(shard, key=lambda c: (costs[c], c)))}
    assert max(abs(rank_of[a[0]] - rank_of[b[0]]) for a, b in one) < NEIGHBOURS


@pytest.mark.parametrize("world", [2, 4, 8])
def test_dealing_by_cost_keeps_shard_sizes_and_most_cameras_home(world):
    costs = view_costs(203)
    seeded = CameraSchedule(203, world, 0, world, 1, seed=5).shards
    dealt = deal_by_cost(costs, seeded)
    assert [len(s) for s in dealt] == [len(s) for s in seeded]
    assert sorted(c for s in dealt for c in s) == list(range(203))
    stayed = sum(len(set(a) & set(b)) for a, b in zip(seeded, dealt)) / 203
    assert stayed > 0.6, stayed  # dealt afresh, 1 / world would stay
    totals = [sum(costs[c] for c in s[:25]) for s in dealt]  # every shard's 25 cheapest: alike
    assert max(totals) / min(totals) < 1.05, totals


def test_a_step_never_shows_one_camera_twice_on_a_rank():
    """11 cameras, 2 ranks of 3 a step: a shard of 5 fills 6 places, so one camera repeats."""
    costs = view_costs(11)
    for epoch in range(1, 40):
        for step in epoch_of(11, 2, costs, epoch, per_rank=3):
            assert all(len(set(cams)) == len(cams) for cams in step), (epoch, step)


def test_a_table_with_an_unmeasured_camera_keeps_the_seeded_order():
    costs = view_costs(20)
    costs[7] = 0
    assert dealt_by(costs) is None
    assert dealt_by(view_costs(20)) is not None


def _share_worker(rank: int, port: int, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    schedule = CameraSchedule(12, 2, rank, 2, 1, seed=5)
    costs = CameraCosts(12)
    for step in range(schedule.steps_per_epoch):
        (camera,) = schedule.cameras_for_step(step)
        timer = DeviceTimer(torch.device("cpu"))
        time.sleep(0.03 if camera % 4 == 3 else 0.002 * (1 + camera % 4))  # cameras 3, 7, 11: 30 ms, the others 2-6
        timer.stop()
        costs.add([camera], timer)
    table = costs.share()
    # A checkpoint's table, reloaded: each rank keeps its own cameras, the next share is the same.
    again = CameraCosts(12)
    again.load(table, schedule.owned_cameras())
    dealt = CameraSchedule(12, 2, rank, 2, 1, seed=5, deal=table)
    results[rank] = (table, again.share(), [dealt.cameras_for_step(t, table) for t in range(6, 12)])
    dist.destroy_process_group()


def test_ranks_share_one_table_of_measured_costs_and_deal_alike():
    results = mp.Manager().dict()
    mp.spawn(_share_worker, args=(free_port(), results), nprocs=2)
    (table0, reloaded0, deal0), (table1, reloaded1, deal1) = results[0], results[1]
    assert table0 == table1 == reloaded0 == reloaded1
    assert all(c > 0 for c in table0)
    by_cost = sorted(range(12), key=lambda c: table0[c])
    assert {c % 4 for c in by_cost[-3:]} == {3}, table0
    # Every rank computes its side of one deal: together they see every camera once in the epoch.
    assert sorted(c for step in deal0 + deal1 for c in step) == list(range(12))


def test_dealing_by_cost_moves_images_to_their_new_ranks(scene, monkeypatch):
    """Each of 2 ranks re-deals its shards by one table: it then holds exactly its new cameras'
    images (the dataset's own), and together the ranks hold every training camera once."""
    from test_datamanager import datamanager_as

    held = []
    for rank in range(2):
        dm, loaded = datamanager_as(rank, 2, scene, monkeypatch, balance_cameras=True)
        before = set(dm.cached_train)
        costs = view_costs(len(dm.train_dataset), seed=3)
        dm.costs.measured = {c: costs[c] for c in before}
        monkeypatch.setattr(comm, "all_reduce_ints", lambda values: costs)  # the sum of both ranks' tables
        dm.next_train(dm.schedule.steps_per_epoch)  # the second epoch's start deals the shards by cost
        assert dm.epoch_costs == costs and dm.schedule.deal == costs
        owned = dm.schedule.owned_cameras()
        assert sorted(dm.cached_train) == owned == sorted(dm.train_views) and set(owned) != before
        assert sorted(loaded["train"]) == sorted(before | set(owned))  # loaded: the old shard and what it gained
        assert sorted(dm.costs.measured) == owned
        for camera in owned:
            assert (
                dm.cached_train[camera]["image"]
                == dm.train_dataset.get_data(camera, dm.config.cache_images_type)["image"]
            ).all()
        spe = dm.schedule.steps_per_epoch
        shown = [dm.next_train(step)[0].metadata["cam_idx"] for step in range(spe, 2 * spe)]
        assert shown == [c for t in range(spe, 2 * spe) for c in dm.schedule.cameras_for_step(t, costs)]
        assert set(shown) == set(owned)
        held += owned
    assert sorted(held) == list(range(len(dm.train_dataset)))


def test_a_balanced_run_deals_by_cost_and_resumes_with_its_shards(tmp_path, scene):
    """2 gloo ranks, the default (balanced) settings: after its first epoch the run deals its shards
    by measured cost; its checkpoint keeps that deal, and a run resumed from it keeps the shards."""
    from conftest import train

    first = train(tmp_path / "first", scene, 2, ["--schedule-unit", "steps", "--max-num-iterations", "30"])
    log = (tmp_path / "first" / "train.log").read_text()
    assert "shards dealt by measured cost" in log, log[-3000:]
    (path,) = (first / "nerfstudio_models").glob("step-*.ckpt")
    saved = torch.load(path, map_location="cpu")["camera_costs"]
    assert saved["deal"] is not None and all(c > 0 for c in saved["table"]) and saved["epoch"] is not None
    resumed = train(
        tmp_path / "resumed",
        scene,
        2,
        ["--schedule-unit", "steps", "--max-num-iterations", "12", "--load-dir", str(first / "nerfstudio_models")],
    )
    (path,) = (resumed / "nerfstudio_models").glob("step-*.ckpt")
    again = torch.load(path, map_location="cpu")["camera_costs"]
    assert again["deal"] == saved["deal"]  # the shards of the saving run, not dealt again
