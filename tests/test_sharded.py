"""Gaussian-sharded training equals replicated training (CPU, gloo, the real trainer).

Each pair of runs renders the same cameras at every step (the camera schedule does not depend on
the layout); 48 steps span refines (splits with id-keyed samples, duplicates, prunes) and opacity
resets, with replicas and shard totals verified every 8 steps, and checkpoints saved as often as
nerfstudio's default schedule does at this scale. The union of the shards is compared with the
replicated model as a set of Gaussians (order-free), and through its renders; both runs use
ROUNDING_FREE_ADAM, so the comparison does not depend on the order gradients are summed in.
"""

from __future__ import annotations

import re

import pytest
import torch
from conftest import (
    ROUNDING_FREE_ADAM,
    SAVES,
    SCHEDULE,
    SHARDED,
    assert_renders_match,
    assert_same_set,
    gaussians,
    train,
)
from ecosystem import check_ns_eval, check_ns_export, checkpoint

from splatfacto_dist.reporting.records import read_rank_records


@pytest.mark.parametrize("world, sh_interval", [(2, 8), (3, 64)])
def test_union_of_shards_equals_replicated(tmp_path, scene, world, sh_interval):
    """With 2 ranks the SH degree reaches 3 by step 24: owners send colours for the renderers'
    cameras, evaluated from every coefficient, and a camera optimizer learns the same poses (its
    gradient through colour alone: test_sharded_ops), images rendered at full size in pixel ranges
    that split them; with 3 ranks the SH degree stays 0."""
    cameras = ["--pipeline.model.camera-optimizer.mode", "SO3xR3"] if sh_interval < 48 else []
    full = ["--pipeline.model.num-downscales", "0"] if world == 2 else []  # 3 tile rows to cut
    schedule = (
        SCHEDULE
        + ROUNDING_FREE_ADAM
        + SAVES
        + cameras
        + full
        + ["--pipeline.model.sh-degree-interval", str(sh_interval)]
    )
    replicated = train(tmp_path / "replicated", scene, world, schedule)
    sharded = train(tmp_path / "sharded", scene, world, schedule + SHARDED)
    log = (tmp_path / "sharded" / "train.log").read_text()
    assert "Step 32:" in log and "GSs split" in log, log[-2000:]
    shards = read_rank_records(sharded)
    assert [r["rank"] for r in shards] == list(range(world)), log[-2000:]
    owned, totals, rendered = zip(*[(r["owned"], r["total"], r["most_received"]) for r in shards])
    assert sum(owned) == totals[0] == len(gaussians(replicated)["means"]) and len(set(totals)) == 1
    counted = re.findall(r"GSs pruned. Now having (\d+) GSs", log)  # the last refine's, of the whole model
    assert counted and int(counted[-1]) == totals[0], counted
    # Every image is rendered in pixel ranges: at full resolution (2 ranks) both ranks hold part of
    # an image; at 16x12 px (the first downscale, 3 ranks) one tile row cannot be split.
    assert all(0 < n for n in rendered) if world == 2 else max(rendered) > 0, rendered
    assert_same_set(gaussians(replicated), gaussians(sharded))
    assert_renders_match(replicated, sharded)
    if cameras:
        poses = [
            checkpoint(run)["pipeline"]["_model.camera_optimizer.pose_adjustment"] for run in (replicated, sharded)
        ]
        assert poses[0].abs().max() > 1e-5  # the poses learned
        assert torch.allclose(poses[0], poses[1], atol=1e-6, rtol=1e-3), float((poses[0] - poses[1]).abs().max())


def test_one_rank_sharded_equals_replicated(tmp_path, scene):
    """One rank takes the sharded path too (the exchange is the identity, statistics go through
    the owners' bookkeeping): the same rows in the same order, the same densification decisions."""
    schedule = SCHEDULE + ROUNDING_FREE_ADAM + SAVES
    replicated = train(tmp_path / "replicated", scene, 1, schedule)
    sharded = train(tmp_path / "sharded", scene, 1, schedule + SHARDED)
    (record,) = read_rank_records(sharded)
    assert record["most_received"] > 0  # the exchange ran
    a, b = gaussians(replicated), gaussians(sharded)
    for name in a:
        assert a[name].shape == b[name].shape, name
        assert torch.allclose(a[name], b[name], atol=1e-4), (name, float((a[name] - b[name]).abs().max()))
    assert_renders_match(replicated, sharded)


@pytest.mark.parametrize("world", [2, 3])
def test_checkpoints_do_not_change_sharded_training(tmp_path, scene, world):
    """Saving every 6 steps (before and after refines and the opacity reset) ends bitwise equal to
    saving only at the end, and every save holds the whole model: the union of the shards with
    each Gaussian's own Adam moments. Every rank's optimizer state is checked against its own
    parameters at every step (--verify-replicas-every 1)."""
    schedule = SCHEDULE + SHARDED + ["--verify-replicas-every", "1"]
    once = train(tmp_path / "once", scene, world, schedule)
    often = train(tmp_path / "often", scene, world, schedule + SAVES + ["--save-only-latest-checkpoint", "False"])
    saved = sorted((often / "nerfstudio_models").glob("step-*.ckpt"))
    assert [p.name for p in saved] == [f"step-{s:09d}.ckpt" for s in (6, 12, 18, 24, 30, 36, 42, 47)]
    last_once = torch.load(next((once / "nerfstudio_models").glob("step-*.ckpt")), map_location="cpu")
    last_often = torch.load(saved[-1], map_location="cpu")
    for key, value in last_once["pipeline"].items():
        assert torch.equal(value, last_often["pipeline"][key]), key
    for name in ("means", "scales", "quats", "features_dc", "features_rest", "opacities"):
        for key in ("exp_avg", "exp_avg_sq"):
            a = last_once["optimizers"][name]["state"][0][key]
            assert torch.equal(a, last_often["optimizers"][name]["state"][0][key]), (name, key)
    assert torch.equal(last_once["gaussian_ids"], last_often["gaussian_ids"])
    for path in saved:
        checkpoint = torch.load(path, map_location="cpu")
        n = len(checkpoint["pipeline"]["_model.gauss_params.means"])
        assert len(checkpoint["gaussian_ids"].unique()) == n
        for name in ("means", "opacities", "features_rest"):
            param = checkpoint["pipeline"][f"_model.gauss_params.{name}"]
            moments = checkpoint["optimizers"][name]["state"][0]
            assert moments["exp_avg"].shape == moments["exp_avg_sq"].shape == param.shape, (path.name, name)


def test_batches_of_cameras_train_equal_to_replicated(tmp_path, scene):
    """Two ranks of two cameras: one exchange carries the Gaussians visible in either camera."""
    batch = ["--pipeline.datamanager.cameras-per-rank", "2"] + ROUNDING_FREE_ADAM + SAVES
    replicated = train(tmp_path / "replicated", scene, 2, SCHEDULE + batch)
    sharded = train(tmp_path / "sharded", scene, 2, SCHEDULE + batch + SHARDED)
    assert_same_set(gaussians(replicated), gaussians(sharded))
    assert_renders_match(replicated, sharded)


def test_sharded_checkpoint_exports_every_gaussian_and_resumes_replicated(tmp_path, scene, straight_run):
    """A sharded run's checkpoint is one whole splatfacto model: ns-export writes one PLY of every
    Gaussian, and it resumes replicated (and back) equal to training straight through."""
    compared = SCHEDULE + ROUNDING_FREE_ADAM
    first = train(tmp_path / "first", scene, 2, compared + SHARDED + ["--max-num-iterations", "33"])
    check_ns_export(first, tmp_path / "export")
    middle = train(
        tmp_path / "middle",
        scene,
        2,
        compared + ["--max-num-iterations", "7", "--load-dir", str(first / "nerfstudio_models")],
    )
    resumed = train(
        tmp_path / "resumed",
        scene,
        2,
        compared + SHARDED + ["--max-num-iterations", "8", "--load-dir", str(middle / "nerfstudio_models")],
    )
    assert "continuing at step 40" in (tmp_path / "resumed" / "train.log").read_text()
    assert_renders_match(straight_run, resumed)


def test_sharded_eval_of_uneven_shares_equals_stock_ns_eval(tmp_path, scene):
    """3 test views over 2 ranks: the rank with one view serves the other's second render, and the
    metrics logged at the end equal stock ns-eval's on the gathered checkpoint."""
    run = train(tmp_path / "run", scene, 2, SCHEDULE + SHARDED + ["--eval-all-images-at-end", "True"])
    check_ns_eval(run, tmp_path, last_step=47)
