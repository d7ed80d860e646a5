"""Host offload (offload/): the same training with each Gaussian's colour in host memory.

On the CPU the "host" and the "device" are one memory, but the offloaded path still moves what it
moves on a GPU machine: every render fetches its working set's colours by index into tensors of
their own, and their gradients come back into a gradient of the whole host parameter; densification,
rebalancing and saves reach the host groups through their own indices. The runs compare bitwise:
with a dense Adam nothing in the arithmetic differs, so any row the working set missed, any
statistic put back in the wrong place, or any refine that lost a host row shows up as a difference.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SCHEDULE, SHARDED, build_model, gaussians, tool, train

from splatfacto_dist.offload.working_set import HOST_GROUPS, FetchRows, visible_rows

OFFLOAD = ["--pipeline.model.offload", "True"]


def checkpoint_state(run: Path) -> dict:
    """Every Gaussian parameter and Adam moment of a run's last checkpoint, by name."""
    (path,) = (run / "nerfstudio_models").glob("step-*.ckpt")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    state = {k: v for k, v in saved["pipeline"].items() if k.startswith("_model.gauss_params.")}
    for group, optimizer in saved["optimizers"].items():
        for key, value in optimizer["state"].get(0, {}).items():
            state[f"{group}.{key}"] = value
    return state


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert value.shape == b[name].shape, name
        assert torch.equal(value, b[name]), f"{name} differs"


@pytest.fixture(scope="module")
def one_rank_run(tmp_path_factory: pytest.TempPathFactory, scene: Path) -> Path:
    """Steps 0-47 of SCHEDULE on one rank, without offload: what the one-rank comparisons compare to."""
    return train(tmp_path_factory.mktemp("one_rank"), scene, 1, SCHEDULE)


@pytest.mark.parametrize(
    "world, layout", [(1, []), (2, SHARDED), (3, SHARDED)], ids=["replicated-1", "sharded-2", "sharded-3"]
)
def test_offloaded_run_equals_the_run_on_the_device_bitwise(tmp_path, scene, one_rank_run, world, layout):
    on_device = one_rank_run if world == 1 else train(tmp_path / "device", scene, world, SCHEDULE + layout)
    offloaded = train(tmp_path / "offload", scene, world, SCHEDULE + layout + OFFLOAD)
    log = (offloaded.parents[2] / "train.log").read_text()
    assert "Step 32:" in log and "GSs split" in log, log[-2000:]  # a refine (grow and prune) ran offloaded
    assert_bitwise_equal(checkpoint_state(on_device), checkpoint_state(offloaded))


def test_fetched_rows_send_a_dense_gradient_back_to_the_host():
    host = torch.randn(6, 3, requires_grad=True)
    index = torch.tensor([1, 4])
    rows = FetchRows.apply(host, index, torch.device("cpu"))
    assert torch.equal(rows, host.detach()[index]) and rows.data_ptr() != host.data_ptr()
    (rows * torch.tensor([[1.0, 2, 3], [4, 5, 6]])).sum().backward()
    expected = torch.zeros(6, 3)
    expected[1], expected[4] = torch.tensor([1.0, 2, 3]), torch.tensor([4.0, 5, 6])
    assert torch.equal(host.grad, expected)


def test_the_working_set_is_what_the_rasterizer_draws():
    """Rows outside every view are left out, rows drawn in any view are in; a row moved behind the
    camera leaves the set (so the test would catch a set that kept everything)."""
    model = build_model(random_init=True)
    rows = {k: v.detach() for k, v in model.gauss_params.items()}
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0  # the model's cube is 2..4 in front of the camera
    K = torch.tensor([[40.0, 0, 16], [0, 40, 12], [0, 0, 1]])
    seen = visible_rows(rows, [(viewmat, K, 32, 24)])
    assert 0 < len(seen) < len(rows["means"])
    rows["means"][seen[0], 2] = -10.0  # behind the camera
    assert seen[0] not in visible_rows(rows, [(viewmat, K, 32, 24)])
    both = visible_rows(rows, [(viewmat, K, 32, 24), (torch.eye(4), K, 32, 24)])
    assert set(seen[1:].tolist()) <= set(both.tolist())


def test_conversions_leave_the_offloaded_colours_in_host_memory():
    """`.to(device)` and a load's resize treat every parameter alike; an offloaded model keeps its
    colours out of both (planted: a dtype conversion stands in for the device on a CPU machine)."""
    model = build_model(random_init=True)
    model.config.offload = True
    order = list(model.gauss_params)
    model._apply(lambda t: t.double() if t.is_floating_point() else t)
    dtypes = {name: p.dtype for name, p in model.gauss_params.items()}
    assert all(dtypes[name] == torch.float32 for name in HOST_GROUPS), dtypes
    assert dtypes["means"] == torch.float64
    assert list(model.gauss_params) == order


def test_offload_resumes_from_a_run_without_it_and_exports(tmp_path, scene, one_rank_run):
    import subprocess

    half = SCHEDULE[:]
    half[half.index("48")] = "24"  # steps 0-23 without offload, then 24-47 with it
    first = train(tmp_path / "first", scene, 1, half)
    resumed = train(tmp_path / "resumed", scene, 1, half + OFFLOAD + ["--load-dir", str(first / "nerfstudio_models")])
    assert_bitwise_equal(checkpoint_state(one_rank_run), checkpoint_state(resumed))
    out = tmp_path / "export"
    proc = subprocess.run(
        [*tool("ns-export"), "gaussian-splat", "--load-config", str(resumed / "config.yml"), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = (out / "splat.ply").read_bytes()[:400].decode(errors="ignore")
    assert f"element vertex {len(gaussians(resumed)['means'])}" in header


def test_the_sparse_update_moves_only_the_colours_a_camera_saw():
    model = build_model(random_init=True)
    model.config.offload, model.layout.offload = True, "sparse"
    rows, sh_degree = model._gaussian_rows()
    viewmat = torch.eye(4)
    viewmat[2, 3] = 3.0
    K = torch.tensor([[40.0, 0, 16], [0, 40, 12], [0, 0, 1]])
    render, _, info = model.layout.render(
        rows, viewmats=viewmat[None], Ks=K[None], width=32, height=24, sh_degree=sh_degree
    )
    render.sum().backward()
    colours = model.gauss_params["features_dc"]
    assert colours.grad.is_sparse
    before = colours.detach().clone()
    optimizer = torch.optim.SparseAdam([colours], lr=0.01)
    optimizer.step()
    seen = torch.zeros(len(before), dtype=torch.bool)
    seen[info["working_rows"]] = True
    assert 0 < int(seen.sum()) < len(before)
    assert torch.equal(colours.detach()[~seen], before[~seen])  # unseen rows: value and moments untouched
    assert not torch.equal(colours.detach()[seen], before[seen])
    assert torch.count_nonzero(optimizer.state[colours]["exp_avg"][~seen]) == 0


def test_sparse_offload_trains_sharded_and_a_dense_run_resumes_from_it(tmp_path, scene):
    half = SCHEDULE[:]
    half[half.index("48")] = "24"  # steps 0-23 sharded with SparseAdam, then 24-47 replicated with dense Adam
    sparse = ["--pipeline.model.offload-adam", "sparse"]
    first = train(tmp_path / "first", scene, 2, half + SHARDED + OFFLOAD + sparse)
    resumed = train(tmp_path / "resumed", scene, 1, half + OFFLOAD + ["--load-dir", str(first / "nerfstudio_models")])
    log = (resumed.parents[2] / "train.log").read_text()
    assert "continuing at step 24" in log and "GSs split" in log, log[-2000:]
    state = checkpoint_state(resumed)
    assert torch.isfinite(state["_model.gauss_params.features_dc"]).all()


def test_a_model_whose_state_cannot_fit_is_refused_with_what_fits_with_and_without_offload():
    from splatfacto_dist.offload.budget import fit_refusal, state_bytes

    assert state_bytes(59, False) == 964 and state_bytes(59, True) == 196  # the ~950 B and ~200 B of the option's help
    cap = 4 * 2**30
    assert fit_refusal(3_000_000, cap, 59, False, "the cap") is None
    assert fit_refusal(12_000_000, cap, 59, True, "the cap") is None
    line = fit_refusal(12_000_000, cap, 59, False, "the 4 GiB cap")
    assert line is not None and "\n" not in line
    assert f"at most {cap // 964:,} per rank, {cap // 196:,} with --pipeline.model.offload True" in line
    assert "add --pipeline.model.offload True" in line
    assert "add --pipeline.model.offload" not in fit_refusal(30_000_000, cap, 59, True, "the 4 GiB cap")


def test_offloaded_colours_that_cannot_fit_in_host_memory_are_refused_before_training(monkeypatch):
    """The host half of the fit: an offloaded model (or the rows of a checkpoint it would resume)
    whose colours' training state exceeds this rank's share of host memory stops in one line with
    how many fit; the same rows without offload, or with the memory there, do not."""
    from splatfacto_dist.data.datamanager import ConfigError
    from splatfacto_dist.launching import memcap
    from splatfacto_dist.offload.budget import host_state_bytes

    model = build_model(random_init=True)
    rows = {name: value.detach() for name, value in model.gauss_params.items()}
    need = len(rows["means"]) * host_state_bytes(59)
    assert host_state_bytes(59) == 768
    monkeypatch.setattr(memcap, "host_budget", lambda: (need - 1, "the planted memory"))
    model.refuse_unless_it_fits(rows)  # not offloaded: its colours are on the device
    model.config.offload = True
    with pytest.raises(ConfigError) as refused:
        model.refuse_unless_it_fits(rows)
    line = str(refused.value)
    assert "\n" not in line and f"{len(rows['means']):,} offloaded Gaussians" in line
    assert f"at most {len(rows['means']) - 1:,} per rank" in line
    monkeypatch.setattr(memcap, "host_budget", lambda: (need, "the planted memory"))
    model.refuse_unless_it_fits(rows)


def test_a_render_that_sees_nothing_moves_no_colour_with_the_sparse_update():
    model = build_model(random_init=True)
    model.config.offload, model.layout.offload = True, "sparse"
    rows, sh_degree = model._gaussian_rows()
    behind = torch.eye(4)
    behind[2, 3] = -10.0  # the whole model behind the camera
    K = torch.tensor([[40.0, 0, 16], [0, 40, 12], [0, 0, 1]])
    render, _, _ = model.layout.render(
        rows, viewmats=behind[None], Ks=K[None], width=32, height=24, sh_degree=sh_degree
    )
    render.sum().backward()
    colours = model.gauss_params["features_dc"]
    assert colours.grad.is_sparse and colours.grad._nnz() == 0
    before = colours.detach().clone()
    torch.optim.SparseAdam([colours], lr=0.01).step()
    assert torch.equal(colours.detach(), before)
