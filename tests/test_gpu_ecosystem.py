"""GPU checks (run on the GPU machines): stock nerfstudio tools on a checkpoint of a 2-GPU run."""

from __future__ import annotations

from pathlib import Path

import ecosystem
import pytest
import torch
from conftest import train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")]


@pytest.fixture(scope="module")
def two_gpu_run(tmp_path_factory, scene) -> Path:
    # NCCL ranks on 2 GPUs; all eval images evaluated (split across the ranks) after the last step.
    return train(
        tmp_path_factory.mktemp("gpu2"),
        scene,
        2,
        ["--machine.device-type", "cuda", "--max-num-iterations", "2000", "--eval-all-images-at-end", "True"],
    )


def test_stock_ns_export_on_a_2_gpu_checkpoint(two_gpu_run, tmp_path):
    pytest.importorskip("open3d", reason="ns-export imports open3d, which the GPU machines' kit does not carry")
    ecosystem.check_ns_export(two_gpu_run, tmp_path)


def test_stock_ns_eval_on_a_2_gpu_checkpoint_equals_the_distributed_eval(two_gpu_run, tmp_path):
    ecosystem.check_ns_eval(two_gpu_run, tmp_path, last_step=999)


def test_stock_ns_render_on_a_2_gpu_checkpoint(two_gpu_run, tmp_path):
    pytest.importorskip("mediapy", reason="ns-render imports mediapy, which the GPU machines' kit does not carry")
    ecosystem.check_ns_render(two_gpu_run, tmp_path, views=3)
