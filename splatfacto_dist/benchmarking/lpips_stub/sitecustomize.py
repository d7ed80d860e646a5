"""Measurement-only shim: stock splatfacto builds LPIPS at start-up, which downloads AlexNet
weights and raises on machines without network. The benchmark puts this directory on
PYTHONPATH for the stock run only; splatfacto-dist itself never needs it."""

import torch
from torchmetrics.image import lpip


class _NoLPIPS(torch.nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, a, b):
        return torch.tensor(float("nan"))


lpip.LearnedPerceptualImagePatchSimilarity = _NoLPIPS
