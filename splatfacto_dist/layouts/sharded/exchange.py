"""A render's data path between ranks: every rank's cameras to the owners, each owner's projected
(Gaussian, camera) pairs to the cameras' ranks, and in backward their gradients back (see the
package docstring)."""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox
from torch.utils.checkpoint import checkpoint

from splatfacto_dist import comm
from splatfacto_dist.layouts.sharded.range_plan import rendered_rows, tile_rectangles
from splatfacto_dist.render.raster import activate, camera_centres, project, rasterize_pairs, view_colors
from splatfacto_dist.render.tiles import tile_bounds

# The packed rows' columns, named once: every reader below and in `ranges` reads them by these names.
#
# A camera row (`camera_rows`, [C, 25], on the device): the view matrix, then the intrinsics.
VIEWMAT, K = slice(0, 16), slice(16, 25)
# A camera's host row (`camera_meta`, [C, 20]): image width, height, the render's flags (depth
# channel, antialiased), then its crop box (present, R, T, S).
WIDTH, HEIGHT, DEPTH_FLAG, ANTIALIASED, CROP = 0, 1, 2, 3, 4
CROP_R, CROP_T, CROP_S = slice(5, 14), slice(14, 17), slice(17, 20)
META_WIDTH = CROP_S.stop
# A projected (Gaussian, camera) pair's row (`project_camera`): means2d, conic, opacity, colour
# (3 channels, or 4 when a camera of the render asks for depth: its depth is the fourth), then
# depth (for sorting), radius (for tiles) and the camera's index on its renderer, which are counted
# from the row's end since the colour's width varies.
PAIR_SPLIT = (
    ("means2d", 2),
    ("conic", 3),
    ("opacity", 1),
    ("colour", None),
    ("depth", 1),
    ("radius", 1),
    ("camera", 1),
)
MEANS2D, MEAN_Y, CONIC, OPACITY = slice(0, 2), 1, slice(2, 5), 5
DEPTH, RADIUS, CAMERA = -3, -2, -1
FIXED_COLUMNS = sum(width for _, width in PAIR_SPLIT if width is not None)  # all but the colour's: 9


def colour_channels(pair_width: int) -> int:
    """Colour channels (3, or 4 with the depth channel) of pair rows `pair_width` floats wide."""
    return pair_width - FIXED_COLUMNS


def pair_columns(pair_width: int) -> List[int]:
    """The widths of `PAIR_SPLIT`'s columns in pair rows `pair_width` floats wide (`torch.split`'s)."""
    return [colour_channels(pair_width) if width is None else width for _, width in PAIR_SPLIT]


class Exchange(torch.autograd.Function):
    """Rows to their renderers in forward; their gradients back to the owners in backward."""

    @staticmethod
    def forward(ctx, send: torch.Tensor, send_counts: List[int], recv_counts: List[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.counts = (send_counts, recv_counts)
        return comm.all_to_all_rows(send, send_counts, recv_counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        send_counts, recv_counts = ctx.counts
        back = comm.all_to_all_rows(grad.contiguous(), recv_counts, send_counts)
        world = comm.world_size()  # in place (a fresh buffer when distributed): one pair buffer, not two
        return (back.div_(world) if world > 1 else back), None, None


class AllCameras(torch.autograd.Function):
    """Every rank's camera rows (`camera_rows`) in forward, concatenated in rank order; in backward
    each rank's cameras receive what every owner's projections and view-dependent colours sent
    them, summed. A camera-pose optimizer then learns as it does when replicated."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, counts: List[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.counts = counts
        return torch.cat(comm.all_gather_rows(local, counts))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        counts, mine = ctx.counts, ctx.counts[comm.rank()]
        back = comm.all_to_all_rows(grad.contiguous(), counts, [mine] * len(counts))
        # x world size: the pairs' gradients reached the owners through `Exchange`, which divides
        # by it for the Gaussians' average; a camera's gradient is its own rank's, averaged later
        # with the other replicated parameters (as a replicated run averages it once).
        return back.reshape(len(counts), mine, grad.shape[1]).sum(dim=0) * comm.world_size(), None


def camera_rows(viewmats: torch.Tensor, Ks: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[C, 25] rows of one rank's cameras (viewmat 16, K 9), differentiable in the viewmats: the
    owners project and colour for the renderer, and a pose optimizer learns through both."""
    n = viewmats.shape[0]  # VIEWMAT, K
    return torch.cat([viewmats.reshape(n, 16).float().to(device), Ks.reshape(n, 9).float().to(device)], 1)


def camera_meta(
    n: int, width: int, height: int, depth: bool, antialiased: bool, crop: Optional[OrientedBox]
) -> torch.Tensor:
    """[n, 20] host rows of what else the owners must know of one rank's cameras: width, height, the
    render's flags (depth channel, antialiased), its crop box (present, R 9, T 3, S 3). Made on the
    host, apart from the poses: a rank alone reads them without waiting for the GPU (over NCCL their
    gather goes through it)."""
    box = torch.zeros(16)
    if crop is not None:
        box = torch.cat([torch.ones(1), crop.R.reshape(9).cpu(), crop.T.reshape(3).cpu(), crop.S.reshape(3).cpu()])
    flags = torch.tensor([width, height, float(depth), float(antialiased)])  # WIDTH, HEIGHT, DEPTH_FLAG, ANTIALIASED
    return torch.cat([flags, box.float()]).expand(n, META_WIDTH)  # CROP, CROP_R, CROP_T, CROP_S


def views_of(cameras: torch.Tensor, meta: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor, int, int]]:
    """(viewmat, K, width, height) of every camera of a render, from its rows and host rows."""
    return [
        (cameras[c, VIEWMAT].reshape(4, 4), cameras[c, K].reshape(3, 3), int(meta[c, WIDTH]), int(meta[c, HEIGHT]))
        for c in range(len(cameras))
    ]


def _crop_of(meta: torch.Tensor) -> Optional[OrientedBox]:
    """The crop box one camera's `camera_meta` row carries, if any."""
    if float(meta[CROP]) == 0:
        return None
    return OrientedBox(R=meta[CROP_R].reshape(3, 3), T=meta[CROP_T], S=meta[CROP_S])


def pair_width(meta: torch.Tensor) -> int:
    """Floats per sent (Gaussian, camera) pair (`PAIR_SPLIT`): the colour's 3 channels, +1 (depth)
    when a camera of the render asks for it, and the other columns; every rank computes it alike."""
    return FIXED_COLUMNS + 3 + int(bool((meta[:, DEPTH_FLAG] > 0).any()))


def project_camera(
    rows: Dict[str, torch.Tensor],
    camera: int,
    local: int,
    cameras: torch.Tensor,
    meta: torch.Tensor,
    sh_degree: Optional[int],
    width: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """([V, width] pairs of the rows visible in camera `camera` (and inside its crop box), projected
    and coloured for it, their ids column `local`; the visible rows' indices): one owner's share
    of one camera, as `rasterize_pairs` takes it."""
    inputs = activate(rows)
    viewmat, intrinsics = cameras[camera, VIEWMAT].reshape(1, 4, 4), cameras[camera, K].reshape(1, 3, 3)
    w, h, depth, antialiased = (int(meta[camera, i]) for i in (WIDTH, HEIGHT, DEPTH_FLAG, ANTIALIASED))
    radii, means2d, depths, conics, compensations = project(
        inputs["means"], inputs["quats"], inputs["scales"], viewmat, intrinsics, w, h, compensate=bool(antialiased)
    )
    visible = radii[0] > 0
    crop = _crop_of(meta[camera])
    if crop is not None:
        visible &= crop.within(inputs["means"].detach()).reshape(-1)
    (index,) = torch.nonzero(visible, as_tuple=True)
    opacities = inputs["opacities"] if compensations is None else inputs["opacities"] * compensations[0]
    colors = view_colors(inputs["means"], inputs["colors"], camera_centres(viewmat)[0], sh_degree, visible)
    columns = [means2d[0], conics[0], opacities[:, None], colors]  # MEANS2D, CONIC, OPACITY, the colour
    if colour_channels(width) == 4:  # the render's depth channel (zeros for cameras that did not ask)
        columns.append(depths[0][:, None] if depth else torch.zeros_like(depths[0][:, None]))
    fixed = torch.stack([depths[0].detach(), radii[0].float()], 1)[index]  # DEPTH, RADIUS: sorting, tiles; no gradient
    ids = torch.full((len(index), 1), float(local), device=index.device)  # CAMERA
    return torch.cat([torch.cat(columns, 1)[index], fixed, ids], 1), index


def project_pairs(
    rows: Dict[str, torch.Tensor],
    counts: List[int],
    cameras: torch.Tensor,
    meta: torch.Tensor,
    sh_degree: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """([P, pair_width] projected Gaussians to send, their rows `order`, how many go to each rank):
    every row visible in a camera of the render (and inside its crop box), projected into it and
    coloured for it, camera after camera in rank order of the renderers (`counts` cameras each).
    What the renderer rasterizes, nothing more: a renderer holds per received Gaussian what
    rasterizing needs, not a re-projection's worth (the 3D inputs, covariances and their gradients).

    The shard is projected whole, as the rasterizer does, and only the projected pairs are
    gathered: gathering the visible rows' inputs first (SH coefficients: 48 floats each) costs
    more than projecting the invisible ones. One camera at a time, and recomputed in backward
    instead of kept: the activations and projections would otherwise live from the forward to the
    backward on top of the renderers' buffers, and an owner projects its shard into every camera
    of the step, so all cameras at once would not divide with the rank count. A render of one
    camera in all keeps them instead: they are then what a replicated rank keeps, and recomputing
    would only cost time. Nothing here draws random numbers.
    """
    width = pair_width(meta)
    names = list(rows)

    def pack(camera: int, local: int, cams: torch.Tensor, *values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return project_camera(dict(zip(names, values)), camera, local, cams, meta, sh_degree, width)

    values = list(rows.values())
    blocks, order, send_counts, camera = [], [], [], 0
    for count in counts:
        send_counts.append(0)
        for local in range(count):
            if torch.is_grad_enabled() and len(cameras) > 1:
                block, index = checkpoint(
                    pack, camera, local, cameras, *values, use_reentrant=False, preserve_rng_state=False
                )
            else:
                block, index = pack(camera, local, cameras, *values)
            blocks.append(block)
            order.append(index)
            send_counts[-1] += len(index)
            camera += 1
    if sum(send_counts) > 0:
        return torch.cat(blocks), torch.cat(order), send_counts
    # Nothing to send: still a function of the parameters and cameras, so that this rank's backward
    # reaches the exchanges (their all-to-alls run on every rank or on none).
    anchor = 0 * (cameras.sum() + sum(v.sum() for v in values))
    nothing = torch.zeros(0, dtype=torch.long, device=rows["means"].device)
    return cameras.new_zeros((0, width)) + anchor, nothing, send_counts


SLACK = 1e-2  # px: far above the rounding of y - top (~1e-5 px for y below 1e3), far below a tile


def route_to_ranges(
    block: torch.Tensor, ranges: List[Tuple[int, int]], width: int, height: int
) -> Tuple[torch.Tensor, torch.Tensor, List[int]]:
    """([S, width] pairs to send, [S] their rows in `block`, how many go to each rank): one camera's
    pairs (`project_camera`'s block) to every rank whose range of tiles (`pixels.plan.cut`) they
    may touch, in block order, each with its y moved up to the rows its rank renders and its ids
    column 0 (a rank renders its rows as one image). "May touch": the pair's tiles with its reach
    widened by `SLACK` px, so that a pair whose moved y rounds across a tile edge on the receiver
    (which recomputes its tiles) is there to draw; a pair sent that does not touch a tile draws
    nothing there."""
    x0, x1, y0, y1 = tile_bounds(block[:, MEANS2D].detach(), block[:, RADIUS].detach() + SLACK, width, height)
    touch = []
    for tiles in ranges:
        hit = torch.zeros_like(x0, dtype=torch.bool)
        for c0, c1, r0, r1 in tile_rectangles(tiles, width, height):
            hit |= (x0 < c1) & (x1 > c0) & (y0 < r1) & (y1 > r0)
        touch.append(hit)
    destination, picked = torch.nonzero(torch.stack(touch), as_tuple=True)  # destination-major, block order within
    counts = torch.bincount(destination, minlength=len(ranges)).tolist()
    tops = [float(rendered_rows(tiles, width, height)[0]) for tiles in ranges]
    shift = torch.tensor(tops, device=block.device)[destination]
    send = block[picked]  # a copy, moved in place: one pair buffer, not two
    send[:, MEAN_Y] -= shift
    send[:, CAMERA] = 0.0
    return send, picked, counts


def rasterize_received(
    received: torch.Tensor, n_views: int, width: int, height: int, render_mode: str, absgrad: bool
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(renders [n_views, H, W, D], alphas, means2d, radii) of received pairs: `rasterize_pairs` of
    their columns. `means2d` is the tensor whose gradient (or `.absgrad`) densification reads."""
    channels = colour_channels(received.shape[1])
    means2d, conics, opacities, colors, depths, radii, ids = torch.split(received, pair_columns(received.shape[1]), 1)
    means2d = means2d.contiguous()
    render, alpha = rasterize_pairs(
        means2d, conics.contiguous(), opacities.reshape(-1), colors.contiguous(), depths.reshape(-1).detach(),
        radii.reshape(-1).detach().int(), ids.reshape(-1).detach().long(), n_views, width, height,
        render_mode=render_mode if channels == 4 else "RGB", absgrad=absgrad,
    )  # fmt: skip
    if channels == 4 and render_mode != "RGB+ED":
        render = render[..., :3]
    return render, alpha, means2d, radii.reshape(-1).detach()
