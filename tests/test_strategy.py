import pytest
import torch
from gsplat.strategy import DefaultStrategy

from splatfacto_dist.densify.strategy import SynchronizedDefaultStrategy
from splatfacto_dist.layouts.replicated import ReplicatedLayout


@pytest.mark.parametrize("absgrad", [True, False])
@pytest.mark.parametrize("screen_size_stats", [0, 100])
@pytest.mark.parametrize("C", [1, 3])
def test_sync_free_statistics_update_equals_gsplats(absgrad, screen_size_stats, C):
    g = torch.Generator().manual_seed(0)
    N = 200
    means2d = torch.randn(C, N, 2, generator=g)
    means2d.grad = torch.randn(C, N, 2, generator=g)
    means2d.absgrad = means2d.grad.abs() + torch.rand(C, N, 2, generator=g)
    radii = torch.randint(0, 6, (C, N), generator=g, dtype=torch.int32)
    info = dict(width=64, height=48, n_cameras=C, radii=radii, gaussian_ids=None, means2d=means2d)
    params = {"means": torch.zeros(N, 3)}
    settings = dict(absgrad=absgrad, refine_scale2d_stop_iter=screen_size_stats)
    ours, gsplats = SynchronizedDefaultStrategy(**settings), DefaultStrategy(**settings)
    state_ours, state_gsplat = ours.initialize_state(), gsplats.initialize_state()
    for _ in range(3):
        ours._add_statistics(params, state_ours, info, ReplicatedLayout())
        gsplats._update_state(params, state_gsplat, info)
    assert state_ours.keys() == state_gsplat.keys()
    for key in ("grad2d", "count"):
        torch.testing.assert_close(state_ours[key], state_gsplat[key], rtol=1e-6, atol=1e-6)
    if screen_size_stats:
        # gsplat assigns through duplicate indices (its own comment: "should be ideally using scatter
        # max"), so with several cameras the last camera wins; the statistic means the largest radius.
        expected = (radii.float() / 64).amax(dim=0)
        torch.testing.assert_close(state_ours["radii"], expected)
        if C == 1:
            torch.testing.assert_close(state_ours["radii"], state_gsplat["radii"])


def test_renders_of_one_step_by_image_size_count_like_one_render():
    """A batch rendered as several groups gives the statistics of rendering it at once."""
    g = torch.Generator().manual_seed(1)
    N = 100
    means2d = torch.randn(2, N, 2, generator=g)
    means2d.absgrad = torch.rand(2, N, 2, generator=g)
    radii = torch.randint(0, 4, (2, N), generator=g, dtype=torch.int32)
    whole = dict(width=64, height=48, n_cameras=2, radii=radii, gaussian_ids=None, means2d=means2d)
    parts = []
    for c in range(2):
        part = means2d[c : c + 1].clone()
        part.absgrad = means2d.absgrad[c : c + 1]  # each render carries weight 1/2 of the same loss
        parts.append(
            dict(
                width=64,
                height=48,
                n_cameras=1,
                radii=radii[c : c + 1],
                gaussian_ids=None,
                means2d=part,
                views_in_loss=2,
            )
        )
    strategy = SynchronizedDefaultStrategy(absgrad=True, refine_scale2d_stop_iter=100)
    at_once, by_part = strategy.initialize_state(), strategy.initialize_state()
    params = {"means": torch.zeros(N, 3)}
    strategy._add_statistics(params, at_once, whole, ReplicatedLayout())
    for part in parts:
        strategy._add_statistics(params, by_part, part, ReplicatedLayout())
    for key in ("grad2d", "count", "radii"):
        torch.testing.assert_close(by_part[key], at_once[key])
