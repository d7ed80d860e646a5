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


def _shrink(image: np.ndarray, scale: int) -> np.ndarray:
    """The mean of each scale x scale block."""
    h, w, c = image.shape
    return image.reshape(h // scale, scale, w // scale, scale, c).mean(axis=(1, 3))


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

    def load(path: str) -> np.ndarray:
        return np.asarray(Image.open(path).convert("RGB"), dtype=np.float64) / 255

    truths = [load(view) for view in summary["views"]]  # the training size, which the metrics measure
    pictured = [load(view) for view in summary["picture_views"]]  # the same views, as the picture shows them
    n, scale = summary["n_views"], summary["picture_scale"]
    assert n == len(truths) == len(pictured) > 0
    picture = load(summary["png"])
    # Issue 38: each view big enough to see what was trained (the scene's 80x60 views were not).
    height, width = picture.shape[0] // n, picture.shape[1] // 2
    assert width >= 320, picture.shape
    assert (
        picture.shape
        == (n * height, 2 * width, 3)
        == (n * scale * truths[0].shape[0], 2 * scale * truths[0].shape[1], 3)
    )
    rows = np.split(picture, n)
    for row, truth, small in zip(rows, pictured, truths):
        assert np.array_equal(row[:, :width], truth)  # each row: ground truth | render
        assert _psnr(_shrink(truth, scale), small) > 25  # the scene's view, rendered larger
    renders = [row[:, width:] for row in rows]
    # The renders are the model's at that size, not thumbnails blown up: not constant on scale x scale blocks ...
    for render in renders:
        assert np.abs(render - np.kron(_shrink(render, scale), np.ones((scale, scale, 1)))).mean() > 0.002
    # ... whose metrics, shrunk to the training size, are the summary's (measured on renders at that size) ...
    shrunk = [_shrink(r, scale) for r in renders]
    assert abs(np.mean([_psnr(r, t) for r, t in zip(shrunk, truths)]) - summary["psnr"]) < 0.5
    assert abs(np.mean([_ssim(r, t) for r, t in zip(shrunk, truths)]) - summary["ssim"]) < 0.03
    # ... and beat a blank image: each view filled with its own mean colour.
    blanks = [np.broadcast_to(t.mean(axis=(0, 1)), t.shape) for t in truths]
    assert summary["psnr"] > np.mean([_psnr(b, t) for b, t in zip(blanks, truths)])
    assert summary["ssim"] > np.mean([_ssim(np.ascontiguousarray(b), t) for b, t in zip(blanks, truths)])
    blanks = [np.broadcast_to(t.mean(axis=(0, 1)), t.shape) for t in pictured]
    assert np.mean([_psnr(r, t) for r, t in zip(renders, pictured)]) > np.mean(
        [_psnr(b, t) for b, t in zip(blanks, pictured)]
    )
