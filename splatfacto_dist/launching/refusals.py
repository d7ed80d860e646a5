"""The one-line refusals that are made twice: from the raw command line (`cli`, before any
import of torch) and from the parsed config (`preflight`, for what the raw line cannot show, such
as a --load-config). One wording for both. Standard library only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from splatfacto_dist.launching.devices import gpus_needed


def too_many_gpus(requested: int, visible: int, per_gpu: int = 1) -> Optional[str]:
    if gpus_needed(requested, per_gpu) <= visible:
        return None
    if per_gpu > 1:
        return (
            f"--machine.num-devices {requested} at --ranks-per-gpu {per_gpu} needs {gpus_needed(requested, per_gpu)}"
            f" GPUs but only {visible} GPU(s) are visible on this machine"
        )
    return (
        f"--machine.num-devices {requested} but only {visible} GPU(s) are visible on this machine"
        " (for tests and memory measurements, --ranks-per-gpu K lets K ranks share one)"
    )


def missing_data(path: Optional[Path]) -> Optional[str]:
    if path is not None and path.exists():
        return None
    return f"data path {path} does not exist (pass --data DIR or the dataparser's --data)"
