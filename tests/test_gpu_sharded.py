"""GPU checks (2 GPUs, NCCL): the sharded layout's exchange equals replicated training, and its
checkpoint is one whole model that stock ns-eval reads."""

from __future__ import annotations

import ecosystem
import pytest
import torch
from conftest import SCHEDULE, SHARDED, assert_renders_match, gaussians, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]
CUDA = ["--machine.device-type", "cuda"]


def test_sharded_on_two_gpus_equals_replicated(tmp_path, scene):
    """SH degree 3 from step 24: the owners' colours come from gsplat's CUDA SH evaluation."""
    schedule = SCHEDULE + CUDA + ["--pipeline.model.sh-degree-interval", "8"]
    replicated = train(tmp_path / "replicated", scene, 2, schedule)
    sharded = train(tmp_path / "sharded", scene, 2, schedule + SHARDED)
    assert len(gaussians(replicated)["means"]) == len(gaussians(sharded)["means"])
    assert_renders_match(replicated, sharded)


def test_sharded_two_gpu_checkpoint_evaluates_like_the_distributed_eval(tmp_path, scene):
    run = train(
        tmp_path / "run",
        scene,
        2,
        CUDA + SHARDED + ["--max-num-iterations", "2000", "--eval-all-images-at-end", "True"],
    )
    ecosystem.check_ns_eval(run, tmp_path, last_step=999)
