"""The SSIM term of the training loss: our fused Triton kernel (ssim_kernel.py) on CUDA, stock's
pytorch_msssim everywhere else.

pytorch_msssim filters five maps (two means, two variances, the covariance) with ten separable
depthwise convolutions forward and more backward, plus the elementwise graph between them: 2.9 ms
per 1920x1080 image on an H200, a quarter of a full-resolution step. The kernel computes the same
SSIM (11-tap Gaussian window, sigma 1.5, K = (0.01, 0.03), the map's mean over the valid region,
which is what pytorch_msssim averages) in two passes each way. Triton ships with the CUDA torch
wheels and compiles on the user's GPU, so nothing is built at install; a machine where it does not
compile or run falls back to the reference after one logged line. Evaluation metrics stay stock's
(`SplatfactoModel.ssim`), so reported SSIM never depends on which path trained.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from pytorch_msssim import SSIM

from splatfacto_dist import comm

WINDOW = 11  # pytorch_msssim's default window, the one splatfacto trains with


def _load_fused(device: torch.device) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The fused SSIM if its kernels compile and run on `device` (forward and backward, on one
    window-sized image), else None after one note (rank 0)."""
    try:
        from splatfacto_dist.render.ssim_kernel import FusedSSIM

        probe = torch.rand((1, 3, WINDOW, WINDOW), device=device, requires_grad=True)
        FusedSSIM.apply(probe, probe.detach()).backward()
        return FusedSSIM.apply
    except Exception as err:  # noqa: BLE001 - no Triton, a GPU it cannot compile for, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if comm.is_main():
            CONSOLE.print(f"[yellow]fused SSIM unavailable ({reason}); the SSIM loss runs on pytorch_msssim.")
        return None


class LossSSIM:
    """SSIM(gt, pred) of NCHW images in [0, 1], differentiable in `pred` (see the module docstring).

    `fused` asks for the kernel; it is used for CUDA images at least one window wide, and
    `reference` (the model's stock SSIM module, which moves with the model and is in its
    checkpoints already) for the rest: the CPU, tiny images, a kernel that does not load. Not a
    module itself, so checkpoints keep stock's keys."""

    def __init__(self, reference: SSIM, fused: bool) -> None:
        self.reference = reference
        self.fused = fused
        self._kernel: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
        self._loaded = False

    def __call__(self, gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        if self.fused and pred.is_cuda and min(pred.shape[-2:]) >= WINDOW:
            if not self._loaded:
                self._kernel, self._loaded = _load_fused(pred.device), True
            if self._kernel is not None:
                # The kernel differentiates its first image only; SSIM is symmetric in its two images.
                return self._kernel(pred, gt.detach())
        return self.reference(gt, pred)
