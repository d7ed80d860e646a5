"""A render by pixel ranges: every camera of the render in turn, each rendered by all ranks, each
rank the range of tiles `range_plan.cut` gives it; the ranges' pixels go to the ranks that hold
them after the render (`RangesJob.held`): in training each rank's band of rows of every image, for
its share of the loss (`range_loss`); otherwise the whole image on the camera's rank.

Why: rendered by its own rank alone, an image needs every Gaussian it sees on that one rank (with
the rasterizer's buffers and their gradients, ~200 B each), and an image may see most of the
model: those bytes do not divide with the rank count. Rendered in ranges, one camera after
another, a rank holds the Gaussians touching its tiles of one image at a time, ~1/N of one image's.

How the step stays that of a replicated run: the forward runs every camera without keeping its
graph and sends the ranges' pixels to the ranks that hold them (one mover, `_move`, for pixels,
their gradients and the ground truth). The backward returns each range its pixels' gradient
(the sum of every holder's) and replays the cameras one at a time with their graph: project,
route, exchange, rasterize, and backward at once, so only one camera's buffers are alive. The
replay reuses the forward's cut and exchanges its own counts (the pairs are the forward's but for
a radius rounded the other way). Densification statistics are taken in the replay: each range's
received pairs send their 2D gradient back to the owner, which sums them per (Gaussian, camera)
before the norm (the image-level gradient gsplat's statistic is defined on) and counts the
camera once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch.utils.checkpoint import checkpoint

from splatfacto_dist import comm
from splatfacto_dist.densify import ops
from splatfacto_dist.layouts.sharded.exchange import (
    HEIGHT,
    MEANS2D,
    RADIUS,
    WIDTH,
    Exchange,
    colour_channels,
    pair_width,
    project_camera,
    rasterize_received,
    route_to_ranges,
)
from splatfacto_dist.layouts.sharded.range_balance import RangeBalance
from splatfacto_dist.layouts.sharded.range_loss import Band, bands
from splatfacto_dist.layouts.sharded.range_plan import cut, owned_pixels, rendered_rows, tile_costs


@dataclass
class RangesJob:
    """What one render in pixel ranges needs between its forward and its backward: the render's cameras
    (every rank's, in rank order) and, per camera, the cut and the pair counts the forward found."""

    names: List[str]
    meta: torch.Tensor  # [C, 20] host rows of every camera (`exchange.camera_meta`)
    counts: List[int]  # cameras per rank
    sh_degree: Optional[int]
    render_mode: str
    absgrad: bool
    balance: RangeBalance  # the run's tile price, and the timing of this rank's ranges
    stats: Optional[Dict[str, torch.Tensor]]  # where its backward adds the statistics (None: nothing reads them)
    stats_rows: Optional[torch.Tensor]  # the statistics' row of each rendered row (None: the same row)
    ranges: List[List[Tuple[int, int]]] = field(default_factory=list)  # per camera, each rank's tiles
    sent: List[List[int]] = field(default_factory=list)  # per camera, pairs this rank sent each rank
    received: List[List[int]] = field(default_factory=list)  # per camera, pairs each rank sent here
    by_range: bool = False  # each rank takes the loss of its bands of every camera (`range_loss`)
    bands: List[List[Band]] = field(default_factory=list)  # per camera, each rank's (by_range)

    @property
    def cameras(self) -> int:
        return len(self.meta)

    def camera_rank(self, camera: int) -> int:
        """The rank whose camera (and image, and loss) `camera` is."""
        start = 0
        for rank, count in enumerate(self.counts):
            start += count
            if camera < start:
                return rank
        raise IndexError(camera)

    def size(self, camera: int) -> Tuple[int, int]:
        return int(self.meta[camera, WIDTH]), int(self.meta[camera, HEIGHT])

    def rendered(self, camera: int, rank: int) -> Tuple[int, int]:
        """The pixel rows `rank` renders of `camera` (its range's tile rows)."""
        return rendered_rows(self.ranges[camera][rank], *self.size(camera))

    def held(self, camera: int, rank: int) -> Tuple[int, int]:
        """The pixel rows of `camera` that `rank` holds after the render: its band's, by range;
        else the whole image on the camera's rank."""
        return self.bands[camera][rank].held if self.by_range else self.whole(camera, rank)

    def mine(self) -> List[int]:
        """This rank's cameras, in render order."""
        return [c for c in range(self.cameras) if self.camera_rank(c) == comm.rank()]

    def whole(self, camera: int, rank: int) -> Tuple[int, int]:
        """Every row of `camera` on its own rank, none elsewhere."""
        return (0, self.size(camera)[1]) if self.camera_rank(camera) == rank else (0, 0)

    def channels(self) -> int:
        """Channels of the rendered pixels, alpha included."""
        return colour_channels(pair_width(self.meta)) + 1


PROJECTION_CHUNK = 1 << 16
"""Rows of its shard an owner projects at once with their graph in the replay. A chunk's backward
holds ~500 B per row (measured: the SH coefficients gathered for the kernel and their gradient,
the projection's outputs and theirs), a whole shard's more than the shard's gradients: chunks, each
recomputed in its own backward, keep one chunk's. At 2^19 rows this was the fullest rank's largest
transient (260 MB at 2 ranks of 3 M Gaussians); 2^17 keeps it near 65 MB."""


def _project(job: RangesJob, camera: int, chunks: List[Dict[str, torch.Tensor]], cameras: torch.Tensor):
    """`project_camera` of the shard given as consecutive chunks of rows: (block, visible rows)."""
    width = pair_width(job.meta)
    if len(chunks) == 1:
        return project_camera(chunks[0], camera, 0, cameras, job.meta, job.sh_degree, width)
    names = list(chunks[0])

    def part(cams: torch.Tensor, *values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return project_camera(dict(zip(names, values)), camera, 0, cams, job.meta, job.sh_degree, width)

    blocks, indices, start = [], [], 0
    for chunk in chunks:
        block, index = checkpoint(part, cameras, *chunk.values(), use_reentrant=False, preserve_rng_state=False)
        blocks.append(block)
        indices.append(index + start)
        start += len(chunk[names[0]])
    return torch.cat(blocks), torch.cat(indices)


def _chunk_leaves(values: List[torch.Tensor]) -> Tuple[List[Optional[torch.Tensor]], List[List[torch.Tensor]]]:
    """(each value's whole gradient, zero; the values as leaves of `PROJECTION_CHUNK` rows whose
    gradients are views into it): the replay's chunks then add their gradients into one buffer
    per value, with no per-chunk full-size gradient and no final concatenation."""
    whole = [torch.zeros_like(v) if v.requires_grad else None for v in values]
    n = len(values[0])
    chunks = []
    for start in range(0, max(n, 1), PROJECTION_CHUNK):
        leaves = []
        for value, grad in zip(values, whole):
            leaf = value.detach()[start : start + PROJECTION_CHUNK].requires_grad_(value.requires_grad)
            if grad is not None:
                leaf.grad = grad[start : start + PROJECTION_CHUNK]
            leaves.append(leaf)
        chunks.append(leaves)
    return whole, chunks


def _range_pixels(
    job: RangesJob, camera: int, chunks: List[Dict[str, torch.Tensor]], cameras: torch.Tensor, first: bool
):
    """This rank's range of `camera`: (pixels [rendered rows * W, D + 1] (colours, depth, alpha; zero
    off its own tiles), means2d, (the owner's block, its visible indices, the rows of it sent)).
    The forward (`first`) cuts the image; the replay reuses the cut."""
    width, height = job.size(camera)
    block, index = _project(job, camera, chunks, cameras)
    if first:
        costs = comm.all_reduce_counts(tile_costs(block[:, MEANS2D].detach(), block[:, RADIUS].detach(), width, height))
        job.ranges.append(cut(job.balance.tile_costs(costs), comm.world_size()))
        job.bands.append(bands(job.ranges[-1], width, height))
    ranges = job.ranges[camera]
    send, picked, send_counts = route_to_ranges(block, ranges, width, height)
    received_counts = comm.exchange_counts(send_counts, block.device)
    if first:
        job.sent.append(send_counts)
        job.received.append(received_counts)
    else:  # its own counts: a projection recomputed in chunks may round a radius the other way
        job.sent[camera], job.received[camera] = send_counts, received_counts
    received = Exchange.apply(send, send_counts, received_counts)
    mine = ranges[comm.rank()]
    top, bottom = rendered_rows(mine, width, height)
    timer = job.balance.time(costs, ranges, received.device) if first else None  # the forward's: the cut's measure
    # Every channel the pairs carry, whatever this rank asked: the pixels go to the camera's rank.
    render, alpha, means2d, _ = rasterize_received(received, 1, width, bottom - top, "RGB+ED", job.absgrad)
    if timer is not None:
        timer.stop()
    pixels = torch.cat([render[0], alpha[0]], -1) * owned_pixels(mine, width, height, render.device)
    return pixels.reshape(-1, pixels.shape[-1]), means2d, (block, index, picked)


Have = Callable[[int, int], Tuple[int, int]]
"""(camera, rank) -> the [first, one-past-last) pixel rows of the camera that rank has or wants."""


def _move(
    job: RangesJob, pieces: List[Optional[torch.Tensor]], have: Have, want: Have, like: torch.Tensor
) -> List[torch.Tensor]:
    """Rows of every camera from the ranks that have them to the ranks that want them, in one
    all-to-all: `pieces[c]` is this rank's rows `have(c, me)` of camera c, flat ([rows * W, k]);
    returns, per camera, the rows `want(c, me)` (none where it wants none), each the sum of what
    every rank that has it sent (a rendered range is zero off its own tiles, and every gradient
    of a pixel adds). `like`: a tensor of the rows' type and row shape."""
    me, world = comm.rank(), comm.world_size()

    def overlap(camera: int, source: int, target: int) -> Tuple[int, int]:
        (a, b), (lo, hi) = have(camera, source), want(camera, target)
        top = max(a, lo)
        return top, max(min(b, hi), top)

    send, send_counts, recv_counts = [], [], []
    for rank in range(world):
        sent = 0
        for camera, piece in enumerate(pieces):
            top, bottom = overlap(camera, me, rank)
            if bottom > top:
                width, first = job.size(camera)[0], have(camera, me)[0]
                send.append(piece[(top - first) * width : (bottom - first) * width])
                sent += (bottom - top) * width
        send_counts.append(sent)
        recv_counts.append(sum(_count(overlap(c, rank, me)) * job.size(c)[0] for c in range(job.cameras)))
    flat = torch.cat(send) if send else like.new_zeros((0, *like.shape[1:]))
    received = comm.all_to_all_rows(flat.contiguous(), send_counts, recv_counts)
    out = [received.new_zeros((_count(want(c, me)) * job.size(c)[0], *like.shape[1:])) for c in range(job.cameras)]
    start = 0
    for rank in range(world):  # from each rank in turn, its rows of each camera in camera order
        for camera in range(job.cameras):
            top, bottom = overlap(camera, rank, me)
            if bottom > top:
                width, lo = job.size(camera)[0], want(camera, me)[0]
                rows = (bottom - top) * width
                out[camera][(top - lo) * width : (bottom - lo) * width] += received[start : start + rows]
                start += rows
    return out


def _count(rows: Tuple[int, int]) -> int:
    return rows[1] - rows[0]


def held_rows(job: RangesJob, images: torch.Tensor) -> List[torch.Tensor]:
    """Per camera of the render, the rows of its image (`images`: this rank's cameras' [n, H, W, k],
    in any dtype: the ground truth as loaded) that this rank holds for its loss (`job.held`), flat
    [rows * W, k]. Sent by the camera's rank, the only one that has them."""
    mine = iter(images)
    pieces = [next(mine).reshape(-1, images.shape[-1]) if job.camera_rank(c) == comm.rank() else None
              for c in range(job.cameras)]  # fmt: skip
    return _move(job, pieces, job.whole, job.held, images.new_zeros((0, images.shape[-1])))


class RangesRender(torch.autograd.Function):
    """This rank's images [n, H, W, D + 1] (colours, depth, alpha) of a render in pixel ranges; see the
    module docstring. Its inputs' gradients come from the replay in backward."""

    @staticmethod
    def forward(ctx, job: RangesJob, cameras: torch.Tensor, *values: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        rows = [dict(zip(job.names, values))]
        pieces = [_range_pixels(job, c, rows, cameras, first=True)[0] for c in range(job.cameras)]
        held = _move(job, pieces, job.rendered, job.held, cameras.new_zeros((0, job.channels())))
        ctx.job = job
        device = cameras.device.type
        ctx.autocast = (device, torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        ctx.save_for_backward(cameras, *values)
        if job.by_range:  # every camera's band, in camera order
            return torch.cat(held)
        sizes = [job.size(c) for c in range(job.cameras) if job.camera_rank(c) == comm.rank()]
        if not sizes:
            return cameras.new_zeros((0, 0, 0, job.channels()))
        width, height = sizes[0]
        return torch.stack([held[c].reshape(height, width, -1) for c in job.mine()])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        job: RangesJob = ctx.job
        cameras, *values = ctx.saved_tensors
        whole, chunks = _chunk_leaves(values)
        camera_leaf = cameras.detach().requires_grad_(cameras.requires_grad)
        rows = [dict(zip(job.names, leaves)) for leaves in chunks]
        grad = grad.contiguous()
        if job.by_range:
            pieces = list(grad.split([_count(job.held(c, comm.rank())) * job.size(c)[0] for c in range(job.cameras)]))
        else:
            mine = iter(grad)
            pieces = [next(mine).reshape(-1, grad.shape[-1]) if job.camera_rank(c) == comm.rank() else None
                      for c in range(job.cameras)]  # fmt: skip
        grads = _move(job, pieces, job.held, job.rendered, grad.new_zeros((0, job.channels())))
        stats = job.stats  # added to camera by camera
        for camera in range(job.cameras):
            device, autocast, dtype = ctx.autocast  # the replay computes what the forward did
            with torch.enable_grad(), torch.autocast(device, dtype=dtype, enabled=autocast):
                pixels, means2d, (block, index, picked) = _range_pixels(job, camera, rows, camera_leaf, first=False)
                if stats is not None:
                    means2d.retain_grad()
                torch.autograd.backward(pixels, grads[camera])
            if stats is not None:
                _owner_statistics(job, camera, means2d, block.detach(), index, picked, stats)
            del pixels, means2d, block  # before the next camera's replay
        return (None, camera_leaf.grad, *whole)


@torch.no_grad()
def _owner_statistics(
    job: RangesJob,
    camera: int,
    means2d: torch.Tensor,
    block: torch.Tensor,
    index: torch.Tensor,
    picked: torch.Tensor,
    stats: Dict[str, torch.Tensor],
) -> None:
    """gsplat's per-image statistics of one camera, on the owners: each received pair's 2D gradient
    (or absgrad) goes back to its owner, which sums the ranges' per (Gaussian, camera), takes the
    statistic by the rule a render by camera takes it (`ops.image_gradient_norms`), and counts the
    camera once for each Gaussian visible in it."""
    gradient = means2d.absgrad if job.absgrad else means2d.grad
    if gradient is None:
        gradient = torch.zeros_like(means2d)
    back = comm.all_to_all_rows(gradient.contiguous(), job.received[camera], job.sent[camera])
    summed = torch.zeros((len(block), 2), dtype=back.dtype, device=back.device).index_add_(0, picked, back)
    width, height = job.size(camera)
    views = job.counts[job.camera_rank(camera)]
    if job.stats_rows is not None:
        index = job.stats_rows[index]
    stats["grad2d"].index_add_(0, index, ops.image_gradient_norms(summed, width, height, views))
    stats["count"].index_add_(0, index, torch.ones_like(summed[:, 0]))
    if "radii" in stats:  # kept while screen-size splits last
        stats["radii"].scatter_reduce_(0, index, ops.screen_radii(block[:, RADIUS], width, height), reduce="amax")


def received_most(job: RangesJob) -> int:
    """The most pairs this rank received for one camera: what it held at once."""
    return max((sum(counts) for counts in job.received), default=0)


def render_in_ranges(
    rows: Dict[str, torch.Tensor],
    every: torch.Tensor,
    meta: torch.Tensor,
    counts: List[int],
    options: Dict[str, Any],
    balance: RangeBalance,
    statistics: Optional[Dict[str, torch.Tensor]] = None,
    statistics_rows: Optional[torch.Tensor] = None,
) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], RangesJob]:
    """(renders [n, H, W, D], alphas [n, H, W, 1], the job) of this rank's cameras, or (None, None,
    job) when it has none (it only served the others). `options["loss_by_range"]`: each rank keeps
    its bands of every camera instead (`range_loss`): renders [rows, D] and alphas [rows, 1], the
    held rows of every camera, flat, in camera order (`RangesJob.held`). `balance` first learns from
    the last render's range times, then prices this render's tiles; `statistics`: the owners'
    densification buffers its backward adds to (None skips taking them: after stop-split-at nothing
    reads them), at `statistics_rows[row]` for each of `rows` when given (an offloaded owner's
    working set)."""
    balance.settle()
    job = RangesJob(
        names=list(rows),
        meta=meta,
        counts=counts,
        sh_degree=options.get("sh_degree"),
        render_mode=options.get("render_mode", "RGB"),
        absgrad=bool(options.get("absgrad")),
        balance=balance,
        stats=statistics,
        stats_rows=statistics_rows,
        by_range=bool(options.get("loss_by_range")),
    )
    images = RangesRender.apply(job, every, *rows.values())
    if counts[comm.rank()] == 0 and not job.by_range:
        return None, None, job
    render = images[..., :-1]
    if render.shape[-1] == 4 and job.render_mode != "RGB+ED":  # another camera of the render asked for depth
        render = render[..., :3]
    return render, images[..., -1:], job
