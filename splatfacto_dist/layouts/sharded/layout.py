"""The sharded layout's answer to each call of the `GaussianLayout` contract, delegated to the
package's modules (exchange, ranges, rebalance, saving)."""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox

from splatfacto_dist import comm
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES, RefineCounts, Render, WholeGaussians
from splatfacto_dist.layouts.sharded.exchange import (
    AllCameras,
    Exchange,
    camera_meta,
    camera_rows,
    project_pairs,
    rasterize_received,
    views_of,
)
from splatfacto_dist.layouts.sharded.range_balance import RangeBalance
from splatfacto_dist.layouts.sharded.ranges import received_most, render_in_ranges
from splatfacto_dist.layouts.sharded.rebalance import rebalance
from splatfacto_dist.layouts.sharded.saving import gather_whole
from splatfacto_dist.offload.working_set import working_set
from splatfacto_dist.reporting.profiling import PHASES


class ShardedLayout:
    """See the package docstring (a `GaussianLayout`)."""

    sharded = True
    split_groups = GAUSSIAN_NAMES

    def __init__(self, pixel_ranges: bool = True, offload: Optional[str] = None) -> None:
        self.total = 0
        self.offload = offload  # the host Adam ("dense", "sparse") of colours in host memory (offload/), or None
        # On several ranks: render in pixel ranges (`ranges`), else each camera on its own rank.
        self.pixel_ranges = pixel_ranges
        self._most_received = (0, 1)  # (rows, model total then): the render buffers' largest share
        self._balance = RangeBalance()  # pixel ranges: the tile price learnt from their render times

    # -- rendering -------------------------------------------------------------------------------

    def render(
        self,
        rows: Dict[str, torch.Tensor],
        crop: Optional[OrientedBox] = None,
        statistics: Optional[Dict[str, torch.Tensor]] = None,
        loss_by_range: bool = False,
        **cameras: Any,
    ) -> Optional[Render]:
        """Render this rank's cameras (possibly none: it then only serves the others) from every
        rank's visible Gaussians; returns None when this rank has no camera. Each owner projects
        and colours its visible Gaussians for every camera of the render and sends the projected
        pairs. With pixel ranges (several ranks) every camera is rendered by all ranks in turn, each
        its range of tiles (`ranges`); otherwise the camera's rank rasterizes all of it, and the
        render's `info["exchange"]` says which rows went where, for `stats_to_owners`. One rank
        takes the by-camera path (the exchange is then the identity), so a 1-rank sharded run
        tests it. `statistics`: the owners' densification buffers; in pixel ranges the render's
        backward adds to them (and skips their exchange, one per image, when None). Offloaded, an
        owner's rows are its working set for the render's cameras, whose statistics go back to the
        rows they came from."""
        viewmats, Ks = cameras["viewmats"], cameras["Ks"]
        width, height = cameras["width"], cameras["height"]
        render_mode = cameras.get("render_mode", "RGB")
        device = rows["means"].device
        n_views = viewmats.shape[0]
        antialiased = cameras.get("rasterize_mode", "classic") == "antialiased"
        local = camera_rows(viewmats, Ks, device)
        mine = camera_meta(n_views, width, height, render_mode == "RGB+ED", antialiased, crop)
        counts = comm.all_gather_ints(n_views, device)
        every = AllCameras.apply(local, counts)
        meta = torch.cat(comm.all_gather_rows(mine, counts))
        working = None
        if self.offload:
            rows, working = working_set(rows, views_of(every.detach(), meta), sparse=self.offload == "sparse")
        if self.pixel_ranges and comm.world_size() > 1:
            cameras["loss_by_range"] = loss_by_range
            return self._render_in_ranges(rows, every, meta, counts, n_views, cameras, statistics, working)
        packed, order, send_counts = project_pairs(rows, counts, every, meta, cameras.get("sh_degree"))
        if working is not None:
            order = working[order]
        recv_counts = comm.exchange_counts(send_counts, device)
        self._note_received(sum(recv_counts))
        received = Exchange.apply(packed, send_counts, recv_counts)
        if n_views == 0:
            return None
        render, alpha, means2d, radii = rasterize_received(
            received, n_views, width, height, render_mode, bool(cameras.get("absgrad"))
        )
        info = {
            "means2d": means2d,
            "radii": radii,
            "width": width,
            "height": height,
            "n_cameras": n_views,
            "exchange": (order, send_counts, recv_counts),
        }
        return render, alpha, info

    def _render_in_ranges(
        self, rows, every, meta, counts: List[int], n_views: int, cameras: Dict[str, Any],
        statistics: Optional[Dict[str, torch.Tensor]], working: Optional[torch.Tensor],
    ) -> Optional[Render]:  # fmt: skip
        """`render` with every image rendered by all ranks in pixel ranges (`ranges`); its statistics
        reach the owners' `statistics` (at the `working` rows, when given) in backward."""
        render, alpha, job = render_in_ranges(rows, every, meta, counts, cameras, self._balance, statistics, working)
        PHASES.note("range wait", self._balance.last_wait_s)
        self._note_received(received_most(job))
        if render is None:
            return None
        info = {"ranges_job": job, "width": cameras["width"], "height": cameras["height"], "n_cameras": n_views}
        return render, alpha, info

    def _note_received(self, received: int) -> None:
        """Keep the most pairs one render (one camera, by rows) made this rank hold."""
        if received > self._most_received[0]:
            self._most_received = (received, max(self.total, 1))

    def stats_to_owners(
        self, rows: torch.Tensor, maxima: Optional[torch.Tensor], n: int, info: Dict[str, Any]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per received row statistics ([M, k] sums, [M] maxima) of the render that made `info`
        -> the owners' [n, k] and [n]."""
        order, send_counts, recv_counts = info["exchange"]
        packed = rows if maxima is None else torch.cat([rows, maxima[:, None]], dim=1)
        back = comm.all_to_all_rows(packed.contiguous(), recv_counts, send_counts)
        sums = torch.zeros((n, rows.shape[1]), dtype=rows.dtype, device=rows.device)
        sums.index_add_(0, order, back[:, : rows.shape[1]])
        if maxima is None:
            return sums, None
        owned = torch.zeros(n, dtype=maxima.dtype, device=rows.device)
        owned.scatter_reduce_(0, order, back[:, -1], reduce="amax")
        return sums, owned

    def reduce_stats(self, state: Dict[str, Any]) -> None:
        """Nothing to reduce: each owner already holds the statistics of every camera."""

    # -- refine: counts and balance -------------------------------------------------------------

    def after_refine(
        self, params: Mapping[str, torch.nn.Parameter], optimizers: Mapping[str, Any], state: Dict[str, Any],
        counts: RefineCounts,
    ) -> RefineCounts:  # fmt: skip
        """The whole model's (duplicated, split, pruned) from this shard's; updates the total and
        rebalances the shards (`rebalance`)."""
        counts = tuple(comm.all_reduce_ints(list(counts), params["means"].device))
        self.total += counts[0] + counts[1] - counts[2]
        rebalance(params, optimizers, state)
        return counts  # type: ignore[return-value]

    def record(self, local: int) -> Dict[str, Any]:
        """The rank's shard, and the most Gaussians one of its renders received (projected pairs, its
        own included): beyond the shard, a rank's memory grows with what its cameras see."""
        rows, total = self._most_received
        return {"owned": local, "total": self.total, "most_received": rows, "most_received_share": rows / total}

    def verify_total(self, local: int) -> None:
        (total,) = comm.all_reduce_ints([local])
        if total != self.total:
            raise comm.ReplicaMismatch(f"the shards hold {total} Gaussians, every rank expects {self.total}")

    # -- checkpoints -----------------------------------------------------------------------------

    def hold(self, n: int) -> slice:
        """An even block of rows per rank, in rank order (shards drift from it as they densify)."""
        self.total = n
        r, w = comm.rank(), comm.world_size()
        return slice(r * n // w, (r + 1) * n // w)

    def gather(
        self, params: Mapping[str, torch.Tensor], optimizers: Mapping[str, torch.optim.Optimizer], ids: torch.Tensor,
        statistics: Mapping[str, torch.Tensor],
    ) -> Optional[WholeGaussians]:  # fmt: skip
        """Every shard gathered to rank 0's CPU in bounded chunks (`gather_whole`); an owner's
        statistics are already those of every camera."""
        return gather_whole(params, optimizers, ids, statistics, self.total)
