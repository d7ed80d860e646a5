"""`splatfacto-dist-demo` ends with its result: test metrics that describe the picture it writes, and
one end-of-training box and LPIPS note however many ranks trained (2 gloo processes on the CPU; the
GPU's schedule on the GPU machines)."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
import torch
from conftest import tool
from PIL import Image
from pytorch_msssim import ssim

IMAGES = 192  # a tiny budget (~1 min on 2 cores) that already learns more than each view's mean colour


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((a - b) ** 2)))


def _ssim(a: np.ndarray, b: np.ndarray) -> float:
    def nchw(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).permute(2, 0, 1)[None].float()

    return float(ssim(nchw(a), nchw(b), data_range=1.0, size_average=True))


def test_demo_ends_with_test_metrics_and_a_picture_of_the_test_views(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")  # the CPU demo (2 gloo ranks) on any machine
    check_demo(tmp_path, env, IMAGES)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_demo_trains_past_the_screen_size_splits(tmp_path):
    """6,000 images of the GPU schedule: past the 3,000 at which stock's screen-size splits had made
    the model millions of Gaussians on the scene's small images (seconds per step)."""
    check_demo(tmp_path, dict(os.environ), 6000)


def check_demo(tmp_path, env: dict, images: int) -> None:
    cmd = [*tool("splatfacto-dist-demo"), "--images", str(images), "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    (run,) = tmp_path.glob("demo/splatfacto-dist/*")
    summary = json.loads((run / "demo_summary.json").read_text())

    assert log.count("Training Finished") == 1, log[-4000:]
    assert log.count("LPIPS unavailable") == (summary["lpips"] is None), log[-4000:]
    assert f"PSNR {summary['psnr']:.2f} dB, SSIM {summary['ssim']:.3f}" in log and summary["png"] in log

    truths = [np.asarray(Image.open(view).convert("RGB"), dtype=np.float64) / 255 for view in summary["views"]]
    assert summary["n_views"] == len(truths) > 0
    height, width, _ = truths[0].shape
    picture = np.asarray(Image.open(summary["png"]).convert("RGB"), dtype=np.float64) / 255
    assert picture.shape == (summary["n_views"] * height, 2 * width, 3)
    rows = np.split(picture, summary["n_views"])
    for row, truth in zip(rows, truths):
        assert np.array_equal(row[:, :width], truth)  # each row: ground truth | render
    renders = [row[:, width:] for row in rows]
    # The summary's metrics are those of the pictured renders (up to their 8-bit rounding) ...
    assert abs(np.mean([_psnr(r, t) for r, t in zip(renders, truths)]) - summary["psnr"]) < 0.05
    assert abs(np.mean([_ssim(r, t) for r, t in zip(renders, truths)]) - summary["ssim"]) < 0.005
    # ... and beat a blank image: each view filled with its own mean colour.
    blanks = [np.broadcast_to(t.mean(axis=(0, 1)), t.shape) for t in truths]
    assert summary["psnr"] > np.mean([_psnr(b, t) for b, t in zip(blanks, truths)])
    assert summary["ssim"] > np.mean([_ssim(np.ascontiguousarray(b), t) for b, t in zip(blanks, truths)])
