"""The replicated layout (the default): every rank holds every Gaussian and its Adam state.

Gradients are all-reduced (no group is split), densification statistics are summed over the ranks
just before a refine, and a save is rank 0's own copy. Nothing here moves a Gaussian: the
replicas stay equal because every rank applies the same averaged step and the same draws.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox

from splatfacto_dist import comm
from splatfacto_dist.layouts.contract import RefineCounts, Render, WholeGaussians
from splatfacto_dist.offload.working_set import working_set
from splatfacto_dist.render.raster import activate, empty_render, rasterize


class ReplicatedLayout:
    """Every rank holds the whole model; see the module docstring (a `GaussianLayout`)."""

    sharded = False
    split_groups: Tuple[str, ...] = ()

    def __init__(self, offload: Optional[str] = None) -> None:
        self.total = 0
        self.offload = offload  # the host Adam ("dense", "sparse") of colours in host memory (offload/), or None

    def hold(self, n: int) -> slice:
        self.total = n
        return slice(0, n)

    def render(
        self,
        rows: Dict[str, torch.Tensor],
        crop: Optional[OrientedBox] = None,
        statistics: Optional[Dict[str, torch.Tensor]] = None,
        loss_by_range: bool = False,
        **cameras: Any,
    ) -> Optional[Render]:
        """`rasterize(**activate(rows), **cameras)` of the rows inside `crop` (the viewer's crop
        box). Densification takes its statistics from the render's info after backward. Offloaded,
        the rows are the cameras' working set, whose indices the info keeps for `stats_to_owners`."""
        working = None
        if self.offload:
            width, height = cameras["width"], cameras["height"]
            views = [(v, K, width, height) for v, K in zip(cameras["viewmats"], cameras["Ks"])]
            rows, working = working_set(rows, views, sparse=self.offload == "sparse")
        if crop is not None:
            inside = crop.within(rows["means"]).reshape(-1)
            if not bool(inside.any()):
                return empty_render(rows["means"], len(cameras["viewmats"]), cameras["width"], cameras["height"],
                                    cameras.get("render_mode", "RGB"))  # fmt: skip
            rows = {k: v[inside] for k, v in rows.items()}
        render, alpha, info = rasterize(**activate(rows), **cameras)
        if working is not None:
            info["working_rows"] = working
        return render, alpha, info

    def stats_to_owners(
        self, rows: torch.Tensor, maxima: Optional[torch.Tensor], n: int, info: Dict[str, Any]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The rendered rows are the owners' rows (offloaded: the working set's, put back in place)."""
        working = info.get("working_rows")
        if working is None:
            return rows, maxima
        sums = torch.zeros((n, rows.shape[1]), dtype=rows.dtype, device=rows.device).index_add_(0, working, rows)
        if maxima is None:
            return sums, None
        return sums, torch.zeros(n, dtype=maxima.dtype, device=maxima.device).index_copy_(0, working, maxima)

    def reduce_stats(self, state: Dict[str, Any]) -> None:
        comm.reduce_densification_stats(state)

    def after_refine(
        self, params: Mapping[str, torch.nn.Parameter], optimizers: Mapping[str, Any], state: Dict[str, Any],
        counts: RefineCounts,
    ) -> RefineCounts:  # fmt: skip
        """Every rank refined the whole model alike: its counts are the model's."""
        self.total = len(params["means"])
        return counts

    def gather(
        self, params: Mapping[str, torch.Tensor], optimizers: Mapping[str, torch.optim.Optimizer], ids: torch.Tensor,
        statistics: Mapping[str, torch.Tensor],
    ) -> Optional[WholeGaussians]:  # fmt: skip
        """Rank 0's own copy (the others' are equal), with the statistics of every rank's cameras (each
        rank holds those of its own until a refine sums them: summed here on a copy)."""
        summed = {k: v.clone() for k, v in statistics.items()}
        if summed:
            comm.reduce_densification_stats(summed)
        if not comm.is_main():
            return None
        moments = {
            name: {k: v for k, v in optimizers[name].state.get(p, {}).items() if k != "step"}
            for name, p in params.items()
        }
        return WholeGaussians({k: v.detach() for k, v in params.items()}, moments, ids.cpu(), summed)

    def record(self, local: int) -> Dict[str, Any]:
        return {"gaussians": local}

    def verify_total(self, local: int) -> None:
        if local != self.total:
            raise comm.ReplicaMismatch(f"rank {comm.rank()} holds {local} Gaussians, expected {self.total}")
