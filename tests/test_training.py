"""Real nerfstudio training, 1 and 2 gloo processes, on the embedded scene; then stock ns-export."""

from __future__ import annotations

from pathlib import Path
from typing import List

import ecosystem
import numpy as np
import pytest
from conftest import train
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def losses(run: Path) -> List[float]:
    events = EventAccumulator(str(run)).Reload()
    return [e.value for e in sorted(events.Scalars("Train Loss"), key=lambda e: e.step)]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, scene) -> Path:
    out = tmp_path_factory.mktemp("two")
    # Evaluates all eval images (split across the 2 ranks) at the last step, 478 images = step 239.
    return train(
        out,
        scene,
        2,
        ["--max-num-iterations", "480", "--verify-replicas-every", "1", "--steps-per-eval-all-images", "478"],
    )


def assert_trained(run: Path, min_refines: int) -> None:
    log = (run.parents[2] / "train.log").read_text()
    assert log.count("GSs split") >= min_refines, log[-3000:]
    curve = losses(run)
    assert np.mean(curve[-20:]) < 0.8 * np.mean(curve[:20]), (curve[:20], curve[-20:])


def test_one_process_trains_and_densifies(tmp_path, scene):
    run = train(tmp_path, scene, 1, ["--max-num-iterations", "240"])
    assert_trained(run, min_refines=2)
    assert len(losses(run)) == 240


def test_two_processes_train_densify_and_stay_identical(two_process_run):
    # --verify-replicas-every 1 compared every parameter and Adam moment across ranks after every
    # step (so after every refine); a mismatch would have failed the run.
    assert_trained(two_process_run, min_refines=2)
    assert len(losses(two_process_run)) == 240  # 480 images, 2 per step
    log = (two_process_run.parents[2] / "train.log").read_text()
    assert "rank 0: trains on" in log and "rank 1: trains on" in log


def test_stock_ns_export_writes_the_trained_gaussians(two_process_run, tmp_path):
    ecosystem.check_ns_export(two_process_run, tmp_path)


def test_distributed_eval_equals_stock_ns_eval(two_process_run, tmp_path):
    ecosystem.check_ns_eval(two_process_run, tmp_path, last_step=239)


def test_stock_ns_render_renders_the_eval_views(two_process_run, tmp_path):
    ecosystem.check_ns_render(two_process_run, tmp_path, views=3)  # every 8th of the 24 views


def test_logged_scalars_are_read_in_one_copy_and_keep_their_values():
    import torch

    from splatfacto_dist.engine.trainer import host_scalars

    loss, losses, metrics = host_scalars(
        [torch.tensor(0.25)], {"main_loss": torch.tensor(0.125), "scale_reg": torch.zeros(())},
        {"psnr": torch.tensor([21.5]), "gaussian_count": 812, "image": torch.ones(2, 2)},
    )  # fmt: skip
    assert loss == [0.25] and losses == {"main_loss": 0.125, "scale_reg": 0.0}
    assert metrics["psnr"] == 21.5 and metrics["gaussian_count"] == 812 and metrics["image"].shape == (2, 2)
