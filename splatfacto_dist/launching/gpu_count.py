"""How many CUDA devices this machine shows, without importing torch or starting CUDA.

Asking more GPUs than there are is the commonest impossible launch; `splatfacto-dist-train`
refuses it from the raw command line, before seconds of imports and before any rank is spawned.
Standard library only. When unsure (no driver answers, MIG instances, device UUIDs in
CUDA_VISIBLE_DEVICES), it says None and the check after parsing (torch's own count) decides.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Mapping, Optional

PROC_GPUS = "/proc/driver/nvidia/gpus"


def count_visible(physical: int, cuda_visible_devices: Optional[str]) -> Optional[int]:
    """The devices CUDA shows out of `physical`: CUDA_VISIBLE_DEVICES's indices up to the first
    invalid one (CUDA ignores the rest); None for entries this cannot judge (UUIDs, MIG)."""
    if cuda_visible_devices is None:
        return physical
    count = 0
    for token in cuda_visible_devices.split(","):
        token = token.strip()
        if not token.lstrip("-").isdigit():
            return None if token else count
        if not 0 <= int(token) < physical:
            break
        count += 1
    return count


def physical_gpus() -> Optional[int]:
    """NVIDIA GPUs of this machine per the driver: `nvidia-smi -L` (it lists what a container was
    given), else the driver's /proc entries; None when neither answers or a GPU is split into MIG
    instances (CUDA then counts instances, not GPUs)."""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            return None
        lines = listed.stdout.splitlines()
        if listed.returncode != 0 or any("MIG" in line for line in lines):
            return None
        return sum(line.startswith("GPU ") for line in lines)
    try:
        return len(os.listdir(PROC_GPUS))
    except OSError:
        return None


def visible_gpus(environ: Mapping[str, str]) -> Optional[int]:
    """CUDA devices a process started with `environ` would see, or None when unsure."""
    physical = physical_gpus()
    return None if physical is None else count_visible(physical, environ.get("CUDA_VISIBLE_DEVICES"))
