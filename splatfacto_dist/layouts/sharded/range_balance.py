"""Tile costs calibrated by measured render time, so that the ranks rendering one image's ranges
finish together, not only hold as many pairs.

Why a calibrated model: a range's pairs (`plan.tile_costs`) decide what its rank holds, but its
time also grows with its pixels: a range of empty sky costs little in pairs and much in blending
and in writing pixels. Each rank times its own range's rasterization of every image (CUDA events,
read one render later, so the host never waits for them); at the next render the ranks exchange
those times, so every rank holds the same samples: per range, its pair cost, its tiles and its
time. A least-squares fit of time = a * pairs + b * tiles + c over the recent samples gives the
price of a tile in pair-cost units, b / a, rounded to an integer; a tile's cost is then its pair
cost plus that price. The fit is plain Python arithmetic on integers every rank holds alike, so
every rank derives the same price and cuts every image alike. Until enough samples exist (and
when the fit is degenerate) the price stays what it was, from 0: the cut by pairs alone.

Per camera timings (Grendel-GS's rule) would need each camera's identity in the render and a
table as large as the cameras' tiles; one price per run needs neither, and it is recomputed
from the latest `WINDOW` ranges, so it follows the model as it grows. It is not checkpointed: a
resumed run cuts by pairs until it has timed `MIN_SAMPLES` ranges again.
"""

from __future__ import annotations

from collections import deque
from fractions import Fraction
from itertools import accumulate
from typing import Deque, List, Optional, Sequence, Tuple

import torch

from splatfacto_dist import comm
from splatfacto_dist.reporting.profiling import DeviceTimer

WINDOW = 512  # ranges kept for the fit: a few dozen steps' images at any rank count
MIN_SAMPLES = 16  # fewer ranges do not pin three coefficients down
MAX_TILE_PRICE = 1 << 20  # pair-cost units; a tile never outweighs a thousand whole pairs


class RangeBalance:
    """The price of a tile, learnt from the ranges' measured times across renders (see the module
    docstring); held by the layout for the run. Every rank calls `settle` at the start of every
    render in ranges (a collective), `tile_costs` for each image's cut, and `time` around its own
    range's rasterization."""

    def __init__(self) -> None:
        self.tile_price = 0
        self.last_wait_s = 0.0  # how long before the slowest rank this rank's ranges of the last render finished
        self._fit = RunningFit()
        self._pending: List[Tuple[List[int], List[int], DeviceTimer]] = []  # per camera: every range's pairs, tiles

    def tile_costs(self, pair_costs: Sequence[int]) -> List[int]:
        """The cost of each tile an image is cut by: its pair cost plus the tile's price."""
        return [int(c) + self.tile_price for c in pair_costs]

    def time(self, pair_costs: Sequence[int], ranges: Sequence[Tuple[int, int]], device: torch.device) -> DeviceTimer:
        """Start timing this rank's range of an image cut into `ranges` by `pair_costs`; the caller
        stops the returned timer when the range is rasterized."""
        running = list(accumulate((int(c) for c in pair_costs), initial=0))
        pairs = [running[last] - running[first] for first, last in ranges]
        tiles = [last - first for first, last in ranges]
        timer = DeviceTimer(device)
        self._pending.append((pairs, tiles, timer))
        return timer

    def settle(self) -> None:
        """Exchange the last render's range times (every rank's, so every rank fits alike), add
        them to the samples, refit the price, and note this rank's wait for the slowest."""
        pending, self._pending = self._pending, []
        if not pending:  # the first render (every rank renders the same images: all return here alike)
            self.last_wait_s = 0.0
            return
        mine = [timer.microseconds() for _, _, timer in pending]
        times = comm.all_gather_int_lists(mine)  # [rank][camera]
        me = comm.rank()
        self.last_wait_s = sum(max(t[c] for t in times) - times[me][c] for c in range(len(pending))) / 1e6
        for c, (pairs, tiles, _) in enumerate(pending):
            for r, rank_times in enumerate(times):
                self._fit.add((pairs[r], tiles[r], rank_times[c]))
        price = self._fit.price()
        if price is not None:
            self.tile_price = price


class RunningFit:
    """The sums the tile price's fit needs over the latest `window` samples, updated as samples come
    and go: a refit costs the same at any window (refitting 512 samples cost ~0.26 ms of host Python
    per render). Python integers, so the sums are exact: every rank holds the same ones, and a sum
    kept for a whole run drifts from none."""

    def __init__(self, window: int = WINDOW) -> None:
        self.window = window
        self.samples: Deque[Tuple[int, int, int]] = deque()  # (pair cost, tiles, microseconds)
        self.sums = [0] * 9  # n, p, t, y, pp, tt, pt, py, ty

    def add(self, sample: Tuple[int, int, int]) -> None:
        self.samples.append(sample)
        self._count(sample, 1)
        if len(self.samples) > self.window:
            self._count(self.samples.popleft(), -1)

    def _count(self, sample: Tuple[int, int, int], sign: int) -> None:
        p, t, y = (int(v) for v in sample)
        for i, value in enumerate((1, p, t, y, p * p, t * t, p * t, p * y, t * y)):
            self.sums[i] += sign * value

    def price(self) -> Optional[int]:
        return price_from_sums(self.sums)


def fitted_tile_price(samples: Sequence[Tuple[int, int, int]]) -> Optional[int]:
    """The tile price fitted to `samples` at once (`RunningFit` keeps the same sums sample by sample)."""
    fit = RunningFit(window=max(len(samples), 1))
    for sample in samples:
        fit.add(sample)
    return fit.price()


def price_from_sums(sums: Sequence[int]) -> Optional[int]:
    """round(b / a) of the least-squares fit time = a * pairs + b * tiles + c, clipped to
    [0, MAX_TILE_PRICE]; None when the samples cannot tell (too few, no spread, a <= 0). Exact
    integer arithmetic on the sums (the centred sums times n), so it never depends on rounding."""
    n, p, t, y, pp, tt, pt, py, ty = sums
    if n < MIN_SAMPLES:
        return None
    spp, stt, spt = n * pp - p * p, n * tt - t * t, n * pt - p * t
    spy, sty = n * py - p * y, n * ty - t * y
    det = spp * stt - spt * spt
    if det * 10**9 <= max(spp * stt, n**2):  # (nearly) collinear pairs and tiles, or no spread (n^2: the scale)
        return None
    a_times_det = spy * stt - sty * spt
    b_times_det = sty * spp - spy * spt
    if a_times_det <= 0:
        return None
    return int(min(max(round(Fraction(b_times_det, a_times_det)), 0), MAX_TILE_PRICE))
