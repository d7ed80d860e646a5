"""A rank's CUDA allocator: a per-process memory cap from the environment, so a large GPU can
stand in for a smaller one, and segments that grow in place.

The capacity benchmark asks what fits on a 24 GB card while running on 80-140 GB ones: every rank
caps its CUDA caching allocator at SPLATFACTO_DIST_MEMORY_CAP_GIB, and an allocation past the cap
raises torch's ordinary out-of-memory error. The cap covers tensors only (not the CUDA context,
about 0.5 GB more on a real card). Each rank calls `apply_memory_cap()` once it has selected its
device and before it allocates anything.
"""

from __future__ import annotations

import os
from typing import Optional

ENV = "SPLATFACTO_DIST_MEMORY_CAP_GIB"
ALLOCATOR_ENV = "PYTORCH_CUDA_ALLOC_CONF"
EXPANDABLE = "expandable_segments:True"  # the setting `use_expandable_segments` makes


def use_expandable_segments() -> bool:
    """Let the caching allocator grow its segments in place, unless the user configured it
    (`PYTORCH_CUDA_ALLOC_CONF` set: theirs wins). A sharded step's buffers change size with every
    camera (received pairs, tile intersections), and fixed segments fragment under that: measured
    at 4 GiB per rank, 2 ranks of 6.3 M Gaussians and 4 of 12.5 M ran out of memory in backward with
    ~0.5 GiB reserved but unallocated, and trained to the end with expandable segments. Returns
    whether it was set (False without CUDA)."""
    if ALLOCATOR_ENV in os.environ:
        return False
    import torch

    if not torch.cuda.is_available():
        return False
    torch.cuda.memory._set_allocator_settings(EXPANDABLE)
    return True


def apply_memory_cap() -> Optional[float]:
    """Cap the current CUDA device at the environment's GiB; returns the fraction set, or None when
    no cap is asked for or there is no CUDA. Prints one line so a log shows the cap was in force."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    cap = float(value)
    if cap <= 0:
        raise ValueError(f"{ENV}={value}: the cap must be a positive number of GiB")
    device = torch.cuda.current_device()
    total = torch.cuda.get_device_properties(device).total_memory
    fraction = min(1.0, cap * 2**30 / total)
    torch.cuda.set_per_process_memory_fraction(fraction, device)
    print(f"GPU {device}: memory capped at {cap:g} GiB ({fraction:.3f} of {total / 2**30:.1f} GiB, {ENV})", flush=True)
    return fraction


def gpu_budget(device: object) -> Optional[tuple]:
    """(bytes, what they are) a rank on `device` may use: the memory cap when set, else the GPU's
    memory; None off CUDA."""
    import torch

    if torch.device(device).type != "cuda" or not torch.cuda.is_available():  # type: ignore[arg-type]
        return None
    cap = os.environ.get(ENV, "").strip()
    if cap:
        return int(float(cap) * 2**30), f"the {cap} GiB cap ({ENV})"
    index = torch.device(device).index  # type: ignore[arg-type]
    total = torch.cuda.get_device_properties(torch.cuda.current_device() if index is None else index).total_memory
    return total, "this GPU's memory"


def host_budget() -> Optional[tuple]:
    """(bytes, what they are) of host memory one rank may count on: the memory available to new
    allocations (Linux's MemAvailable) over the ranks sharing the machine where the launcher says
    (torchrun's LOCAL_WORLD_SIZE; else 1, so that a refusal is never wrong); None where the system
    does not say."""
    try:
        with open("/proc/meminfo") as info:
            available = next((int(line.split()[1]) * 1024 for line in info if line.startswith("MemAvailable:")), None)
    except OSError:
        return None
    if available is None:
        return None
    ranks = max(int(os.environ.get("LOCAL_WORLD_SIZE", "1")), 1)
    return available // ranks, f"this machine's available memory / {ranks} rank(s)"
