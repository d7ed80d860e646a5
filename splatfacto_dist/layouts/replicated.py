"""Where the Gaussians live: the one interface the trainer, model, strategy and checkpoints ask.

`ReplicatedLayout` (the default): every rank holds every Gaussian and its Adam state; gradients
and densification statistics are all-reduced. `ShardedLayout` (sharded/): each rank owns a
disjoint part; the owners send the cameras' ranks their Gaussians projected into those cameras
and gradients return to the owners. Everything that differs between the two is a method here, so the training step has one
path for both.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox

from splatfacto_dist import comm
from splatfacto_dist.render.raster import activate, empty_render, rasterize

GAUSSIAN_NAMES = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")


class ReplicatedLayout:
    """Every rank holds the whole model; see the module docstring."""

    sharded = False
    keeps_ranks_for_viewer = False  # after training rank 0 holds every Gaussian and serves the viewer alone

    def __init__(self) -> None:
        self.total = 0  # Gaussians in the whole model, on every rank
        self.training_thread = threading.current_thread()
        self.train_lock: Optional[Any] = None  # the trainer's; the viewer holds it while rendering

    def take_initial(self, n: int) -> slice:
        """The rows of the `n` initial Gaussians (drawn identically on every rank) that this rank keeps."""
        self.total = n
        return self.block(n)

    def broadcast_initial(self, model: torch.nn.Module) -> None:
        """Start every rank from rank 0's exact state."""
        comm.broadcast_module_state(model)

    def render(
        self,
        rows: Dict[str, torch.Tensor],
        crop: Optional[OrientedBox] = None,
        statistics: bool = True,
        **cameras: Any,
    ) -> Tuple:
        """`rasterize(**activate(rows), **cameras)` of the rows inside `crop` (the viewer's crop
        box): every Gaussian (parameter row) is here. `statistics` (whether densification reads
        this render's) changes nothing here: gsplat's strategy takes them from `info` when it does."""
        if crop is not None:
            inside = crop.within(rows["means"]).reshape(-1)
            if not bool(inside.any()):
                return empty_render(rows["means"], len(cameras["viewmats"]), cameras["width"], cameras["height"],
                                    cameras.get("render_mode", "RGB"))  # fmt: skip
            rows = {k: v[inside] for k, v in rows.items()}
        return rasterize(**activate(rows), **cameras)

    def average_gradients(self, groups: Dict[str, List[torch.nn.Parameter]]) -> None:
        """One flat all-reduce of the gradients of every optimizer group's parameters."""
        comm.average_gradients([p for params in groups.values() for p in params])

    def stats_to_owners(self, rows: torch.Tensor, reduce_max: Optional[torch.Tensor], n: int, info: Dict[str, Any]):
        """Per-Gaussian statistics of the render that made `info`, as the owners' `n` rows (here: the
        same rows)."""
        return rows, reduce_max

    def reduce_stats(self, state: Dict[str, Any]) -> None:
        """Before a refine: make every rank's statistics those of all ranks' cameras."""
        comm.reduce_densification_stats(state)

    def after_refine(self, params, optimizers, state, counts: Tuple[int, int, int]) -> Tuple[int, int, int]:
        """The whole model's (duplicated, split, pruned) from this rank's; keeps the total."""
        self.total = len(params["means"])
        return counts

    def squared_norms(self, grads: Dict[str, List[torch.Tensor]]) -> Dict[str, torch.Tensor]:
        """Each group's squared L2 gradient norm over the whole model (for clipping, the scaler's
        inf/NaN check and gradient logs); here every rank holds every gradient, already averaged."""
        return {name: _squared_norm(values) for name, values in grads.items()}

    def full_state(self, pipeline: torch.nn.Module, optimizers: Any) -> Optional[Tuple[Dict, Dict, torch.Tensor]]:
        """On rank 0, the pipeline's and optimizers' state dicts with every Gaussian, and the
        Gaussians' ids; None elsewhere. Every rank calls it."""
        if not comm.is_main():
            return None
        ids = pipeline.model.strategy_state["ids"].cpu()
        return pipeline.state_dict(), {k: v.state_dict() for k, v in optimizers.optimizers.items()}, ids

    def load_full_state(
        self, pipeline: Any, state: Dict[str, torch.Tensor], step: int, ids: Optional[torch.Tensor]
    ) -> None:
        """Load a checkpoint holding the whole model (either layout wrote it), and its Gaussians' ids
        (numbered in its order when it has none: a checkpoint of stock splatfacto)."""
        n = len(state["_model.gauss_params.means"])
        block = self.block(n)
        gaussians = {k: (v[block] if k.startswith("_model.gauss_params.") else v) for k, v in state.items()}
        pipeline.load_pipeline(gaussians, step)
        ids = torch.arange(n, dtype=torch.int64) if ids is None else ids
        pipeline.model.strategy_state["ids"] = ids[block].to(pipeline.model.device)
        self.total = n

    def block(self, n: int) -> slice:
        """The rows of a whole model of `n` Gaussians that this rank holds."""
        return slice(0, n)

    def local_optimizer_states(self, saved: Dict[str, Dict]) -> Dict[str, Dict]:
        """The saved optimizer states of this rank's parameters."""
        return saved

    def named_replicated(self, model: torch.nn.Module, optimizers: Any) -> List[Tuple[str, torch.Tensor]]:
        """Every tensor that must be bitwise equal on all ranks: here, all parameters and Adam states."""
        return _named_tensors(model, optimizers, skip=())

    def record(self, local: int) -> Dict[str, Any]:
        """What the rank's end-of-run record says of this layout: every rank holds all."""
        return {"gaussians": local}

    def report(self, local: int) -> str:
        """What the rank's end-of-run line adds about this layout (nothing: every rank holds all)."""
        return ""

    def verify_total(self, local: int) -> None:
        """Raise `comm.ReplicaMismatch` unless the Gaussians add up to the count every rank expects."""
        if local != self.total:
            raise comm.ReplicaMismatch(f"rank {comm.rank()} holds {local} Gaussians, expected {self.total}")

    def serve(self, rows: Dict[str, torch.Tensor], sh_degree: Optional[int]) -> None:
        """Take part in a render that only another rank asked for: nothing to do when replicated."""

    def render_for_viewer(self, render: Callable[[], Any]) -> Any:
        """A render asked for by the viewer thread: rank 0 holds every Gaussian, so render here."""
        return render()

    def pending_renders(self) -> int:
        return 0

    def serve_viewer(self, count: int, serve_empty: Callable[[], None]) -> float:
        """Nothing is ever pending here: the viewer renders rank 0's whole model itself."""
        return 0.0

    def close_viewer(self, why: str) -> None:
        """Nothing waits on the other ranks here: the viewer renders rank 0's whole model itself."""


def _squared_norm(values: List[torch.Tensor]) -> torch.Tensor:
    """Sum of squares of every element of `values` (0 for none), as one float32 scalar."""
    total = torch.zeros((), device=values[0].device if values else "cpu")
    for value in values:
        total = total + value.detach().float().pow(2).sum()
    return total


def _named_tensors(model: torch.nn.Module, optimizers: Any, skip: Tuple[str, ...]) -> List[Tuple[str, torch.Tensor]]:
    """(name, tensor) of the model's parameters and their optimizers' states, but the groups in `skip`."""
    named: List[Tuple[str, torch.Tensor]] = [
        (k, v) for k, v in model.named_parameters() if k.split(".")[0] != "gauss_params" or k.split(".")[1] not in skip
    ]
    for group, optimizer in optimizers.optimizers.items():
        if group in skip:
            continue
        for p in (p for g in optimizer.param_groups for p in g["params"]):
            for key, value in sorted(optimizer.state[p].items()):
                if isinstance(value, torch.Tensor):
                    named.append((f"optimizer[{group}].{key}", value))
    return named
