"""Checks that refuse an impossible run in one `error:` line, before any process or GPU work starts.

Two moments: while the command line is parsed (`refuse_at_parse`, from the trainer config's
`__post_init__`, which nerfstudio's own launcher reaches before it spawns anything), and in our
launcher once the job's shape is known (`check_job`).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist.data.datamanager import CameraSchedule, ConfigError
from splatfacto_dist.launching import refusals
from splatfacto_dist.launching.devices import ranks_per_gpu
from splatfacto_dist.launching.options import refusal


class LaunchError(SystemExit):
    """A configuration that cannot run; carries the one line to show the user."""

    def __init__(self, message: str) -> None:
        super().__init__(2)
        self.message = message


def too_many_gpus(requested: int, per_gpu: int = 1) -> Optional[str]:
    """The one-line refusal of more CUDA devices per machine than this machine shows, or None."""
    return refusals.too_many_gpus(requested, torch.cuda.device_count(), per_gpu)


def shared_gpu_refusal(config: Any) -> Optional[str]:
    """--ranks-per-gpu: a positive count, for CUDA ranks our launcher starts."""
    per_gpu = getattr(config, "ranks_per_gpu", 1)
    if per_gpu < 1:
        return f"--ranks-per-gpu {per_gpu}: give a positive number of ranks per GPU"
    if per_gpu == 1:
        return None
    if config.machine.device_type != "cuda":
        return "--ranks-per-gpu is for CUDA ranks; CPU ranks share no GPU (leave it at 1)"
    if Path(sys.argv[0]).name == "ns-train":
        return (
            "--ranks-per-gpu needs splatfacto-dist-train: ns-train's launcher gives every rank a GPU of its own (NCCL)"
        )
    return None


def refusal_at_parse(config: Any) -> Optional[str]:
    """What must be refused as soon as the command line is parsed, or None."""
    error = refusal(config) or shared_gpu_refusal(config)
    if error:
        return error
    machine = config.machine
    if machine.device_type == "cuda" and machine.num_devices > 1 and "RANK" not in os.environ:
        return too_many_gpus(machine.num_devices, ranks_per_gpu(config))
    return None


def refuse_at_parse(config: Any) -> None:
    """Print the refusal (if any) as one line and exit with code 2."""
    error = refusal_at_parse(config)
    if error:
        CONSOLE.print(f"[bold red]error:[/bold red] {error}")
        raise SystemExit(2)


def data_path(config: Any) -> Optional[Path]:
    datamanager = config.pipeline.datamanager
    data = config.data or getattr(datamanager, "data", None) or getattr(datamanager.dataparser, "data", None)
    return Path(data) if data is not None else None


def check_job(config: Any, job: Any) -> None:
    """Fail early, in one line (`LaunchError`), on what cannot work for this job's shape."""
    error = refusal(config) or shared_gpu_refusal(config)  # again: a --load-config never ran __post_init__
    if error:
        raise LaunchError(error)
    machine = config.machine
    if machine.device_type == "cuda":
        if not torch.cuda.is_available():
            raise LaunchError("CUDA is not available here; train on CPU with --machine.device-type cpu")
        error = too_many_gpus(job.num_devices_per_machine, ranks_per_gpu(config))
        if error:
            raise LaunchError(error)
    datamanager = config.pipeline.datamanager
    if hasattr(datamanager, "cameras_per_rank"):
        try:  # the camera count is unknown here: check the settings against the smallest valid one
            shards = datamanager.data_shards or job.world_size
            CameraSchedule(max(shards, 1), shards, 0, job.world_size, datamanager.cameras_per_rank, 0)
        except ConfigError as err:
            raise LaunchError(str(err)) from None
    error = None if config.load_config else refusals.missing_data(data_path(config))
    if error:
        raise LaunchError(error)
    if job.world_size > 1 and job.init_method.startswith("tcp://") and job.machine_rank == 0 and job.local_rank is None:
        url = urlparse(job.init_method)
        if url.hostname in ("127.0.0.1", "localhost", "0.0.0.0", socket.gethostname()) and not _port_free(url.port):
            raise LaunchError(f"port {url.port} of --machine.dist-url {job.init_method} is in use; choose another port")


def _port_free(port: Optional[int]) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("", port or 0))
        except OSError:
            return False
    return True
