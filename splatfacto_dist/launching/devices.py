"""Which GPU a rank uses, and how many GPUs a job needs, when several ranks may share one.

`--ranks-per-gpu K` lets K ranks share each GPU (over gloo; see `DistTrainerConfig.ranks_per_gpu`).
Standard library only: the raw command-line checks use it before torch is imported.
"""

from __future__ import annotations

from typing import Any


def ranks_per_gpu(config: Any) -> int:
    """The config's ranks per GPU; 1 for configs without the setting (another method's)."""
    return max(1, int(getattr(config, "ranks_per_gpu", 1)))


def gpu_of(local_rank: int, config: Any) -> int:
    """The CUDA device index of a rank on its machine."""
    return local_rank // ranks_per_gpu(config)


def gpus_needed(ranks: int, per_gpu: int) -> int:
    """GPUs that `ranks` ranks on one machine need at `per_gpu` ranks each."""
    return -(-ranks // max(1, per_gpu))
