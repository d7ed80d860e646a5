"""The rows a render needs, on the device: the GPU-side rows indexed, the host-side colours fetched.

See the package docstring for what moves and why."""

from __future__ import annotations

from typing import Dict, List, Tuple

import torch

from splatfacto_dist.render.raster import project

HOST_GROUPS = ("features_dc", "features_rest")
"""The Gaussian groups an offloaded model keeps in host memory, with their gradients and Adam state."""

VISIBILITY_CHUNK = 1 << 20
"""Rows projected at once to find the working set: bounds the pass's transient ([C, chunk] radii,
means, conics, depths: ~40 B per row and camera) for models of any size."""

Camera = Tuple[torch.Tensor, torch.Tensor, int, int]
"""(viewmat [4, 4], K [3, 3], width, height) of one camera."""


class FetchRows(torch.autograd.Function):
    """Rows `index` of a host tensor, on `device`; in backward their gradient goes back to the host,
    added into a gradient of the whole tensor that is zero elsewhere (a dense Adam steps every row,
    seen or not), or as a sparse gradient of those rows alone (`sparse`: the visible-only Adam)."""

    @staticmethod
    def forward(
        ctx, host: torch.Tensor, index: torch.Tensor, device: torch.device, sparse: bool = False
    ) -> torch.Tensor:  # type: ignore[override]
        where = index.to(host.device)
        ctx.save_for_backward(where)
        ctx.whole, ctx.sparse = host.shape, sparse
        return host.detach()[where].to(device)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        (where,) = ctx.saved_tensors
        rows = grad.to(where.device)
        if ctx.sparse:
            return torch.sparse_coo_tensor(where[None], rows, ctx.whole, is_coalesced=True), None, None, None
        whole = torch.zeros(ctx.whole, dtype=grad.dtype, device=where.device)
        return whole.index_add_(0, where, rows), None, None, None


@torch.no_grad()
def visible_rows(rows: Dict[str, torch.Tensor], cameras: List[Camera]) -> torch.Tensor:
    """[V] indices (ascending, on the rows' device) of the rows the rasterizer draws in some camera:
    those its projection gives a radius in (the rasterizer's own visibility test, `raster.project`)."""
    means, quats, scales = rows["means"].detach(), rows["quats"].detach(), rows["scales"].detach()
    seen = torch.zeros(len(means), dtype=torch.bool, device=means.device)
    for start in range(0, len(means), VISIBILITY_CHUNK):
        chunk = slice(start, start + VISIBILITY_CHUNK)
        for viewmat, K, width, height in cameras:  # the rasterizer's inputs (`raster.activate`)
            radii = project(
                means[chunk], quats[chunk], torch.exp(scales[chunk]), viewmat[None], K[None], width, height
            )[0]
            seen[chunk] |= radii[0] > 0
    return torch.nonzero(seen, as_tuple=True)[0]


def working_set(
    rows: Dict[str, torch.Tensor], cameras: List[Camera], sparse: bool = False
) -> Tuple[Dict[str, torch.Tensor], torch.Tensor]:
    """(the rows some camera sees, on the device: `HOST_GROUPS` fetched from the host, the others
    indexed where they are; their indices among `rows`). `sparse`: the host groups' gradients come
    back as sparse gradients of the fetched rows (`offload_adam sparse`)."""
    index = visible_rows(rows, cameras)
    device = rows["means"].device
    fetched = index
    if len(index) == 0 and len(rows["means"]) > 0:
        # One row that draws nothing keeps the render a function of every group, so each gets its
        # (zero) gradient and, dense, its Adam step, as when the whole model is rendered. Its colour is
        # a constant: no host row is fetched, and a sparse Adam moves none.
        index = torch.zeros(1, dtype=torch.long, device=device)
    subset = {}
    for name, value in rows.items():
        if name not in HOST_GROUPS:
            subset[name] = value[index]
            continue
        colours = FetchRows.apply(value, fetched, device, sparse)
        if len(fetched) < len(index):
            colours = torch.cat([colours, colours.new_zeros((1, *value.shape[1:]))])
        subset[name] = colours
    return subset, index
