"""GPU checks (run on the GPU machines): stock nerfstudio tools on a checkpoint of a 2-rank CUDA run
(2 GPUs over NCCL, or 2 ranks sharing one GPU where the machine has one)."""

from __future__ import annotations

from pathlib import Path

import ecosystem
import pytest
import torch
from conftest import CUDA_TWO_RANKS, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def two_gpu_run(tmp_path_factory, scene) -> Path:
    # All eval images evaluated (split across the ranks) after the last step.
    return train(
        tmp_path_factory.mktemp("gpu2"),
        scene,
        2,
        CUDA_TWO_RANKS + ["--max-num-iterations", "2000", "--eval-all-images-at-end", "True"],
    )


def test_stock_ns_export_on_a_2_gpu_checkpoint(two_gpu_run, tmp_path):
    ecosystem.check_ns_export(two_gpu_run, tmp_path)


def test_stock_ns_eval_on_a_2_gpu_checkpoint_equals_the_distributed_eval(two_gpu_run, tmp_path):
    ecosystem.check_ns_eval(two_gpu_run, tmp_path, last_step=999)


def test_stock_ns_render_on_a_2_gpu_checkpoint(two_gpu_run, tmp_path):
    pytest.importorskip("mediapy", reason="ns-render imports mediapy, which the GPU machines' kit does not carry")
    ecosystem.check_ns_render(two_gpu_run, tmp_path, views=3)
