"""One image's tile rows cut into one contiguous range per rank, by cost.

A rank that renders a range of rows receives only the Gaussians touching those rows, so an
image whose visible set is most of the model is held by all ranks, ~1/N each, instead of by one.
Ranges start and end on tile rows: which Gaussians reach a pixel is decided per 16x16 tile, so a
range that is not tile-aligned would change pixels, not only rounding. The cost of a tile row is
the number of projected Gaussians touching it (every owner's, summed): it is what a range's rank
receives and holds, and what its rasterizer walks through.
"""

from __future__ import annotations

import math
from typing import List, Sequence, Tuple

import torch

from splatfacto_dist.raster import TILE_SIZE


def tile_rows(height: int) -> int:
    """Tile rows of an image `height` pixels tall."""
    return math.ceil(height / TILE_SIZE)


def pair_tile_rows(means_y: torch.Tensor, radii: torch.Tensor, height: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """[P] first and one-past-last tile rows each projected pair touches, by the rasterizer's own
    rule (gsplat's `isect_tiles`: floor and ceil of centre -/+ radius, in tiles, clipped)."""
    centre, reach = means_y / TILE_SIZE, radii / TILE_SIZE
    rows = tile_rows(height)
    first = torch.clamp(torch.floor(centre - reach), 0, rows).long()
    last = torch.clamp(torch.ceil(centre + reach), 0, rows).long()
    return first, last


def row_costs(means_y: torch.Tensor, radii: torch.Tensor, height: int) -> torch.Tensor:
    """[tile rows] int64: how many of the pairs touch each tile row of the image."""
    first, last = pair_tile_rows(means_y, radii, height)
    edges = torch.zeros(tile_rows(height) + 1, dtype=torch.int64, device=means_y.device)
    edges.index_add_(0, first, torch.ones_like(first))
    edges.index_add_(0, last, -torch.ones_like(last))
    return torch.cumsum(edges, 0)[:-1]


def cut(height: int, ranks: int, costs: Sequence[int]) -> List[Tuple[int, int]]:
    """[(top, bottom)) pixel rows of each rank, in rank order, covering the image: each cut is the
    tile boundary whose running cost is nearest its share (k / ranks of the whole), never before
    the previous cut (ties: the earlier boundary). A range may be empty. An image nothing touches
    is cut into equal numbers of tile rows."""
    rows = tile_rows(height)
    if len(costs) != rows:
        raise ValueError(f"{len(costs)} row costs for an image of {rows} tile rows")
    if ranks < 1:
        raise ValueError(f"cannot cut an image for {ranks} ranks")
    weights = [max(int(c), 0) for c in costs]
    if sum(weights) == 0:
        weights = [1] * rows
    running = [0]
    for weight in weights:
        running.append(running[-1] + weight)
    total, bounds = running[-1], [0]
    for k in range(1, ranks):
        share = total * k / ranks
        bounds.append(min(range(bounds[-1], rows + 1), key=lambda t: (abs(running[t] - share), t)))
    bounds.append(rows)
    return [(min(a * TILE_SIZE, height), min(b * TILE_SIZE, height)) for a, b in zip(bounds, bounds[1:])]
