"""Checkpoints that stock ns-export / ns-eval / ns-render load with torch's default
`weights_only=True`, written atomically so a crash never leaves a truncated newest file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch


def to_builtin(obj: Any) -> Any:
    """Replace numpy scalars (nerfstudio's LR schedules produce them) with Python numbers."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_builtin(v) for v in obj)
    return obj


def save_atomic(state: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename over it."""
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(to_builtin(state), tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
