"""The one tile rule of projection: which 16x16 tiles of an image a projected Gaussian touches.

gsplat's `isect_tiles` decides it on CUDA; the CPU reference rasterizer (`raster`) and the sharded
layout's pixel ranges (`layouts.sharded.range_plan`: which pairs a range receives, what each tile
costs) decide it here, by the same rule. Were the two copies to drift, a range would be sent
other Gaussians than its tiles draw. Torch only: any module may read the rule without importing
the rasterizer.
"""

from __future__ import annotations

import math
from typing import Tuple

import torch

TILE_SIZE = 16


def tile_grid(width: int, height: int) -> Tuple[int, int]:
    """(tiles across, tile rows) of an image."""
    return math.ceil(width / TILE_SIZE), math.ceil(height / TILE_SIZE)


def tile_bounds(
    means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """[P] int64 first and one-past-last tile column and row each of P projected Gaussians
    (`means2d` [P, 2], `radii` [P]) touches, by the rasterizer's own rule (gsplat's `isect_tiles`:
    floor and ceil of centre -/+ radius, in tiles, clipped to the image). Clipped before the
    conversion to integers, so that an infinite bound clips too."""
    tiles_x, tiles_y = tile_grid(width, height)
    radii = radii if radii.is_floating_point() else radii.float()  # gsplat's are int32
    centre, reach = means2d / TILE_SIZE, (radii / TILE_SIZE)[:, None]
    low, high = torch.floor(centre - reach), torch.ceil(centre + reach)
    x0, x1 = low[:, 0].clamp(0, tiles_x).long(), high[:, 0].clamp(0, tiles_x).long()
    y0, y1 = low[:, 1].clamp(0, tiles_y).long(), high[:, 1].clamp(0, tiles_y).long()
    return x0, x1, y0, y1
