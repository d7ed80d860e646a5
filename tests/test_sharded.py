"""Gaussian-sharded training equals replicated training (CPU, gloo, the real trainer).

Each pair of runs renders the same cameras at every step (the camera schedule does not depend on
the layout); 48 steps span refines (splits with id-keyed samples, duplicates, prunes) and opacity
resets, with replicas and shard totals verified every 8 steps. The union of the shards is
compared with the replicated model as a set of Gaussians (order-free), and through its renders.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import SCHEDULE, renders, train
from ecosystem import check_ns_export

SHARDED = ["--pipeline.model.gaussian-layout", "sharded"]


def gaussians(run: Path) -> dict:
    (path,) = (run / "nerfstudio_models").glob("step-*.ckpt")
    state = torch.load(path, map_location="cpu")["pipeline"]
    return {k.split(".")[-1]: v for k, v in state.items() if k.startswith("_model.gauss_params.")}


def assert_same_set(a: dict, b: dict) -> None:
    """Every Gaussian of `a` has its own twin in `b`: the nearest in position, colour, opacity and
    scale, within 1e-2 (rounding differs between layouts, and Adam's eps=1e-15 makes steps of
    rounding-sized gradients full-sized: differences stay far below what a render shows)."""
    assert len(a["means"]) == len(b["means"])

    def vector(g: dict) -> torch.Tensor:
        return torch.cat([g["means"], g["features_dc"], g["opacities"], g["scales"]], dim=1)

    nearest = torch.cdist(vector(a), vector(b)).min(dim=1)
    assert len(set(nearest.indices.tolist())) == len(a["means"]), "two Gaussians matched one twin"
    for name in ("means", "features_dc", "opacities", "scales", "features_rest"):
        assert torch.allclose(a[name], b[name][nearest.indices], atol=1e-2), name


def assert_renders_match(a: Path, b: Path) -> None:
    count_a, images_a = renders(a)
    count_b, images_b = renders(b)
    assert count_a == count_b
    mse = torch.mean((torch.stack(images_a) - torch.stack(images_b)) ** 2)
    assert -10 * torch.log10(mse) > 40, float(mse)


@pytest.mark.parametrize("world", [2, 3])
def test_union_of_shards_equals_replicated(tmp_path, scene, world):
    replicated = train(tmp_path / "replicated", scene, world, SCHEDULE)
    sharded = train(tmp_path / "sharded", scene, world, SCHEDULE + SHARDED)
    log = (tmp_path / "sharded" / "train.log").read_text()
    assert "Step 32:" in log and "GSs split" in log, log[-2000:]
    assert_same_set(gaussians(replicated), gaussians(sharded))
    assert_renders_match(replicated, sharded)


def test_one_rank_sharded_equals_replicated(tmp_path, scene):
    replicated = train(tmp_path / "replicated", scene, 1, SCHEDULE)
    sharded = train(tmp_path / "sharded", scene, 1, SCHEDULE + SHARDED)
    a, b = gaussians(replicated), gaussians(sharded)
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_shards_rebalance_and_batches_of_cameras_train(tmp_path, scene):
    """Three ranks of two cameras: the first refines grow the shards unevenly (the initial points
    are stored object by object), which a rebalance evens out, and training goes on equal to the
    replicated run."""
    batch = ["--pipeline.datamanager.cameras-per-rank", "2", "--pipeline.datamanager.data-shards", "3"]
    replicated = train(tmp_path / "replicated", scene, 3, SCHEDULE + batch)
    sharded = train(tmp_path / "sharded", scene, 3, SCHEDULE + batch + SHARDED)
    assert "rebalanced Gaussian shards" in (tmp_path / "sharded" / "train.log").read_text()
    assert_renders_match(replicated, sharded)


def test_sharded_checkpoint_exports_every_gaussian_and_resumes_replicated(tmp_path, scene):
    """A sharded run's checkpoint is one whole splatfacto model: ns-export writes one PLY of every
    Gaussian, and it resumes replicated (and back) equal to training straight through."""
    straight = train(tmp_path / "straight", scene, 2, SCHEDULE)
    first = train(tmp_path / "first", scene, 2, SCHEDULE + SHARDED + ["--max-num-iterations", "33"])
    check_ns_export(first, tmp_path / "export")
    middle = train(
        tmp_path / "middle",
        scene,
        2,
        SCHEDULE + ["--max-num-iterations", "7", "--load-dir", str(first / "nerfstudio_models")],
    )
    resumed = train(
        tmp_path / "resumed",
        scene,
        2,
        SCHEDULE + SHARDED + ["--max-num-iterations", "8", "--load-dir", str(middle / "nerfstudio_models")],
    )
    assert "continuing at step 40" in (tmp_path / "resumed" / "train.log").read_text()
    assert_renders_match(straight, resumed)
