"""The SSIM term of the training loss: fussim's fused CUDA kernel where it runs, stock's
pytorch_msssim everywhere else.

pytorch_msssim filters five maps (two means, two variances, the covariance) with ten separable
depthwise convolutions forward and as many backward: 2.9 ms per 1920x1080 image on an H200, a
quarter of a full-resolution step. fussim computes the same SSIM (11-tap Gaussian window,
sigma 1.5, K = (0.01, 0.03), the map's mean over the valid region, which is what
pytorch_msssim averages) in one kernel each way. Its wheels ship compiled for the CUDA torch
releases, so no compiler is needed; a machine where it does not load falls back to the reference
after one logged line. Evaluation metrics stay stock's (`SplatfactoModel.ssim`), so reported SSIM
never depends on which path trained.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from pytorch_msssim import SSIM

from splatfacto_dist import comm

WINDOW = 11  # pytorch_msssim's default window, the one splatfacto trains with


def _load_fused() -> Optional[Callable[..., torch.Tensor]]:
    """fussim's SSIM if its CUDA extension loads here, else None after one note (rank 0)."""
    try:
        import fussim

        fussim._ensure_cuda_extension()
        return fussim.fused_ssim
    except Exception as err:  # noqa: BLE001 - a missing wheel, a CUDA variant it was not built for, ...
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        if comm.is_main():
            CONSOLE.print(f"[yellow]fused SSIM unavailable ({reason}); the SSIM loss runs on pytorch_msssim.")
        return None


class LossSSIM:
    """SSIM(gt, pred) of NCHW images in [0, 1], differentiable in `pred` (see the module docstring).

    `fused` asks for fussim; it is used for CUDA images at least one window wide, and `reference`
    (the model's stock SSIM module, which moves with the model and is in its checkpoints already)
    for the rest: the CPU, tiny images, a missing kernel. Not a module itself, so checkpoints keep
    stock's keys."""

    def __init__(self, reference: SSIM, fused: bool) -> None:
        self.reference = reference
        self.fused = fused
        self._kernel: Optional[Callable[..., torch.Tensor]] = None
        self._loaded = False

    def __call__(self, gt: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
        if self.fused and pred.is_cuda and min(pred.shape[-2:]) >= WINDOW:
            if not self._loaded:
                self._kernel, self._loaded = _load_fused(), True
            if self._kernel is not None:
                # fussim differentiates its first image only; SSIM is symmetric in its two images.
                return self._kernel(pred, gt.detach(), padding="valid", window_size=WINDOW)
        return self.reference(gt, pred)
