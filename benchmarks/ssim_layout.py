"""Cost of splatfacto's SSIM loss (forward + backward) on one full-resolution image, by the memory
layout of its inputs and by cuDNN autotuning (which ns-train turns on and other launchers do not),
and that of the fused kernel that splatfacto-dist trains with (`ssim.LossSSIM`).

Layouts: "stock" is stock splatfacto's `img.permute(2, 0, 1)[None]`, "batched" is splatfacto-dist's
`img[None].permute(0, 3, 1, 2)` (the same view with another stride on the batch dim), "nchw" a
contiguous copy; "fused" is fussim's kernel on the contiguous copy.
Usage (GPU machine): python benchmarks/ssim_layout.py [--height H --width W]
"""

from __future__ import annotations

import argparse
import time

import torch
from pytorch_msssim import SSIM

from splatfacto_dist.render.ssim import LossSSIM

LAYOUTS = {
    "stock": lambda x: x.permute(2, 0, 1)[None],
    "batched": lambda x: x[None].permute(0, 3, 1, 2),
    "nchw": lambda x: x.permute(2, 0, 1)[None].contiguous(),
    "fused": lambda x: x.permute(2, 0, 1)[None].contiguous(),
}


def time_ms(name: str, height: int, width: int, iters: int = 40) -> float:
    layout = LAYOUTS[name]
    ssim = SSIM(data_range=1.0, size_average=True, channel=3).cuda()
    if name == "fused":
        ssim = LossSSIM(ssim, fused=True)
    gt = torch.rand(height, width, 3, device="cuda")
    pred = torch.rand(height, width, 3, device="cuda", requires_grad=True)
    for _ in range(5):
        (1 - ssim(layout(gt), layout(pred))).backward()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        (1 - ssim(layout(gt), layout(pred))).backward()
    torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / iters


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=1080)
    parser.add_argument("--width", type=int, default=1920)
    args = parser.parse_args()
    height, width = args.height, args.width
    print(f"SSIM loss forward + backward, {width}x{height}, ms per image")
    print("| cudnn.benchmark | " + " | ".join(LAYOUTS) + " |")
    print("|---|" + "---|" * len(LAYOUTS))
    for benchmark in (False, True):
        torch.backends.cudnn.benchmark = benchmark
        cells = [f"{time_ms(name, height, width):.2f}" for name in LAYOUTS]
        print(f"| {benchmark} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
