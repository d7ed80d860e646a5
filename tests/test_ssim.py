"""The SSIM loss: the fused kernel equals stock's pytorch_msssim in value and gradient (on the GPU,
and on the CPU through Triton's interpreter), and every other case takes the reference, a kernel
that does not load after one logged line."""

import os
import subprocess
import sys

import pytest
import torch
from pytorch_msssim import SSIM

from splatfacto_dist.render import ssim as ssim_module
from splatfacto_dist.render.ssim import LossSSIM

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def image_pair(height: int, width: int, device: str, seed: int = 0):
    """A smooth ground truth and a prediction near it (as in training), NCHW in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, height // 8 + 1, width // 8 + 1, generator=g)
    gt = torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)
    noise = 0.05 * torch.randn(1, 3, height, width, generator=g)
    pred = (gt + noise).clamp(0, 1)
    return gt.to(device), pred.to(device).requires_grad_(True)


def value_and_grad(ssim, gt, pred):
    pred.grad = None
    value = ssim(gt, pred)
    value.backward()
    return value.detach(), pred.grad.clone()


def test_cpu_takes_the_reference_exactly():
    reference = SSIM(data_range=1.0, size_average=True, channel=3)
    gt, pred = image_pair(40, 56, "cpu")
    expected, expected_grad = value_and_grad(reference, gt, pred)
    value, grad = value_and_grad(LossSSIM(reference, fused=True), gt, pred)
    assert torch.equal(value, expected) and torch.equal(grad, expected_grad)


def test_a_kernel_that_does_not_load_falls_back_with_one_line(monkeypatch, capsys):
    def broken(*args):
        raise RuntimeError("no compiler for this GPU\nmore detail")

    monkeypatch.setattr("splatfacto_dist.render.ssim_kernel.FusedSSIM.apply", broken)
    assert ssim_module._load_fused(torch.device("cpu")) is None
    out = capsys.readouterr().out
    assert out.count("fused SSIM unavailable") == 1 and "no compiler for this GPU)" in out


INTERPRETED = """
import torch
from pytorch_msssim import SSIM
from splatfacto_dist.render.ssim_kernel import FusedSSIM
from test_ssim import image_pair, value_and_grad
reference = SSIM(data_range=1.0, size_average=True, channel=3)
for shape in ((1, 11, 11), (2, 14, 23)):
    gt, pred = image_pair(*shape[1:], "cpu", seed=shape[0])
    gt, pred = gt.expand(shape[0], -1, -1, -1) * 0.9, pred.detach().expand(shape[0], -1, -1, -1).clone().requires_grad_()
    expected, expected_grad = value_and_grad(reference, gt, pred)
    value, grad = value_and_grad(lambda a, b: FusedSSIM.apply(b, a), gt, pred)
    torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
    scale = expected_grad.abs().max()
    torch.testing.assert_close(grad / scale, expected_grad / scale, rtol=0, atol=1e-4)
print("interpreted kernel matches")
"""


def test_the_kernel_equals_stock_under_tritons_interpreter():
    """The kernels' arithmetic on the CPU (Triton runs them in Python), batch of 2 included."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.path.dirname(__file__)}
    proc = subprocess.run([sys.executable, "-c", INTERPRETED], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0 and "interpreted kernel matches" in proc.stdout, proc.stderr[-3000:]


@pytest.mark.gpu
@cuda
@pytest.mark.parametrize("size", [(1080, 1920), (135, 240), (11, 11), (9, 64)])
def test_fused_equals_stock_in_value_and_gradient(size):
    reference = SSIM(data_range=1.0, size_average=True, channel=3).cuda()
    fused = LossSSIM(reference, fused=True)
    for seed in range(3):
        gt, pred = image_pair(*size, "cuda", seed)
        expected, expected_grad = value_and_grad(reference, gt, pred)
        value, grad = value_and_grad(fused, gt, pred)
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6)
        # Per-pixel gradients are ~1/pixels; compare against the gradient's own scale.
        scale = expected_grad.abs().max()
        torch.testing.assert_close(grad / scale, expected_grad / scale, rtol=0, atol=1e-4)


@pytest.mark.gpu
@cuda
def test_the_kernel_loads_on_the_gpu_machines():
    assert ssim_module._load_fused(torch.device("cuda")) is not None
