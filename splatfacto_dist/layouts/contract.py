"""The Gaussian layout: what one training step asks of the place where the Gaussians live.

A step renders its cameras (`render`), its gradients and densification statistics meet where the
Gaussians are owned (`split_groups`, `stats_to_owners`, `reduce_stats`), a refine keeps the count of
the whole model (`after_refine`), and a save sees the whole model on rank 0 (`gather`). Everything a
layout is given arrives as an argument and everything it gives back is a return value: a layout
never reads the model, the pipeline or the trainer. Two implementations, side by side:
`replicated.ReplicatedLayout` (every rank holds every Gaussian) and `sharded.ShardedLayout` (each
rank owns a disjoint part).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Protocol, Tuple

import torch
from nerfstudio.data.scene_box import OrientedBox

GAUSSIAN_NAMES = ("means", "scales", "quats", "features_dc", "features_rest", "opacities")
"""splatfacto's per-Gaussian parameters; each is also the name of its own optimizer group."""

RefineCounts = Tuple[int, int, int]
"""(duplicated, split, pruned) Gaussians of one refine."""

Render = Tuple[torch.Tensor, torch.Tensor, Dict[str, Any]]
"""([C, H, W, channels] colours (+ depth), [C, H, W, 1] alpha, info for densification)."""


@dataclass
class WholeGaussians:
    """Every Gaussian of the model, in splatfacto's row order: what a checkpoint holds of them."""

    params: Dict[str, torch.Tensor]
    """name -> [total, ...] parameter values."""
    moments: Dict[str, Dict[str, torch.Tensor]]
    """group -> Adam's per-Gaussian moments ({"exp_avg": ..., "exp_avg_sq": ...}; empty before a step)."""
    ids: torch.Tensor
    """[total] int64 ids, which key every random draw of a Gaussian (densify/ops.py)."""
    statistics: Dict[str, torch.Tensor]
    """Densification statistics gathered since the last refine (grad2d, count, radii: those kept), of
    every rank's cameras: a run resumed between two refines refines as the uninterrupted one."""


class GaussianLayout(Protocol):
    """The calls a training step makes of where the Gaussians live (see the module docstring)."""

    sharded: bool
    """True where every render needs every rank (each holds part of the model): eval and viewer
    renders asked by one rank are then served by all on their training threads."""
    split_groups: Tuple[str, ...]
    """Optimizer groups whose rows are divided among the ranks. Their gradients meet in the
    render's exchange and their norms are sums over ranks; every other group is replicated, its
    gradients all-reduced and its values checked equal across ranks."""
    total: int
    """Gaussians in the whole model, the same on every rank."""

    def hold(self, n: int) -> slice:
        """A whole model of `n` Gaussians arrives (the initial draw, a checkpoint): the rows of it this
        rank keeps; `total` becomes `n`."""
        ...

    def render(
        self,
        rows: Dict[str, torch.Tensor],
        crop: Optional[OrientedBox] = None,
        statistics: Optional[Dict[str, torch.Tensor]] = None,
        loss_by_range: bool = False,
        **cameras: Any,
    ) -> Optional[Render]:
        """This rank's cameras (`rasterize`'s arguments) rendered from the whole model, whose rows
        here are `rows` (parameters, SH cut to the active degree); None on a rank without cameras
        that only took part. `statistics`: the densification buffers (grad2d, count, radii) that
        read this render, None when nothing does; a layout adds to them in backward or leaves the
        render's per-pair statistics in its info for `stats_to_owners`. `loss_by_range`: a training
        render that a layout rendering in pixel ranges may leave in bands where it was rendered
        (renders and alphas then flat rows of every camera, `info["ranges_job"].by_range`), for each
        rank to take its share of the loss (`layouts.sharded.range_loss`); others ignore it."""
        ...

    def stats_to_owners(
        self, rows: torch.Tensor, maxima: Optional[torch.Tensor], n: int, info: Dict[str, Any]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Per-pair statistics of the render that made `info` ([M, k] sums, [M] maxima) as this
        rank's `n` Gaussians' ([n, k], [n])."""
        ...

    def reduce_stats(self, state: Dict[str, Any]) -> None:
        """Before a refine: make the statistics in `state` cover every rank's cameras."""
        ...

    def after_refine(
        self, params: Mapping[str, torch.nn.Parameter], optimizers: Mapping[str, Any], state: Dict[str, Any],
        counts: RefineCounts,
    ) -> RefineCounts:  # fmt: skip
        """The whole model's counts from this rank's; keeps `total` (and a sharded layout evens out
        its shards, moving rows with their Adam state)."""
        ...

    def gather(
        self, params: Mapping[str, torch.Tensor], optimizers: Mapping[str, torch.optim.Optimizer], ids: torch.Tensor,
        statistics: Mapping[str, torch.Tensor],
    ) -> Optional[WholeGaussians]:  # fmt: skip
        """The whole model on rank 0's CPU (None elsewhere), from every rank's rows and statistics;
        every rank calls it."""
        ...

    def record(self, local: int) -> Dict[str, Any]:
        """What a rank holding `local` Gaussians reports of this layout at the end of a run."""
        ...

    def verify_total(self, local: int) -> None:
        """Raise `comm.ReplicaMismatch` unless the ranks' `local` counts make the expected `total`."""
        ...


def named_tensors(
    named_parameters: List[Tuple[str, torch.Tensor]], optimizers: Mapping[str, torch.optim.Optimizer],
    skip: Tuple[str, ...],
) -> List[Tuple[str, torch.Tensor]]:  # fmt: skip
    """(name, tensor) of the parameters and their optimizers' states, but the Gaussian groups in `skip`:
    what must be bitwise equal on every rank once `skip` is a layout's `split_groups`."""
    named = [(k, v) for k, v in named_parameters if not (k.startswith("gauss_params.") and k.split(".")[1] in skip)]
    for group, optimizer in optimizers.items():
        if group in skip:
            continue
        for p in (p for g in optimizer.param_groups for p in g["params"]):
            for key, value in sorted(optimizer.state[p].items()):
                if isinstance(value, torch.Tensor):
                    named.append((f"optimizer[{group}].{key}", value))
    return named
