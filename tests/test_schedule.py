from collections import Counter

import pytest

from splatfacto_dist.data.datamanager import CameraSchedule, ConfigError


def epoch_cameras(n: int, world: int, per_rank: int = 1, epoch: int = 0, shards=None):
    schedules = [CameraSchedule(n, shards or world, r, world, per_rank, seed=3) for r in range(world)]
    spe = schedules[0].steps_per_epoch
    assert all(s.steps_per_epoch == spe for s in schedules)
    steps = range(epoch * spe, (epoch + 1) * spe)
    return [[s.cameras_for_step(t) for t in steps] for s in schedules], schedules


@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("epoch", [0, 1, 5])
def test_every_camera_exactly_once_per_epoch_when_divisible(world, epoch):
    per_rank_steps, _ = epoch_cameras(n=24, world=world, epoch=epoch)
    seen = Counter(c for rank in per_rank_steps for step in rank for c in step)
    assert sorted(seen) == list(range(24))
    assert set(seen.values()) == {1}


@pytest.mark.parametrize("world", [2, 3])
def test_uneven_counts_cover_everything_with_equal_step_counts(world):
    per_rank_steps, schedules = epoch_cameras(n=25, world=world)
    seen = Counter(c for rank in per_rank_steps for step in rank for c in step)
    assert sorted(seen) == list(range(25))
    assert max(seen.values()) <= 2
    assert len({len(rank) for rank in per_rank_steps}) == 1


@pytest.mark.parametrize("world", [2, 3])
def test_each_rank_only_ever_uses_its_own_cameras(world):
    _, schedules = epoch_cameras(n=31, world=world)
    owned = [set(s.owned_cameras()) for s in schedules]
    assert set().union(*owned) == set(range(31))
    assert sum(len(o) for o in owned) == 31  # disjoint
    for s, mine in zip(schedules, owned):
        used = {c for t in range(5 * s.steps_per_epoch) for c in s.cameras_for_step(t)}
        assert used == mine


def test_epochs_reshuffle_and_schedule_is_deterministic():
    a, _ = epoch_cameras(n=24, world=2, epoch=0)
    b, _ = epoch_cameras(n=24, world=2, epoch=1)
    again, _ = epoch_cameras(n=24, world=2, epoch=0)
    assert a != b and a == again


def test_one_process_owning_all_shards_sees_the_union_of_ranks():
    ranks, _ = epoch_cameras(n=24, world=3)
    single, _ = epoch_cameras(n=24, world=1, per_rank=3, shards=3)
    for t in range(len(single[0])):
        assert single[0][t] == [ranks[r][t][0] for r in range(3)]


def test_several_cameras_per_rank():
    per_rank_steps, _ = epoch_cameras(n=24, world=2, per_rank=3)
    assert all(len(step) == 3 for rank in per_rank_steps for step in rank)
    seen = Counter(c for rank in per_rank_steps for step in rank for c in step)
    assert set(seen.values()) == {1} and len(seen) == 24


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_shards=3, world_size=2, cameras_per_rank=1), "multiple of the world size"),
        (dict(num_shards=4, world_size=2, cameras_per_rank=1), "multiple of the 2 shards"),
        (dict(num_shards=2, world_size=2, cameras_per_rank=0), ">= 1"),
    ],
)
def test_bad_settings_fail_with_one_clear_line(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        CameraSchedule(num_cameras=10, rank=0, seed=0, **kwargs)
