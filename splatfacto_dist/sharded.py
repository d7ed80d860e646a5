"""Gaussian-sharded layout: each rank owns a disjoint part of the Gaussians and their Adam state.

One render, data's path: every rank learns every camera of the render (a small all-gather) ->
each owner finds its Gaussians visible in each camera (no gradient), projects them into it and
colours them for it (SH evaluated where the coefficients live), and sends each camera's rank the
projected pairs (means2d, conic, opacity, colour, depth, radius: 12 floats; one uneven
all-to-all) -> the camera's rank only rasterizes what it received, holding per received Gaussian
what rasterizing needs and not a re-projection's worth -> in backward the pairs' gradients take
the reverse all-to-all to the owners, through their projections, summed over cameras and
divided by the world size (the average a replicated run takes). After backward, per-pair
densification statistics return to the owners the same way, so an owner's statistics cover
every camera of the step and its refine decisions equal a replicated run's. Shards drift as they
densify; after a refine they are rebalanced (see `after_refine`). Checkpoints gather every shard
to rank 0's CPU in splatfacto's layout, in bounded chunks. After training, if the viewer stays
open, every rank keeps serving its renders (the model never has to fit on one GPU).
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox
from nerfstudio.utils.rich_utils import CONSOLE
from torch.utils.checkpoint import checkpoint

from splatfacto_dist import comm
from splatfacto_dist.layout import GAUSSIAN_NAMES, ReplicatedLayout, _named_tensors
from splatfacto_dist.ops import RowCodec
from splatfacto_dist.raster import project, rasterize_pairs, view_colors

REBALANCE_RATIO = 1.1
"""Rebalance after a refine once the largest shard exceeds the smallest by this factor (Grendel-GS's)."""

SAVE_CHUNK_BYTES = 64 << 20
"""The most bytes of packed Gaussians (parameters, Adam moments, ids) a save puts in one GPU buffer:
a model at capacity has no room for its shard twice, and 64 MiB chunks keep the save's transfers
large enough to run at the link's speed."""


class _Exchange(torch.autograd.Function):
    """Rows to their renderers in forward; their gradients back to the owners in backward."""

    @staticmethod
    def forward(ctx, send: torch.Tensor, send_counts: List[int], recv_counts: List[int]) -> torch.Tensor:  # type: ignore[override]
        ctx.counts = (send_counts, recv_counts)
        return comm.all_to_all_rows(send, send_counts, recv_counts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        send_counts, recv_counts = ctx.counts
        back = comm.all_to_all_rows(grad.contiguous(), recv_counts, send_counts)
        return back / comm.world_size(), None, None


class _AllCameras(torch.autograd.Function):
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
        # x world size: the pairs' gradients reached the owners through `_Exchange`, which divides
        # by it for the Gaussians' average; a camera's gradient is its own rank's, averaged later
        # with the other replicated parameters (as a replicated run averages it once).
        return back.reshape(len(counts), mine, grad.shape[1]).sum(dim=0) * comm.world_size(), None


def camera_rows(viewmats: torch.Tensor, Ks: torch.Tensor, device: torch.device) -> torch.Tensor:
    """[C, 25] rows of one rank's cameras (viewmat 16, K 9), differentiable in the viewmats: the
    owners project and colour for the renderer, and a pose optimizer learns through both."""
    n = viewmats.shape[0]
    return torch.cat([viewmats.reshape(n, 16).float().to(device), Ks.reshape(n, 9).float().to(device)], 1)


def camera_meta(
    n: int, width: int, height: int, depth: bool, antialiased: bool, crop: Optional[OrientedBox]
) -> torch.Tensor:
    """[n, 20] host rows of what else the owners must know of one rank's cameras: width, height, the
    render's flags (depth channel, antialiased), its crop box (present, R 9, T 3, S 3). Made on the
    host, apart from the poses: alone, a rank reads them without waiting for the GPU."""
    box = torch.zeros(16)
    if crop is not None:
        box = torch.cat([torch.ones(1), crop.R.reshape(9).cpu(), crop.T.reshape(3).cpu(), crop.S.reshape(3).cpu()])
    flags = torch.tensor([width, height, float(depth), float(antialiased)])
    return torch.cat([flags, box.float()]).expand(n, 20)


def _crop_of(meta: torch.Tensor) -> Optional[OrientedBox]:
    """The crop box one camera's `camera_meta` row carries, if any."""
    if float(meta[4]) == 0:
        return None
    return OrientedBox(R=meta[5:14].reshape(3, 3), T=meta[14:17], S=meta[17:20])


def pair_width(meta: torch.Tensor) -> int:
    """Floats per sent (Gaussian, camera) pair: means2d 2, conic 3, opacity, colour 3 (+ depth when
    a camera of the render asks for it), depth, radius, camera; every rank computes it alike."""
    return 2 + 3 + 1 + 3 + int(bool((meta[:, 2] > 0).any())) + 3


def project_pairs(
    rows: Dict[str, torch.Tensor],
    counts: List[int],
    cameras: torch.Tensor,
    meta: torch.Tensor,
    activate: Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]],
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

    def pack(camera: int, local: int, cams: torch.Tensor, *values: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        inputs = activate(dict(zip(rows, values)))
        viewmat, K = cams[camera, :16].reshape(1, 4, 4), cams[camera, 16:25].reshape(1, 3, 3)
        w, h, depth, antialiased = (int(v) for v in meta[camera, :4])
        radii, means2d, depths, conics, compensations = project(
            inputs["means"], inputs["quats"], inputs["scales"], viewmat, K, w, h, compensate=bool(antialiased)
        )
        visible = radii[0] > 0
        crop = _crop_of(meta[camera])
        if crop is not None:
            visible &= crop.within(inputs["means"].detach()).reshape(-1)
        (index,) = torch.nonzero(visible, as_tuple=True)
        opacities = inputs["opacities"] if compensations is None else inputs["opacities"] * compensations[0]
        colors = view_colors(inputs["means"], inputs["colors"], torch.inverse(viewmat[0]), sh_degree, visible)
        columns = [means2d[0], conics[0], opacities[:, None], colors]
        if width == 13:  # the render's depth channel (zeros for cameras that did not ask)
            columns.append(depths[0][:, None] if depth else torch.zeros_like(depths[0][:, None]))
        fixed = torch.stack([depths[0].detach(), radii[0].float()], 1)[index]  # sorting and tiles: no gradient
        ids = torch.full((len(index), 1), float(local), device=index.device)
        return torch.cat([torch.cat(columns, 1)[index], fixed, ids], 1), index

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
    # Still a function of the cameras when nothing is sent: their gradients' exchange runs everywhere.
    nothing = torch.zeros(0, dtype=torch.long, device=rows["means"].device)
    return cameras.new_zeros((0, width)) + 0 * cameras.sum(), nothing, send_counts


class ShardedLayout(ReplicatedLayout):
    """See the module docstring."""

    sharded = True

    keeps_ranks_for_viewer = True  # after training every rank keeps serving the viewer's renders

    def __init__(self) -> None:
        super().__init__()
        self._requests: List[Tuple[Callable[[], Any], Future, float]] = []
        self._requests_lock = threading.Lock()
        self._closed: Optional[str] = None  # why viewer renders can no longer be served
        self._most_received = (0, 1)  # (rows, model total then): the render buffers' largest share

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
        activate: Callable[[Dict[str, torch.Tensor]], Dict[str, torch.Tensor]],
        crop: Optional[OrientedBox] = None,
        **cameras: Any,
    ):
        """Render this rank's cameras (possibly none: it then only serves the others) from every
        rank's visible Gaussians; returns None when this rank has no camera. Each owner projects
        and colours its visible Gaussians for every camera of the render and sends the projected
        pairs; the camera's rank only rasterizes them. The render's `info["exchange"]` says which
        rows went where, for `stats_to_owners`. One rank takes the same path (the exchange is then
        the identity), so a 1-rank sharded run tests this code."""
        viewmats, Ks = cameras["viewmats"], cameras["Ks"]
        width, height = cameras["width"], cameras["height"]
        render_mode = cameras.get("render_mode", "RGB")
        device = rows["means"].device
        n_views = viewmats.shape[0]
        antialiased = cameras.get("rasterize_mode", "classic") == "antialiased"
        local = camera_rows(viewmats, Ks, device)
        mine = camera_meta(n_views, width, height, render_mode == "RGB+ED", antialiased, crop)
        counts = comm.all_gather_ints(n_views, device)
        every = _AllCameras.apply(local, counts)
        meta = torch.cat(comm.all_gather_rows(mine, counts))
        packed, order, send_counts = project_pairs(rows, counts, every, meta, activate, cameras.get("sh_degree"))
        recv_counts = comm.exchange_counts(send_counts, device)
        if sum(recv_counts) > self._most_received[0]:
            self._most_received = (sum(recv_counts), max(self.total, 1))
        received = _Exchange.apply(packed, send_counts, recv_counts)
        if n_views == 0:
            return None
        channels = received.shape[1] - 9
        means2d, conics, opacities, colors, depths, radii, ids = torch.split(received, [2, 3, 1, channels, 1, 1, 1], 1)
        means2d = means2d.contiguous()  # the tensor whose gradient densification reads
        render, alpha = rasterize_pairs(
            means2d, conics.contiguous(), opacities.reshape(-1), colors.contiguous(), depths.reshape(-1).detach(),
            radii.reshape(-1).detach().int(), ids.reshape(-1).detach().long(), n_views, width, height,
            render_mode=render_mode if channels == 4 else "RGB", absgrad=bool(cameras.get("absgrad")),
        )  # fmt: skip
        if channels == 4 and render_mode != "RGB+ED":
            render = render[..., :3]
        info = {
            "means2d": means2d,
            "radii": radii.reshape(-1).detach(),
            "width": width,
            "height": height,
            "n_cameras": n_views,
            "exchange": (order, send_counts, recv_counts),
        }
        return render, alpha, info

    def serve(self, rows: Dict[str, torch.Tensor], activate: Callable, sh_degree: Optional[int]) -> None:
        """Take part in a render for which this rank has no camera (another rank's eval or viewer);
        its rows must be made as the renderer's are (colours or coefficients: `sh_degree`)."""
        empty = {"viewmats": torch.zeros((0, 4, 4)), "Ks": torch.zeros((0, 3, 3)), "width": 0, "height": 0}
        with torch.no_grad():
            self.render(rows, activate, sh_degree=sh_degree, **empty)

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
        """The whole model's (duplicated, split, pruned) from this shard's; updates the total, and if
        max/min shard size > REBALANCE_RATIO, moves Gaussians (parameters, Adam moments, statistics,
        ids) from the largest shards to the smallest until every shard holds floor or ceil of the
        mean. The move costs one all-to-all of ~3x the moved Gaussians' parameters (plus a few
        floats each); shards' order does not matter to training."""
        device = params["means"].device
        counts = tuple(comm.all_reduce_ints(list(counts), device))
        self.total += counts[0] + counts[1] - counts[2]
        sizes = comm.all_gather_ints(len(params["means"]), device)
        if min(sizes) * REBALANCE_RATIO >= max(sizes) and min(sizes) > 0:
            return counts  # type: ignore[return-value]
        send_counts, recv_counts = rebalance_plan(sizes, comm.rank())
        n = sizes[comm.rank()]
        leaving = sum(send_counts)
        codec = RowCodec(params, optimizers, state)
        rows = codec.pack(params, optimizers, state, torch.arange(n - leaving, n, device=device))
        arrived = comm.all_to_all_rows(rows, send_counts, recv_counts)
        codec.replace(params, optimizers, state, torch.arange(n - leaving, device=rows.device), arrived)
        after = comm.all_gather_ints(len(params["means"]), device)
        if comm.is_main():
            CONSOLE.print(f"rebalanced Gaussian shards: {sizes} -> {after}")
        return counts  # type: ignore[return-value]

    def report(self, local: int) -> str:
        """The rank's shard, and the most Gaussians one of its renders received (its own included):
        beyond the shard, a rank's memory grows with what its cameras see, not with the model."""
        rows, total = self._most_received
        return (
            f", owns {local} of {self.total} Gaussians, rendered up to {rows} in one render"
            f" ({100 * rows / total:.0f}% of the model then)"
        )

    def verify_total(self, local: int) -> None:
        (total,) = comm.all_reduce_ints([local])
        if total != self.total:
            raise comm.ReplicaMismatch(f"the shards hold {total} Gaussians, every rank expects {self.total}")

    # -- checkpoints -----------------------------------------------------------------------------

    def full_state(self, pipeline: torch.nn.Module, optimizers: Any) -> Optional[Tuple[Dict, Dict, torch.Tensor]]:
        """Rows leave every GPU at most SAVE_CHUNK_BYTES at a time, and rank 0 writes each chunk
        straight into the CPU tensors of the saved model: no GPU ever holds a shard-sized buffer
        for a save (a model at capacity has no room for one), and rank 0's host holds the whole
        model once. The live optimizer state is only read: `state_dict()` hands out the moment
        tensors themselves, which must stay this shard's."""
        model = pipeline.model
        params = model.gauss_params
        groups = {name: optimizers.optimizers[name] for name in GAUSSIAN_NAMES}
        device = params["means"].device
        ids = {"ids": model.strategy_state["ids"].to(device)}  # CPU until a refine moves them
        codec = RowCodec(params, groups, ids)
        chunk_rows = max(1, SAVE_CHUNK_BYTES // (4 * max(codec.width, 1)))

        def make_rows(start: int, stop: int) -> torch.Tensor:
            return codec.pack(params, groups, ids, torch.arange(start, stop, device=device))

        whole = codec.empty(self.total) if comm.is_main() else None
        for start, chunk in comm.gather_rows_to_main(len(params["means"]), make_rows, chunk_rows):  # ranks > 0 send
            codec.unpack_into(whole, start, chunk)  # type: ignore[arg-type]
        if whole is None:
            return None
        state = {k: v for k, v in pipeline.state_dict().items() if not k.startswith("_model.gauss_params.")}
        state.update({f"_model.gauss_params.{name}": whole[("param", name)] for name in GAUSSIAN_NAMES})
        optimizer_states = {}
        for name, optimizer in optimizers.optimizers.items():
            saved = optimizer.state_dict()
            if name in GAUSSIAN_NAMES:
                moments = {
                    i: {k: (v if k == "step" else whole[("moment", f"{name}/{k}")]) for k, v in per_param.items()}
                    for i, per_param in saved["state"].items()
                }
                saved = {**saved, "state": moments}
            optimizer_states[name] = saved
        return state, optimizer_states, whole[("state", "ids")]

    def local_optimizer_states(self, saved: Dict[str, Dict]) -> Dict[str, Dict]:
        out = {}
        for name, value in saved.items():
            if name not in GAUSSIAN_NAMES:
                out[name] = value
                continue
            moments = value["state"].get(0, {})
            n = next((len(v) for k, v in moments.items() if k != "step"), 0)
            block = self.block(n)
            sliced = {k: (v if k == "step" else v[block]) for k, v in moments.items()}
            out[name] = {**value, "state": {0: sliced} if moments else {}}
        return out

    def named_replicated(self, model: torch.nn.Module, optimizers: Any) -> List[Tuple[str, torch.Tensor]]:
        """Only what is still replicated: camera optimizer, bilateral grids and their Adam states."""
        return _named_tensors(model, optimizers, skip=GAUSSIAN_NAMES)

    # -- the viewer --------------------------------------------------------------------------------

    def render_for_viewer(self, render: Callable[[], Any]) -> Any:
        """From rank 0's viewer thread: have the training thread render with every rank's Gaussians.

        The viewer holds the trainer's lock while it renders; it is let go while waiting, so the
        training thread can reach its next rank agreement (where every rank serves the request).
        Once the ranks have stopped serving (`close_viewer`), a render fails at once instead of
        waiting forever.
        """
        if not comm.is_distributed():
            return render()
        future: Future = Future()
        with self._requests_lock:
            if self._closed is not None:
                raise RuntimeError(self._closed)
            self._requests.append((render, future, time.perf_counter()))
        lock = self.train_lock
        held = lock is not None and lock.locked()
        if held:
            lock.release()
        try:
            return future.result()
        finally:
            if held:
                lock.acquire()

    def pending_renders(self) -> int:
        with self._requests_lock:
            return len(self._requests)

    def serve_viewer(self, count: int, serve_empty: Callable[[], None]) -> float:
        """Every rank, on the training thread: serve rank 0's `count` oldest viewer renders. Returns,
        on rank 0, the longest a served render waited from its request to its result (ms)."""
        longest = 0.0
        for _ in range(count):
            if not comm.is_main():
                serve_empty()
                continue
            with self._requests_lock:
                render, future, requested = self._requests.pop(0)
            try:
                future.set_result(render())
            except Exception as err:  # noqa: BLE001 - the viewer thread re-raises it
                future.set_exception(err)
            longest = max(longest, 1000 * (time.perf_counter() - requested))
        return longest

    def close_viewer(self, why: str) -> None:
        """The ranks serve no more renders: fail the waiting ones and refuse new ones with `why`."""
        with self._requests_lock:
            self._closed = why
            waiting, self._requests = self._requests, []
        for _, future, _ in waiting:
            future.set_exception(RuntimeError(why))


def rebalance_plan(sizes: List[int], rank: int) -> Tuple[List[int], List[int]]:
    """(send_counts, recv_counts) of `rank` that bring every shard to floor/ceil of the mean.

    Surplus ranks give their last Gaussians, in rank order, to deficit ranks in rank order; every
    rank computes the same plan from the same sizes."""
    world, total = len(sizes), sum(sizes)
    target = [total // world + (1 if r < total % world else 0) for r in range(world)]
    surplus = [[r, sizes[r] - target[r]] for r in range(world) if sizes[r] > target[r]]
    deficit = [[r, target[r] - sizes[r]] for r in range(world) if sizes[r] < target[r]]
    moves = []
    while surplus and deficit:
        amount = min(surplus[0][1], deficit[0][1])
        moves.append((surplus[0][0], deficit[0][0], amount))
        surplus[0][1] -= amount
        deficit[0][1] -= amount
        if surplus[0][1] == 0:
            surplus.pop(0)
        if deficit[0][1] == 0:
            deficit.pop(0)
    send = [sum(a for s, d, a in moves if s == rank and d == r) for r in range(world)]
    recv = [sum(a for s, d, a in moves if d == rank and s == r) for r in range(world)]
    return send, recv
