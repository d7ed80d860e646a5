"""Image metrics that never stop training because a network download failed."""

from __future__ import annotations

import warnings
from typing import Callable, Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist import comm


class LazyLPIPS:
    """LPIPS built on first use; NaN (after one note, from rank 0) where its backbone cannot be loaded.

    torchmetrics downloads AlexNet weights when LPIPS is constructed, which raises offline (CI,
    the GPU machines, air-gapped clusters). Built outside the module tree, it also stays out of
    checkpoints, so checkpoints look the same with or without it.
    """

    def __init__(self) -> None:
        self._metric: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = None
        self._failed = False

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self._failed:
            return torch.tensor(float("nan"))
        if self._metric is None:
            try:
                from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._metric = LearnedPerceptualImagePatchSimilarity(normalize=True)
            except Exception as err:  # noqa: BLE001 - any failure to fetch/build the backbone
                self._failed = True
                reason = str(err).splitlines()[0] if str(err) else type(err).__name__
                if comm.is_main():  # every rank fails alike: one note per job
                    CONSOLE.print(f"[yellow]LPIPS unavailable ({reason}); evaluation reports PSNR and SSIM only.")
                return torch.tensor(float("nan"))
        metric = self._metric.to(a.device)  # type: ignore[union-attr]
        return metric(a, b)
