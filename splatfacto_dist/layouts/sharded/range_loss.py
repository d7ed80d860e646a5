"""splatfacto's training loss taken where an image's pixels were rendered: each rank takes the loss
of a band of whole pixel rows of every camera of the step, and holds only that band of the render,
the ground truth, the loss maps and their gradients (with the rows SSIM's window needs around it).

Why: rendered in pixel ranges (`ranges`), an image is spread over the ranks; sent whole to the
camera's rank for the loss, its render, SSIM maps and their gradients sit on one rank (hundreds of
MB to GBs at 4K) and do not divide with the rank count.

Rows, not tiles. Ranges are cut in tiles (`range_plan`); a rank's loss rows are whole pixel rows,
from the first row of its range's first tile row to the next rank's (`bands`), so they are mostly
rows it rendered itself. SSIM (an 11x11 window; the mean of its map over the valid region, as
pytorch_msssim and the fused kernel define it) of a band of whole rows with `HALO` rows added
above and below is the mean of the whole image's map over the band's own centre rows: a band is
an image to either SSIM kernel, unchanged, and its share of the image's SSIM is that mean times
its rows' share of the map (`shares`). L1 is a sum of per-pixel terms. No rank needs more than
`HALO` rows past its own of anyone else's pixels. An image less than a window tall is not cut
(its SSIM smooths no rows): the first rank takes it whole.

Weights. A camera's loss is the sum of its bands' shares; each share is weighted as the camera's
rank weighs its images (their mean over its cameras), so the ranks' gradients add up to those of
the whole-image losses, which the exchange then averages over ranks as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from splatfacto_dist.render.ssim import WINDOW
from splatfacto_dist.render.tiles import TILE_SIZE, tile_grid

HALO = WINDOW // 2
"""Rows of the image above and below a band that its SSIM centre rows' windows reach."""

Rows = Tuple[int, int]


@dataclass(frozen=True)
class Band:
    """One rank's rows of one image (all [first, one-past-last) pixel rows, full width)."""

    held: Rows  # what the rank holds of the render and ground truth: its loss rows and their halo
    loss: Rows  # the rows whose L1 is this rank's
    centres: Rows  # the rows whose SSIM (the map's rows, by their window's centre) is this rank's


def bands(ranges: Sequence[Tuple[int, int]], width: int, height: int) -> List[Band]:
    """Each rank's `Band` of an image cut into tile `ranges` (`range_plan.cut`), in rank order: the
    loss rows partition the image, the centre rows partition SSIM's valid rows [HALO, height - HALO)."""
    tiles_x, _ = tile_grid(width, height)
    whole = height < WINDOW
    starts = [0] + [height if whole else min(first // tiles_x * TILE_SIZE, height) for first, _ in ranges[1:]]
    out = []
    for top, bottom in zip(starts, starts[1:] + [height]):
        if whole:
            out.append(Band(held=(top, bottom), loss=(top, bottom), centres=(top, bottom)))
            continue
        first = min(max(top, HALO), height - HALO)
        last = max(min(bottom, height - HALO), first)
        held = (top, bottom) if last == first else (min(top, first - HALO), max(bottom, last + HALO))
        out.append(Band(held=held, loss=(top, bottom), centres=(first, last)))
    return out


def shares(
    pred: torch.Tensor,
    gt: torch.Tensor,
    band: Band,
    height: int,
    ssim: Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]],
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(L1, 1 - SSIM, squared error) of one image, the shares of them `band` holds: `pred`, `gt` are
    the band's `held` rows [rows, W, 3]; the three sum over an image's bands to its whole-image
    values (the mean absolute and squared error, and 1 - SSIM). `ssim(gt, pred)` of NCHW images (None:
    no SSIM share, zero)."""
    lo = band.held[0]
    width = pred.shape[1]
    a, b = band.loss
    own_pred, own_gt = pred[a - lo : b - lo], gt[a - lo : b - lo]
    pixels = height * width * pred.shape[-1]
    l1 = (own_gt - own_pred).abs().sum() / pixels
    squared = (own_gt - own_pred).square().sum() / pixels
    c, d = band.centres
    if d <= c or ssim is None:
        return l1, pred.new_zeros(()), squared
    if height < WINDOW:  # not cut: the whole image
        block_pred, block_gt, share = pred, gt, 1.0
    else:
        block_pred, block_gt = pred[c - HALO - lo : d + HALO - lo], gt[c - HALO - lo : d + HALO - lo]
        share = (d - c) / (height - 2 * HALO)
    nchw = [x.permute(2, 0, 1)[None].contiguous() for x in (block_gt, block_pred)]
    return l1, share * (1 - ssim(*nchw)), squared
