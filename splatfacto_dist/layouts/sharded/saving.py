"""Checkpoints of a sharded model: every shard gathered to rank 0's CPU in splatfacto's layout, in
bounded chunks; and a loaded checkpoint's moments cut back to this rank's shard."""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Tuple

import torch

from splatfacto_dist import comm
from splatfacto_dist.densify.ops import RowCodec
from splatfacto_dist.layouts.replicated import GAUSSIAN_NAMES

SAVE_CHUNK_BYTES = 64 << 20
"""The most bytes of packed Gaussians (parameters, Adam moments, ids) a save puts in one GPU buffer:
a model at capacity has no room for its shard twice, and 64 MiB chunks keep the save's transfers
large enough to run at the link's speed."""


def gather_full_state(
    pipeline: torch.nn.Module, optimizers: Any, total: int
) -> Optional[Tuple[Dict, Dict, torch.Tensor]]:
    """On rank 0, (pipeline state, optimizer states, ids) of the whole model of `total` Gaussians in
    splatfacto's layout; None on the other ranks, which only send.

    Rows leave every GPU at most SAVE_CHUNK_BYTES at a time, and rank 0 writes each chunk straight
    into the CPU tensors of the saved model: no GPU ever holds a shard-sized buffer for a save (a
    model at capacity has no room for one), and rank 0's host holds the whole model once. The live
    optimizer state is only read: `state_dict()` hands out the moment tensors themselves, which
    must stay this shard's."""
    model = pipeline.model
    params = model.gauss_params
    groups = {name: optimizers.optimizers[name] for name in GAUSSIAN_NAMES}
    device = params["means"].device
    ids = {"ids": model.strategy_state["ids"].to(device)}  # CPU until a refine moves them
    codec = RowCodec(params, groups, ids)
    chunk_rows = max(1, SAVE_CHUNK_BYTES // (4 * max(codec.width, 1)))

    def make_rows(start: int, stop: int) -> torch.Tensor:
        return codec.pack(params, groups, ids, torch.arange(start, stop, device=device))

    whole = codec.empty(total) if comm.is_main() else None
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


def shard_optimizer_states(saved: Dict[str, Dict], block: Callable[[int], slice]) -> Dict[str, Dict]:
    """A whole model's saved optimizer states with each Gaussian group's moments cut to this rank's
    `block` of the group's rows."""
    out = {}
    for name, value in saved.items():
        if name not in GAUSSIAN_NAMES:
            out[name] = value
            continue
        moments = value["state"].get(0, {})
        n = next((len(v) for k, v in moments.items() if k != "step"), 0)
        sliced = {k: (v if k == "step" else v[block(n)]) for k, v in moments.items()}
        out[name] = {**value, "state": {0: sliced} if moments else {}}
    return out
