"""Gaussian rasterization on either device.

CUDA tensors go to gsplat 1.4.0's kernels. CPU tensors go to `reference_rasterization`, a
pure-PyTorch rasterizer with the same inputs, outputs and `info` contract as the gsplat call
splatfacto makes, so that the whole training loop, densification included, runs on a machine
without a GPU. The reference is meant for tests and tiny scenes: it materializes every
(pixel, Gaussian) pair of the tiles a Gaussian touches, which is far too slow for real captures.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Literal, Optional, Tuple

import torch
from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci, _spherical_harmonics
from gsplat.cuda._wrapper import (
    fully_fused_projection as gsplat_projection,
    isect_offset_encode,
    isect_tiles,
    rasterize_to_pixels,
    spherical_harmonics,
)
from gsplat.rendering import rasterization as gsplat_rasterization

from splatfacto_dist.render.tiles import TILE_SIZE, tile_bounds, tile_grid

RenderMode = Literal["RGB", "RGB+ED"]

# What counts as visible, for the rasterizer and for the sharded layout's choice of which Gaussians to
# send a camera's rank (if the two disagreed, visible Gaussians would silently not be sent).
NEAR_PLANE = 0.01
FAR_PLANE = 1e10
EPS2D = 0.3  # gsplat's default low-pass filter of the projected covariances
_MIN_ALPHA = 1.0 / 255.0
_MAX_ALPHA = 0.999
_MIN_TRANSMITTANCE = 1e-4


def activate(rows: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Rasterizer inputs (means, quats, scales, opacities, colors) of splatfacto's parameter rows
    (SH coefficients when `features_rest` is among them, else sigmoid colours). A pure function:
    a layout applies it where it needs the inputs (a sharded owner once per camera, recomputed in
    backward), so nothing of the model is handed to it."""
    if "features_rest" in rows:
        colors = torch.cat((rows["features_dc"][:, None, :], rows["features_rest"]), dim=1)
    else:
        colors = lanewise(torch.sigmoid, rows["features_dc"])
    return {
        "means": rows["means"],
        "quats": rows["quats"],
        "scales": lanewise(torch.exp, rows["scales"]),
        "opacities": lanewise(torch.sigmoid, rows["opacities"]).squeeze(-1),
        "colors": colors,
    }


CPU_LANES = 64
"""A multiple of every CPU vector loop's step (16 float lanes of AVX-512, unrolled up to 4x)."""


def lanewise(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """`fn(x)` for an elementwise `fn`, each element's value independent of the tensor's length.

    On the CPU, torch computes exp and sigmoid in SIMD lanes and the last `numel % lanes` elements
    by a scalar loop, which rounds differently: a row's activation would depend on how many rows
    came before it, and a render of some rows (an offloaded working set, offload/) would differ in
    the last bit from a render of all. Padded to whole vectors, every element takes the vector
    path. CUDA computes every element alike: unchanged there."""
    if x.device.type != "cpu":
        return fn(x)
    n = x.numel()
    padded = torch.cat([x.reshape(-1), x.new_zeros((-n) % CPU_LANES)])
    return fn(padded)[:n].reshape(x.shape)


def rasterize(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: Optional[int],
    render_mode: RenderMode = "RGB",
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    absgrad: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Render C views of N Gaussians: ([C,H,W,D], alphas [C,H,W,1], info) like gsplat."""
    kwargs = dict(
        means=means,
        quats=quats,
        scales=scales,
        opacities=opacities,
        colors=colors,
        viewmats=viewmats,
        Ks=Ks,
        width=width,
        height=height,
        sh_degree=sh_degree,
        render_mode=render_mode,
        rasterize_mode=rasterize_mode,
        absgrad=absgrad,
    )
    if means.is_cuda:
        if sh_degree is not None:  # colours here, so gsplat does not invert the view matrices (below)
            kwargs.update(colors=_sh_colors(means, colors, viewmats, sh_degree), sh_degree=None)
        return gsplat_rasterization(
            packed=False,
            near_plane=NEAR_PLANE,
            far_plane=FAR_PLANE,
            eps2d=EPS2D,
            sparse_grad=False,
            tile_size=TILE_SIZE,
            **kwargs,
        )
    return reference_rasterization(**kwargs)


def camera_centres(viewmats: torch.Tensor) -> torch.Tensor:
    """[C, 3] camera centres -R^T t of rigid [C, 4, 4] view matrices: exact for a rigid pose, and
    unlike `torch.inverse` (whose singularity check waits for the GPU) it never blocks the host.
    Summed by hand, not by `einsum` (a batched matmul): cuBLAS would keep a 32 MiB workspace per
    thread that runs one, and a sharded replay runs this on the autograd thread too; measured as
    64 MB of a 2-rank rank's peak that did not divide with the ranks."""
    return -(viewmats[:, :3, :3] * viewmats[:, :3, 3:4]).sum(1)


def _sh_colors(means: torch.Tensor, coeffs: torch.Tensor, viewmats: torch.Tensor, sh_degree: int) -> torch.Tensor:
    """[C, N, 3] colours of N Gaussians' SH coefficients [N, K, 3] in C views, as gsplat's rasterization
    evaluates them, but with the camera centres read off the rigid view matrices: gsplat inverts
    them with `torch.inverse`, whose singularity check makes the host wait for the GPU at every
    render. Gaussians outside a view are evaluated too (gsplat masks them); they are not drawn, so
    neither the image nor any gradient changes."""
    dirs = means[None, :, :] - camera_centres(viewmats)[:, None, :]
    sh = spherical_harmonics(sh_degree, dirs, coeffs.expand(len(viewmats), -1, -1, -1))
    return torch.clamp_min(sh + 0.5, 0.0)


def project(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    compensate: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """[C, N] (radii, means2d, depths, conics, compensations or None) of N Gaussians in C views: the
    rasterizer's own projection, so that what is projected apart and rasterized later (the sharded
    layout) is what one `rasterize` call computes."""
    if means.is_cuda:
        return gsplat_projection(
            means, None, quats, scales, viewmats, Ks, width, height,
            eps2d=EPS2D, near_plane=NEAR_PLANE, far_plane=FAR_PLANE, calc_compensations=compensate,
        )  # fmt: skip
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    return _fully_fused_projection(
        means, covars, viewmats, Ks, width, height,
        eps2d=EPS2D, near_plane=NEAR_PLANE, far_plane=FAR_PLANE, calc_compensations=compensate,
    )  # fmt: skip


def view_colors(
    means: torch.Tensor,
    coeffs: torch.Tensor,
    centre: torch.Tensor,
    sh_degree: Optional[int],
    mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """[N, 3] colours of N Gaussians seen from one camera: SH evaluated as the rasterizer does
    (clamped at 0 after +0.5), or the colours themselves without SH. gsplat skips the Gaussians
    outside `mask` (their colours are then meaningless); the CPU reference evaluates every one."""
    if sh_degree is None:
        return coeffs
    dirs = means - centre
    if means.is_cuda:
        sh = spherical_harmonics(sh_degree, dirs, coeffs, masks=mask)
    else:
        sh = _spherical_harmonics(sh_degree, dirs, coeffs)
    return torch.clamp_min(sh + 0.5, 0.0)


def rasterize_pairs(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    depths: torch.Tensor,
    radii: torch.Tensor,
    camera_ids: torch.Tensor,
    n_cameras: int,
    width: int,
    height: int,
    render_mode: RenderMode = "RGB",
    absgrad: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """Renders [C, H, W, D] and alphas of P projected (Gaussian, camera) pairs ([P, .] inputs, as
    `project` made them; with "RGB+ED" the depth is the colours' last channel): the second half of
    `rasterize`, for a rank that received projected Gaussians instead of projecting them itself."""
    if len(means2d) == 0:  # still a function of the inputs: their gradients' exchange runs everywhere
        channels = colors.shape[-1]
        zero = 0 * (means2d.sum() + conics.sum() + opacities.sum() + colors.sum())
        renders = means2d.new_zeros((n_cameras, height, width, channels)) + zero
        if absgrad:
            means2d.absgrad = torch.zeros_like(means2d)  # what a rasterizer leaves for densification
        return renders, renders[..., :1]
    if means2d.is_cuda:
        tiles_x, tiles_y = tile_grid(width, height)
        _, isect_ids, flatten_ids = isect_tiles(
            means2d, radii, depths, TILE_SIZE, tiles_x, tiles_y, packed=True, n_cameras=n_cameras,
            camera_ids=camera_ids, gaussian_ids=torch.arange(len(means2d), device=means2d.device),
        )  # fmt: skip
        offsets = isect_offset_encode(isect_ids, n_cameras, tiles_x, tiles_y)
        renders, alphas = rasterize_to_pixels(
            means2d, conics, colors, opacities, width, height, TILE_SIZE, offsets, flatten_ids,
            packed=True, absgrad=absgrad,
        )  # fmt: skip
    else:
        renders, alphas = _composite(
            means2d, conics, opacities, colors, radii, depths, camera_ids, n_cameras, width, height, absgrad
        )
    return (_expected_depth(renders, alphas) if render_mode == "RGB+ED" else renders), alphas


def empty_render(
    like: torch.Tensor, n_views: int, width: int, height: int, render_mode: RenderMode
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """What rendering no Gaussian gives (an empty crop box): zeros, as stock's empty outputs."""
    channels = 4 if render_mode == "RGB+ED" else 3
    empty = like.new_zeros((n_views, height, width, channels))
    return empty, empty[..., :1], {}


def _expected_depth(renders: torch.Tensor, alphas: torch.Tensor) -> torch.Tensor:
    """The accumulated depth (last channel) divided by the accumulated alpha, as gsplat's "ED"."""
    return torch.cat([renders[..., :-1], renders[..., -1:] / alphas.clamp(min=1e-10)], dim=-1)


def reference_rasterization(
    means: torch.Tensor,
    quats: torch.Tensor,
    scales: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    viewmats: torch.Tensor,
    Ks: torch.Tensor,
    width: int,
    height: int,
    sh_degree: Optional[int],
    render_mode: RenderMode = "RGB",
    rasterize_mode: Literal["classic", "antialiased"] = "classic",
    absgrad: bool = False,
) -> Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]:
    """Pure-PyTorch twin of `gsplat.rasterization(packed=False)` for tests and tiny scenes.

    Projection and colours are `project`'s and `view_colors`' (gsplat's own PyTorch reference
    functions on the CPU); compositing follows gsplat's kernel: tiles of 16 px, pixels sorted front
    to back, Gaussians with alpha below 1/255 skipped, a pixel stops once its transmittance would
    fall to 1e-4. `info` carries `means2d` (retainable, with `.absgrad` after backward when
    `absgrad`), `radii`, `width`, `height`, `n_cameras` and the other keys gsplat's strategies read.
    """
    C = viewmats.shape[0]
    radii, means2d, depths, conics, compensations = project(
        means, quats, scales, viewmats, Ks, width, height, compensate=rasterize_mode == "antialiased"
    )
    view_opacities = opacities.repeat(C, 1)
    if compensations is not None:
        view_opacities = view_opacities * compensations
    per_view = colors.dim() == (3 if sh_degree is None else 4)  # gsplat takes [C, N, ...] colours too
    centres = camera_centres(viewmats)
    colours = torch.stack(
        [view_colors(means, colors[c] if per_view else colors, centres[c], sh_degree) for c in range(C)]
    )
    if render_mode == "RGB+ED":
        colours = torch.cat([colours, depths[..., None]], dim=-1)

    camera_ids = torch.arange(C, device=means.device).repeat_interleave(means.shape[0])
    renders, alphas = _composite(
        means2d, conics, view_opacities, colours, radii, depths, camera_ids, C, width, height, absgrad
    )
    if render_mode == "RGB+ED":
        renders = _expected_depth(renders, alphas)

    tiles_x, tiles_y = tile_grid(width, height)
    info: Dict[str, Any] = {
        "camera_ids": None,
        "gaussian_ids": None,
        "radii": radii,
        "means2d": means2d,
        "depths": depths,
        "conics": conics,
        "opacities": view_opacities,
        "tile_width": tiles_x,
        "tile_height": tiles_y,
        "width": width,
        "height": height,
        "tile_size": TILE_SIZE,
        "n_cameras": C,
    }
    return renders, alphas, info


class _GatherWithAbsGrad(torch.autograd.Function):
    """`source.reshape(-1, 2)[index]` whose backward also records gsplat's `absgrad`.

    gsplat sums |d loss / d mean2d| per pixel into `means2d.absgrad` (AbsGS); the sum of
    absolute per-pair gradients is the same quantity here, because each pair is one pixel.
    """

    @staticmethod
    def forward(ctx, source: torch.Tensor, index: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(index)
        ctx.source = source
        ctx.source_shape = source.shape
        return source.reshape(-1, 2)[index]

    @staticmethod
    def backward(ctx, grad_pairs: torch.Tensor):  # type: ignore[override]
        (index,) = ctx.saved_tensors
        rows = math.prod(ctx.source_shape[:-1])
        grad = torch.zeros(rows, 2, dtype=grad_pairs.dtype, device=grad_pairs.device)
        grad.index_add_(0, index, grad_pairs)
        absgrad = torch.zeros_like(grad).index_add_(0, index, grad_pairs.abs())
        ctx.source.absgrad = absgrad.reshape(ctx.source_shape)
        return grad.reshape(ctx.source_shape), None


@torch.no_grad()
def _tile_pixel_pairs(
    means2d: torch.Tensor, radii: torch.Tensor, depths: torch.Tensor, camera_ids: torch.Tensor, width: int, height: int
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All (Gaussian row, camera*H*W + pixel) pairs of the tiles each visible row touches (`tiles.tile_bounds`:
    the rule pixel ranges route pairs by); rows are the flattened leading dimensions of the inputs,
    `camera_ids` each row's camera."""
    radii, depths = radii.reshape(-1), depths.reshape(-1)
    (rows,) = torch.nonzero(radii > 0, as_tuple=True)
    if rows.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long, device=radii.device)
        return empty, empty, empty
    cam = camera_ids[rows]
    x0, x1, y0, y1 = tile_bounds(means2d.reshape(-1, 2)[rows], radii[rows], width, height)
    nx, ny = x1 - x0, y1 - y0
    per = nx * ny
    owner = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), per)
    offset = torch.arange(owner.numel(), device=rows.device) - torch.repeat_interleave(torch.cumsum(per, 0) - per, per)
    tx = x0[owner] + offset % nx[owner]
    ty = y0[owner] + offset // nx[owner]
    k = torch.arange(TILE_SIZE * TILE_SIZE, device=rows.device)
    px = (tx[:, None] * TILE_SIZE + k[None, :] % TILE_SIZE).reshape(-1)
    py = (ty[:, None] * TILE_SIZE + k[None, :] // TILE_SIZE).reshape(-1)
    owner = owner.repeat_interleave(TILE_SIZE * TILE_SIZE)
    keep = (px < width) & (py < height)
    owner, px, py = owner[keep], px[keep], py[keep]
    gauss_row = rows[owner]
    pixel_row = cam[owner] * (height * width) + py * width + px
    return gauss_row, pixel_row, depths[gauss_row]


def _composite(
    means2d: torch.Tensor,
    conics: torch.Tensor,
    opacities: torch.Tensor,
    colors: torch.Tensor,
    radii: torch.Tensor,
    depths: torch.Tensor,
    camera_ids: torch.Tensor,
    n_cameras: int,
    width: int,
    height: int,
    absgrad: bool,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """[n_cameras, H, W, D] renders and alphas of projected rows (the flattened leading dimensions
    of the inputs: [C, N] when projected densely, [P] for (Gaussian, camera) pairs)."""
    D = colors.shape[-1]
    gauss_row, pixel_row, pair_depth = _tile_pixel_pairs(
        means2d.detach(), radii, depths.detach(), camera_ids, width, height
    )

    def alphas_of(g: torch.Tensor, p: torch.Tensor, mean_xy: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        pix = p % (height * width)
        centers = torch.stack([(pix % width).to(mean_xy.dtype), (pix // width).to(mean_xy.dtype)], dim=-1) + 0.5
        d = centers - mean_xy
        conic = conics.reshape(-1, 3)[g]
        sigma = 0.5 * (conic[:, 0] * d[:, 0] ** 2 + conic[:, 2] * d[:, 1] ** 2) + conic[:, 1] * d[:, 0] * d[:, 1]
        return sigma, torch.clamp_max(opacities.reshape(-1)[g] * torch.exp(-sigma), _MAX_ALPHA)

    with torch.no_grad():
        sigma, alpha = alphas_of(gauss_row, pixel_row, means2d.detach().reshape(-1, 2)[gauss_row])
        keep = (sigma >= 0) & (alpha >= _MIN_ALPHA)
        gauss_row, pixel_row, pair_depth, alpha = gauss_row[keep], pixel_row[keep], pair_depth[keep], alpha[keep]
        order = torch.argsort(pair_depth, stable=True)
        order = order[torch.argsort(pixel_row[order], stable=True)]
        gauss_row, pixel_row, alpha = gauss_row[order], pixel_row[order], alpha[order]
        transmittance = _segment_transmittance(alpha, pixel_row)
        keep = transmittance * (1 - alpha) > _MIN_TRANSMITTANCE
        gauss_row, pixel_row = gauss_row[keep], pixel_row[keep]

    if absgrad:
        mean_xy = _GatherWithAbsGrad.apply(means2d, gauss_row)
    else:
        mean_xy = means2d.reshape(-1, 2)[gauss_row]
    _, alpha = alphas_of(gauss_row, pixel_row, mean_xy)
    weights = alpha * _segment_transmittance(alpha, pixel_row)
    n_pixels = n_cameras * height * width
    pair_colors = colors.reshape(-1, D)[gauss_row]
    renders = torch.zeros(n_pixels, D, dtype=colors.dtype, device=colors.device)
    renders = renders.index_add(0, pixel_row, weights[:, None] * pair_colors)
    alphas = torch.zeros(n_pixels, dtype=weights.dtype, device=weights.device).index_add(0, pixel_row, weights)
    return renders.reshape(n_cameras, height, width, D), alphas.reshape(n_cameras, height, width, 1)


def _segment_transmittance(alpha: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Exclusive product of (1 - alpha) within runs of equal `segment` (sorted), differentiable."""
    if alpha.numel() == 0:
        return alpha
    log_keep = torch.log1p(-alpha.double())
    inclusive = torch.cumsum(log_keep, 0)
    exclusive = inclusive - log_keep
    starts = torch.ones_like(segment, dtype=torch.bool)
    starts[1:] = segment[1:] != segment[:-1]
    start_index = torch.cummax(torch.where(starts, torch.arange(len(segment), device=segment.device), 0), 0).values
    return torch.exp(exclusive - exclusive[start_index]).to(alpha.dtype)
