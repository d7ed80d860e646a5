"""One image's tiles, in row-major order, cut into one contiguous range per rank, by cost.

A rank that renders a range of tiles receives only the Gaussians touching those tiles, so an
image whose visible set is most of the model is held by all ranks, ~1/N each, instead of by one.
Ranges are made of whole 16x16 tiles: which Gaussians reach a pixel is decided per tile, so a
range that cut a tile would change pixels, not only rounding. Tiles, not tile rows: a camera
that overlooks a scene from its side sees most Gaussians crowded into a few rows near the
horizon, and a row is not split by rows. The cost of a tile is its share of the projected
Gaussians touching it (every owner's, summed; `tile_costs`): what its rank receives and holds.
Which tiles a pair touches is the rasterizer's own rule (`render.tiles.tile_bounds`), read from there.

A range's rank renders the tile rows the range spans, across the whole width, and keeps only its
own tiles' pixels (`owned_pixels`); the rows it shares with a neighbour are rendered twice.
"""

from __future__ import annotations

import bisect
from typing import List, Sequence, Tuple

import torch

from splatfacto_dist.render.tiles import TILE_SIZE, tile_bounds, tile_grid

SHARE = 1024  # a pair's cost, spread evenly over the tiles it touches (integers: every rank sums alike)


def tile_costs(means2d: torch.Tensor, radii: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """[tile rows * tiles across] int64, row-major: the pairs touching each tile, each pair counted
    as `SHARE` spread over its tiles. Spread, not counted whole in each: a range receives a pair
    once however many of its tiles it touches, so whole counts would weigh the few large pairs
    near the camera as much as the many small ones near the horizon, and cut off far too few of
    those."""
    tiles_x, tiles_y = tile_grid(width, height)
    x0, x1, y0, y1 = tile_bounds(means2d, radii, width, height)
    area = (x1 - x0) * (y1 - y0)
    weight = torch.where(area > 0, SHARE // area.clamp_min(1), 0)
    corners = torch.zeros((tiles_y + 1) * (tiles_x + 1), dtype=torch.int64, device=means2d.device)
    for ys, xs, sign in ((y0, x0, 1), (y0, x1, -1), (y1, x0, -1), (y1, x1, 1)):  # a rectangle's 2D difference
        corners.index_add_(0, ys * (tiles_x + 1) + xs, sign * weight)
    counts = corners.reshape(tiles_y + 1, tiles_x + 1).cumsum(0).cumsum(1)
    return counts[:tiles_y, :tiles_x].reshape(-1)


def cut(costs: Sequence[int], ranks: int) -> List[Tuple[int, int]]:
    """[(first, one-past-last)) tiles of each rank, in rank order, covering the image: each cut is
    the tile boundary whose running cost is nearest its share (k / ranks of the whole), never
    before the previous cut (ties: the earlier boundary). A range may be empty. An image nothing
    touches is cut into equal numbers of tiles."""
    if ranks < 1:
        raise ValueError(f"cannot cut an image for {ranks} ranks")
    weights = [max(int(c), 0) for c in costs]
    if sum(weights) == 0:
        weights = [1] * len(weights)
    running = [0]
    for weight in weights:
        running.append(running[-1] + weight)
    total, bounds = running[-1], [0]
    for k in range(1, ranks):
        bounds.append(_nearest(running, total * k / ranks, bounds[-1]))
    bounds.append(len(weights))
    return list(zip(bounds, bounds[1:]))


def _nearest(running: List[int], share: float, start: int) -> int:
    """The earliest boundary t >= start whose running cost is nearest `share`, by bisection (the
    running costs never fall): a scan would cost the host ~ranks x tiles per image per step."""
    above = bisect.bisect_left(running, share, lo=start)  # the first at or over the share
    candidates = [above] if above < len(running) else []
    if above > start:  # the last under it, at the start of its run of equal costs
        candidates.append(bisect.bisect_left(running, running[above - 1], lo=start))
    return min(candidates, key=lambda t: (abs(running[t] - share), t))


def rendered_rows(tiles: Tuple[int, int], width: int, height: int) -> Tuple[int, int]:
    """[top, bottom) pixel rows a range of tiles spans (what its rank renders); (0, 0) when empty."""
    first, last = tiles
    if last <= first:
        return 0, 0
    tiles_x, _ = tile_grid(width, height)
    return first // tiles_x * TILE_SIZE, min(-(-last // tiles_x) * TILE_SIZE, height)


def tile_rectangles(tiles: Tuple[int, int], width: int, height: int) -> List[Tuple[int, int, int, int]]:
    """The range as at most three rectangles of tiles (column from, column to, row from, row to):
    its partial first row, its whole rows, its partial last row."""
    first, last = tiles
    if last <= first:
        return []
    tiles_x, _ = tile_grid(width, height)
    (r0, c0), (r1, c1) = divmod(first, tiles_x), divmod(last - 1, tiles_x)
    if r0 == r1:
        return [(c0, c1 + 1, r0, r0 + 1)]
    parts = [(c0, tiles_x, r0, r0 + 1), (0, tiles_x, r0 + 1, r1), (0, c1 + 1, r1, r1 + 1)]
    return [p for p in parts if p[0] < p[1] and p[2] < p[3]]


def owned_pixels(tiles: Tuple[int, int], width: int, height: int, device: torch.device) -> torch.Tensor:
    """[rendered rows, W, 1] float: 1 on the pixels of the range's own tiles within what its rank
    renders (`rendered_rows`), 0 on the tiles of the rows it shares with a neighbour."""
    top, bottom = rendered_rows(tiles, width, height)
    tiles_x, _ = tile_grid(width, height)
    rows = torch.arange(top, bottom, device=device) // TILE_SIZE
    columns = torch.arange(width, device=device) // TILE_SIZE
    index = rows[:, None] * tiles_x + columns[None, :]
    return ((index >= tiles[0]) & (index < tiles[1])).float()[..., None]
