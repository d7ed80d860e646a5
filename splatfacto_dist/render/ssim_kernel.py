"""SSIM of NCHW float images as four Triton kernels (two forward, two backward), differentiable in
the first image: the loss pytorch_msssim computes, without its twenty convolutions and the
elementwise graph around them.

The window is separable, so each direction is one pass: rows, then columns. Forward, the row pass
filters the five products (x, y, x², y², xy) into one buffer and the column pass finishes the
five local moments and, in the same kernel, the SSIM map's sum (per program, then summed by torch:
the same order on every run) and the map's three derivatives the backward needs. With
A = mean(x), B = mean(x²), C = mean(xy) in each window, the gradient of the mean map is
G * dS/dA + 2x (G * dS/dB) + y (G * dS/dC), G the window's adjoint (a full correlation), so
backward is again one row pass and one column pass, finishing with that sum.
"""

from __future__ import annotations

import functools
import math
from typing import Tuple

import torch
import triton
import triton.language as tl

TAPS = 11  # pytorch_msssim's window: 11 taps, sigma 1.5
SIGMA = 1.5
C1, C2 = 0.01**2, 0.03**2  # K = (0.01, 0.03), data range 1
BLOCK = 256


@functools.lru_cache(maxsize=None)
def gaussian_window(device: torch.device) -> torch.Tensor:
    """pytorch_msssim's `_fspecial_gauss_1d(11, 1.5)`, on `device`; made once per device (the kernels
    only read it), not copied to the GPU at every step."""
    coords = torch.arange(TAPS, dtype=torch.float32) - TAPS // 2
    g = torch.exp(-(coords**2) / (2 * SIGMA**2))
    return (g / g.sum()).to(device)


@triton.jit
def _rows_valid(x_ptr, y_ptr, g_ptr, out_ptr, W, W_out, map_stride, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    """Row pass, valid region: the five products of x and y filtered along each row."""
    r = tl.program_id(0).to(tl.int64)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < W_out
    base = r * W
    ax = tl.zeros([BLOCK], tl.float32)
    ay = tl.zeros([BLOCK], tl.float32)
    axx = tl.zeros([BLOCK], tl.float32)
    ayy = tl.zeros([BLOCK], tl.float32)
    axy = tl.zeros([BLOCK], tl.float32)
    for t in tl.static_range(TAPS):
        w = tl.load(g_ptr + t)
        x = tl.load(x_ptr + base + j + t, mask=mask, other=0.0)
        y = tl.load(y_ptr + base + j + t, mask=mask, other=0.0)
        ax += w * x
        ay += w * y
        axx += w * x * x
        ayy += w * y * y
        axy += w * x * y
    o = r * W_out + j
    tl.store(out_ptr + o, ax, mask=mask)
    tl.store(out_ptr + map_stride + o, ay, mask=mask)
    tl.store(out_ptr + 2 * map_stride + o, axx, mask=mask)
    tl.store(out_ptr + 3 * map_stride + o, ayy, mask=mask)
    tl.store(out_ptr + 4 * map_stride + o, axy, mask=mask)


@triton.jit
def _columns_valid_ssim(
    h_ptr, g_ptr, partial_ptr, deriv_ptr, H, H_out, W_out, map_stride, deriv_stride, n_blocks,
    c1, c2, TRAIN: tl.constexpr, TAPS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Column pass, valid region, then the SSIM map: its per-program sum, and (TRAIN) dS/dA, dS/dB,
    dS/dC at every valid pixel."""
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // H_out
    i = pid % H_out
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = j < W_out
    mx = tl.zeros([BLOCK], tl.float32)
    my = tl.zeros([BLOCK], tl.float32)
    mxx = tl.zeros([BLOCK], tl.float32)
    myy = tl.zeros([BLOCK], tl.float32)
    mxy = tl.zeros([BLOCK], tl.float32)
    for t in tl.static_range(TAPS):
        w = tl.load(g_ptr + t)
        o = (plane * H + i + t) * W_out + j
        mx += w * tl.load(h_ptr + o, mask=mask, other=0.0)
        my += w * tl.load(h_ptr + map_stride + o, mask=mask, other=0.0)
        mxx += w * tl.load(h_ptr + 2 * map_stride + o, mask=mask, other=0.0)
        myy += w * tl.load(h_ptr + 3 * map_stride + o, mask=mask, other=0.0)
        mxy += w * tl.load(h_ptr + 4 * map_stride + o, mask=mask, other=0.0)
    s11 = mxx - mx * mx
    s22 = myy - my * my
    s12 = mxy - mx * my
    l_den = mx * mx + my * my + c1
    c_den = s11 + s22 + c2
    lum = (2 * mx * my + c1) / l_den
    cs = (2 * s12 + c2) / c_den
    s = lum * cs
    tl.store(partial_ptr + pid * n_blocks + tl.program_id(1), tl.sum(tl.where(mask, s, 0.0), axis=0))
    if TRAIN:
        d_a = cs * 2 * (my - lum * mx) / l_den + lum * (2 * mx * cs - 2 * my) / c_den
        d_b = -s / c_den
        d_c = 2 * lum / c_den
        o = pid * W_out + j
        tl.store(deriv_ptr + o, d_a, mask=mask)
        tl.store(deriv_ptr + deriv_stride + o, d_b, mask=mask)
        tl.store(deriv_ptr + 2 * deriv_stride + o, d_c, mask=mask)


@triton.jit
def _adjoint_taps(d_ptr, stride, g_ptr, centre, step, index, limit, mask, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    """One adjoint pass over the three derivative maps (`stride` apart): output `centre` gathers
    tap t from `centre - t * step`, where its coordinate along the pass, `index - t`, lies in
    [0, limit)."""
    a = tl.zeros([BLOCK], tl.float32)
    b = tl.zeros([BLOCK], tl.float32)
    c = tl.zeros([BLOCK], tl.float32)
    for t in tl.static_range(TAPS):
        w = tl.load(g_ptr + t)
        ok = mask & (index - t >= 0) & (index - t < limit)
        o = centre - t * step
        a += w * tl.load(d_ptr + o, mask=ok, other=0.0)
        b += w * tl.load(d_ptr + stride + o, mask=ok, other=0.0)
        c += w * tl.load(d_ptr + 2 * stride + o, mask=ok, other=0.0)
    return a, b, c


@triton.jit
def _rows_full(d_ptr, g_ptr, out_ptr, W, W_out, in_stride, out_stride, TAPS: tl.constexpr, BLOCK: tl.constexpr):
    """Row pass of the adjoint: the three derivative maps (valid width) spread back over full rows."""
    r = tl.program_id(0).to(tl.int64)
    x = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = x < W
    a, b, c = _adjoint_taps(d_ptr, in_stride, g_ptr, r * W_out + x, 1, x, W_out, mask, TAPS=TAPS, BLOCK=BLOCK)
    o = r * W + x
    tl.store(out_ptr + o, a, mask=mask)
    tl.store(out_ptr + out_stride + o, b, mask=mask)
    tl.store(out_ptr + 2 * out_stride + o, c, mask=mask)


@triton.jit
def _columns_full_grad(
    r_ptr, x_ptr, y_ptr, g_ptr, scale_ptr, grad_ptr, H, H_out, W, map_stride, n_pixels,
    TAPS: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Column pass of the adjoint, then the gradient of the mean map with respect to x."""
    pid = tl.program_id(0).to(tl.int64)
    plane = pid // H
    yrow = pid % H
    x = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = x < W
    centre = (plane * H_out + yrow) * W + x
    a, b, c = _adjoint_taps(r_ptr, map_stride, g_ptr, centre, W, yrow, H_out, mask, TAPS=TAPS, BLOCK=BLOCK)
    o = pid * W + x
    xv = tl.load(x_ptr + o, mask=mask, other=0.0)
    yv = tl.load(y_ptr + o, mask=mask, other=0.0)
    scale = tl.load(scale_ptr) / n_pixels
    tl.store(grad_ptr + o, scale * (a + 2 * xv * b + yv * c), mask=mask)


def _grid(rows: int, width: int) -> Tuple[int, int]:
    return rows, math.ceil(width / BLOCK)


class FusedSSIM(torch.autograd.Function):
    """mean SSIM(x, y) over the valid region of [B, C, H, W] float32 images, H and W >= 11; the
    gradient flows to `x` only."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.dtype = x.dtype  # the gradient's (mixed precision renders in half); the kernels work in float32
        x, y = x.contiguous().float(), y.contiguous().float()
        B, C, H, W = x.shape
        planes, H_out, W_out = B * C, H - TAPS + 1, W - TAPS + 1
        g = gaussian_window(x.device)
        rows = torch.empty((5, planes * H, W_out), device=x.device)
        _rows_valid[_grid(planes * H, W_out)](x, y, g, rows, W, W_out, planes * H * W_out, TAPS=TAPS, BLOCK=BLOCK)
        grid = _grid(planes * H_out, W_out)
        partial = torch.empty(grid, device=x.device)
        train = ctx.needs_input_grad[0]
        deriv = torch.empty((3, planes * H_out, W_out) if train else (1,), device=x.device)
        _columns_valid_ssim[grid](
            rows, g, partial, deriv, H, H_out, W_out, planes * H * W_out, planes * H_out * W_out, grid[1],
            C1, C2, TRAIN=train, TAPS=TAPS, BLOCK=BLOCK,
        )  # fmt: skip
        n_pixels = planes * H_out * W_out
        if train:
            ctx.save_for_backward(x, y, g, deriv)
            ctx.shape, ctx.n_pixels = (planes, H, W, H_out, W_out), float(n_pixels)
        return partial.sum() / n_pixels

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, y, g, deriv = ctx.saved_tensors
        planes, H, W, H_out, W_out = ctx.shape
        rows = torch.empty((3, planes * H_out, W), device=x.device)
        _rows_full[_grid(planes * H_out, W)](
            deriv, g, rows, W, W_out, planes * H_out * W_out, planes * H_out * W, TAPS=TAPS, BLOCK=BLOCK
        )
        grad = torch.empty_like(x)
        scale = grad_out.reshape(1).float().contiguous()
        _columns_full_grad[_grid(planes * H, W)](
            rows, x, y, g, scale, grad, H, H_out, W, planes * H_out * W, ctx.n_pixels, TAPS=TAPS, BLOCK=BLOCK
        )
        return grad.to(ctx.dtype), None
