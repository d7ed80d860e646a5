"""Every collective splatfacto-dist issues, in one place.

Each function is a no-op (or the identity) unless a process group with more than one rank is
initialized, so the same training code runs single-process, under ns-export/ns-eval/ns-render
and in the viewer without a process group. None of these may be called from the viewer's render
thread: a collective that only rank 0 enters never completes.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


def is_distributed() -> bool:
    """True when there is a process group with more than one rank to talk to."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def _comm_device(like: torch.device) -> torch.device:
    """NCCL only moves CUDA tensors; gloo only moves CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def broadcast_tensors(tensors: Sequence[torch.Tensor], src: int = 0) -> None:
    """Overwrite `tensors` in place with rank `src`'s values, in one flat collective."""
    tensors = [t for t in tensors if t.numel() > 0]
    if not is_distributed() or not tensors:
        return
    device = _comm_device(tensors[0].device)
    by_dtype: Dict[torch.dtype, List[torch.Tensor]] = {}
    for t in tensors:
        by_dtype.setdefault(t.dtype, []).append(t)
    for group in by_dtype.values():
        flat = _flatten_dense_tensors([t.detach() for t in group]).to(device)
        dist.broadcast(flat, src)
        for t, synced in zip(group, _unflatten_dense_tensors(flat, group)):
            t.data.copy_(synced.to(t.device))


def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Average `.grad` of `params` over all ranks with a single flat all-reduce.

    Parameters without a gradient on this rank contribute zeros, so every rank packs the same
    layout. A non-finite value on any rank becomes non-finite on every rank, which makes a
    GradScaler skip that step on every rank together.
    """
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    grads = []
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    flat = _flatten_dense_tensors(grads)
    device = _comm_device(flat.device)
    flat = flat.to(device)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size())
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def reduce_densification_stats(state: Dict[str, Any]) -> None:
    """Turn per-rank densification statistics into the statistics of all ranks' cameras.

    `grad2d` and `count` are sums over views, so they add; `radii` is a running maximum.
    """
    if not is_distributed():
        return
    grad2d, count = state["grad2d"], state["count"]
    summed = torch.cat([grad2d, count])
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    grad2d.copy_(summed[: grad2d.numel()])
    count.copy_(summed[grad2d.numel() :])
    if state.get("radii") is not None:
        dist.all_reduce(state["radii"], op=dist.ReduceOp.MAX)


def all_gather_objects(obj: Any) -> List[Any]:
    """Every rank's `obj`, in rank order (small Python objects only: eval metrics)."""
    if not is_distributed():
        return [obj]
    out: List[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if is_distributed():
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def _bit_checksum(t: torch.Tensor) -> torch.Tensor:
    """An exact, position-sensitive checksum of a tensor's bits (int64, wraps on overflow)."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype in (torch.float32, torch.int32):
        bits = flat.view(torch.int32).to(torch.int64)
    elif flat.dtype in (torch.float64, torch.int64):
        bits = flat.view(torch.int64)
    else:
        bits = flat.to(torch.float64).view(torch.int64)
    weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 65521 + 1
    return torch.stack([(bits * weights).sum(), torch.tensor(bits.numel(), device=bits.device)])


class ReplicaMismatch(RuntimeError):
    """Ranks hold different model or optimizer state: training would silently diverge."""


def verify_replicas(named_tensors: List[Tuple[str, torch.Tensor]]) -> None:
    """Raise `ReplicaMismatch` naming the first tensor whose bits differ between ranks."""
    if not is_distributed() or not named_tensors:
        return
    device = _comm_device(named_tensors[0][1].device)
    local = torch.stack([_bit_checksum(t).to(device) for _, t in named_tensors])
    gathered = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(gathered, local)
    for r, other in enumerate(gathered):
        differs = (other != gathered[0]).any(dim=1)
        if bool(differs.any()):
            i = int(torch.nonzero(differs)[0, 0])
            raise ReplicaMismatch(f"rank {r} differs from rank 0 in '{named_tensors[i][0]}'")


def _to_comm(t: torch.Tensor) -> torch.Tensor:
    return t.to(_comm_device(t.device)).contiguous()


def all_gather_ints(value: int, device: torch.device = torch.device("cpu")) -> List[int]:
    """Every rank's `value`, in rank order."""
    return [values[0] for values in all_gather_int_lists([value], device)]


def all_gather_int_lists(values: List[int], device: torch.device = torch.device("cpu")) -> List[List[int]]:
    """Every rank's `values` (of one length on every rank), in rank order, on the host."""
    if not is_distributed():
        return [list(values)]
    local = torch.tensor(values, dtype=torch.int64, device=_comm_device(device)).reshape(-1)
    out = [torch.empty_like(local) for _ in range(world_size())]
    dist.all_gather(out, local)
    return [[int(v) for v in t.tolist()] for t in out]


def all_reduce_ints(values: List[int], device: torch.device = torch.device("cpu")) -> List[int]:
    """Element-wise sums over ranks of small integer vectors (refine counts)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.int64, device=_comm_device(device))
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return [int(v) for v in t.tolist()]


def all_reduce_counts(counts: torch.Tensor) -> List[int]:
    """The element-wise sums over ranks of an integer vector (the projected pairs' cost per tile), on the host."""
    if is_distributed():
        counts = _to_comm(counts.to(torch.int64))
        dist.all_reduce(counts, op=dist.ReduceOp.SUM)
    return [int(v) for v in counts.tolist()]


def all_gather_rows(rows: torch.Tensor, counts: Optional[List[int]] = None) -> List[torch.Tensor]:
    """Every rank's [n_r, D] `rows` (n_r may differ; `counts`, if known), in rank order, on `rows`' device."""
    if not is_distributed():
        return [rows]
    counts = counts or all_gather_ints(rows.shape[0], rows.device)
    padded = torch.zeros((max(counts), *rows.shape[1:]), dtype=rows.dtype, device=_comm_device(rows.device))
    padded[: rows.shape[0]] = rows.to(padded.device)
    out = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(out, padded)
    return [t[:n].to(rows.device) for t, n in zip(out, counts)]


def exchange_counts(send_counts: List[int], device: torch.device = torch.device("cpu")) -> List[int]:
    """How many rows each rank will send here, given how many this rank sends to each."""
    if not is_distributed():
        return list(send_counts)
    send = torch.tensor(send_counts, dtype=torch.int64, device=_comm_device(device))
    recv = torch.empty_like(send)
    dist.all_to_all_single(recv, send)
    return [int(v) for v in recv.tolist()]


def all_to_all_rows(send: torch.Tensor, send_counts: List[int], recv_counts: List[int]) -> torch.Tensor:
    """Send consecutive blocks of `send`'s rows (`send_counts[r]` to rank r); receive the blocks
    addressed here, in rank order (gloo has only this uneven single-tensor form, NCCL both)."""
    if not is_distributed():
        return send
    source = _to_comm(send)
    recv = torch.empty((sum(recv_counts), *send.shape[1:]), dtype=send.dtype, device=source.device)
    dist.all_to_all_single(recv, source, output_split_sizes=recv_counts, input_split_sizes=send_counts)
    return recv.to(send.device)


def gather_rows_to_main(
    n: int, make_rows: Callable[[int, int], torch.Tensor], chunk_rows: int
) -> Iterator[Tuple[int, torch.Tensor]]:
    """Every rank's `n` rows, made by `make_rows(start, stop)` at most `chunk_rows` at a time, in rank
    order: yields (position in the whole, CPU chunk) on rank 0 and nothing elsewhere.

    A checkpoint of a sharded model must not need a shard-sized buffer on any GPU: each rank makes
    and sends one bounded chunk at a time, and rank 0 receives into one chunk-sized buffer and
    hands each chunk on before the next arrives. Every rank must use the same `chunk_rows`.
    """
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    counts = all_gather_ints(n)
    if not is_main():
        for start in range(0, n, chunk_rows):
            chunk = _to_comm(make_rows(start, min(n, start + chunk_rows)).detach())
            dist.send(chunk, dst=0)
            if chunk.is_cuda:  # NCCL's send returns before the chunk left: one chunk in flight, not the shard
                torch.cuda.current_stream().synchronize()
        return
    offset = 0
    for src, count in enumerate(counts):
        buffer = None
        for start in range(0, count, chunk_rows):
            stop = min(count, start + chunk_rows)
            if src == 0:
                chunk = make_rows(start, stop).detach()
            else:
                if buffer is None:
                    first = make_rows(0, 0)  # the row width and type, without data
                    buffer = torch.empty(
                        (min(chunk_rows, count), *first.shape[1:]), dtype=first.dtype, device=_comm_device(first.device)
                    )
                chunk = buffer[: stop - start]
                dist.recv(chunk, src=src)
            yield offset + start, chunk.cpu()
        offset += count


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """The element-wise sum over ranks of a small float vector (squared gradient norms of shards)."""
    if not is_distributed():
        return values
    t = _to_comm(values.detach().clone())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.to(values.device)
