"""The sharded layout's interface to the training step: each step's calls, delegated to the
package's modules (exchange, rebalance, saving, viewer_queue)."""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox

from splatfacto_dist import comm
from splatfacto_dist.layouts.replicated import GAUSSIAN_NAMES, ReplicatedLayout, _named_tensors
from splatfacto_dist.layouts.sharded.exchange import (
    AllCameras,
    Exchange,
    camera_meta,
    camera_rows,
    project_pairs,
    rasterize_received,
)
from splatfacto_dist.layouts.sharded.range_balance import RangeBalance
from splatfacto_dist.layouts.sharded.ranges import received_most, render_in_ranges
from splatfacto_dist.layouts.sharded.rebalance import rebalance
from splatfacto_dist.layouts.sharded.saving import gather_full_state, shard_optimizer_states
from splatfacto_dist.layouts.sharded.viewer_queue import ViewerQueue
from splatfacto_dist.reporting.profiling import PHASES


class ShardedLayout(ReplicatedLayout):
    """See the package docstring."""

    sharded = True

    keeps_ranks_for_viewer = True  # after training every rank keeps serving the viewer's renders

    def __init__(self, pixel_ranges: bool = True) -> None:
        super().__init__()
        # On several ranks: render in pixel ranges (`ranges`), else each camera on its own rank.
        self.pixel_ranges = pixel_ranges
        self._viewer = ViewerQueue()
        self._most_received = (0, 1)  # (rows, model total then): the render buffers' largest share
        self._balance = RangeBalance()  # pixel ranges: the tile price learnt from their render times

    # -- where each Gaussian starts --------------------------------------------------------------

    def block(self, n: int) -> slice:
        r, w = comm.rank(), comm.world_size()
        return slice(r * n // w, (r + 1) * n // w)

    def broadcast_initial(self, model: torch.nn.Module) -> None:
        """Gaussians are drawn identically everywhere and sliced; the rest starts as rank 0's."""
        shared = [p for name, p in model.named_parameters() if not name.startswith("gauss_params.")]
        comm.broadcast_tensors(shared + list(model.buffers()))

    # -- rendering -------------------------------------------------------------------------------

    def render(
        self,
        rows: Dict[str, torch.Tensor],
        crop: Optional[OrientedBox] = None,
        statistics: bool = True,
        **cameras: Any,
    ):
        """Render this rank's cameras (possibly none: it then only serves the others) from every
        rank's visible Gaussians; returns None when this rank has no camera. Each owner projects
        and colours its visible Gaussians for every camera of the render and sends the projected
        pairs. With pixel ranges (several ranks) every camera is rendered by all ranks in turn, each
        its range of tiles (`ranges`); otherwise the camera's rank rasterizes all of it, and the
        render's `info["exchange"]` says which rows went where, for `stats_to_owners`. One rank
        takes the by-camera path (the exchange is then the identity), so a 1-rank sharded run
        tests it. `statistics`: whether densification reads this render's statistics (in pixel
        ranges their exchange back to the owners, one per image, is skipped when not)."""
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
        if self.pixel_ranges and comm.world_size() > 1:
            return self._render_in_ranges(rows, every, meta, counts, n_views, cameras, statistics)
        packed, order, send_counts = project_pairs(rows, counts, every, meta, cameras.get("sh_degree"))
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
        self, rows, every, meta, counts: List[int], n_views: int, cameras: Dict[str, Any], statistics: bool
    ):
        """`render` with every image rendered by all ranks in pixel ranges (`ranges`); its statistics
        reach the owners in backward, in `info["ranges_job"]`."""
        render, alpha, job = render_in_ranges(rows, every, meta, counts, cameras, self._balance, statistics)
        PHASES.note("range wait", self._balance.last_wait_s)
        self._note_received(received_most(job))
        if n_views == 0:
            return None
        info = {"ranges_job": job, "width": cameras["width"], "height": cameras["height"], "n_cameras": n_views}
        return render, alpha, info

    def _note_received(self, received: int) -> None:
        """Keep the most pairs one render (one camera, by rows) made this rank hold."""
        if received > self._most_received[0]:
            self._most_received = (received, max(self.total, 1))

    def serve(self, rows: Dict[str, torch.Tensor], sh_degree: Optional[int]) -> None:
        """Take part in a render for which this rank has no camera (another rank's eval or viewer);
        its rows must be made as the renderer's are (colours or coefficients: `sh_degree`)."""
        empty = {"viewmats": torch.zeros((0, 4, 4)), "Ks": torch.zeros((0, 3, 3)), "width": 0, "height": 0}
        with torch.no_grad():
            self.render(rows, sh_degree=sh_degree, **empty)

    def stats_to_owners(self, rows: torch.Tensor, reduce_max: Optional[torch.Tensor], n: int, info: Dict[str, Any]):
        """Per received row statistics ([M, k] sums, [M] maxima) of the render that made `info`
        -> the owners' [n, k] and [n]."""
        order, send_counts, recv_counts = info["exchange"]
        packed = rows if reduce_max is None else torch.cat([rows, reduce_max[:, None]], dim=1)
        back = comm.all_to_all_rows(packed.contiguous(), recv_counts, send_counts)
        sums = torch.zeros((n, rows.shape[1]), dtype=rows.dtype, device=rows.device)
        sums.index_add_(0, order, back[:, : rows.shape[1]])
        if reduce_max is None:
            return sums, None
        maxima = torch.zeros(n, dtype=reduce_max.dtype, device=rows.device)
        maxima.scatter_reduce_(0, order, back[:, -1], reduce="amax")
        return sums, maxima

    def average_gradients(self, groups: Dict[str, List[torch.nn.Parameter]]) -> None:
        """Only the replicated groups (camera poses, bilateral grids): the Gaussians' gradients
        arrived at their owners through the exchange, already averaged."""
        super().average_gradients({k: v for k, v in groups.items() if k not in GAUSSIAN_NAMES})

    def squared_norms(self, grads: Dict[str, List[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """The Gaussian groups' squared norms summed over the shards (one small all-reduce); every
        rank must ask for the same groups."""
        norms = super().squared_norms(grads)
        split = [name for name in norms if name in GAUSSIAN_NAMES]
        if split:
            devices = [norms[name].device for name in split if norms[name].device.type != "cpu"]
            device = devices[0] if devices else torch.device("cpu")  # a group without gradients gives a CPU 0
            summed = comm.all_reduce_sum(torch.stack([norms[name].to(device) for name in split]))
            norms.update(zip(split, summed))
        return norms

    def reduce_stats(self, state: Dict[str, Any]) -> None:
        """Nothing to reduce: each owner already holds the statistics of every camera."""

    # -- refine: counts and balance -------------------------------------------------------------

    def after_refine(self, params, optimizers, state, counts: Tuple[int, int, int]) -> Tuple[int, int, int]:
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

    def report(self, local: int) -> str:
        record = self.record(local)
        return (
            f", owns {local} of {self.total} Gaussians, rendered up to {record['most_received']} in one render"
            f" ({100 * record['most_received_share']:.0f}% of the model then)"
        )

    def verify_total(self, local: int) -> None:
        (total,) = comm.all_reduce_ints([local])
        if total != self.total:
            raise comm.ReplicaMismatch(f"the shards hold {total} Gaussians, every rank expects {self.total}")

    # -- checkpoints -----------------------------------------------------------------------------

    def full_state(self, pipeline: torch.nn.Module, optimizers: Any) -> Optional[Tuple[Dict, Dict, torch.Tensor]]:
        """Every shard gathered to rank 0's CPU in bounded chunks (`gather_full_state`)."""
        return gather_full_state(pipeline, optimizers, self.total)

    def local_optimizer_states(self, saved: Dict[str, Dict]) -> Dict[str, Dict]:
        return shard_optimizer_states(saved, self.block)

    def named_replicated(self, model: torch.nn.Module, optimizers: Any) -> List[Tuple[str, torch.Tensor]]:
        """Only what is still replicated: camera optimizer, bilateral grids and their Adam states."""
        return _named_tensors(model, optimizers, skip=GAUSSIAN_NAMES)

    # -- the viewer --------------------------------------------------------------------------------

    def render_for_viewer(self, render: Callable[[], Any]) -> Any:
        """From rank 0's viewer thread: have the training threads render with every rank's Gaussians
        (`ViewerQueue.submit`)."""
        if not comm.is_distributed():
            return render()
        return self._viewer.submit(render, self.train_lock)

    def pending_renders(self) -> int:
        return self._viewer.pending()

    def serve_viewer(self, count: int, serve_empty: Callable[[], None]) -> float:
        """Every rank, on the training thread: serve rank 0's `count` oldest viewer renders. Returns,
        on rank 0, the longest a served render waited from its request to its result (ms)."""
        return self._viewer.serve(count, comm.is_main(), serve_empty)

    def close_viewer(self, why: str) -> None:
        """The ranks serve no more renders: fail the waiting ones and refuse new ones with `why`."""
        self._viewer.close(why)
