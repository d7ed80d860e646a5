"""Checks that refuse an impossible run in one `error:` line, before any process or GPU work starts.

Two moments: while the command line is parsed (`refuse_at_parse`, from the trainer config's
`__post_init__`, which nerfstudio's own launcher reaches before it spawns anything), and in our
launcher once the job's shape is known (`check_job`).
"""

from __future__ import annotations

import copy
import os
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse

import torch
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist.data.datamanager import CameraSchedule, ConfigError, image_problem, one_line
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


def offload_refusal(config: Any, world_size: int) -> Optional[str]:
    """Offload with replicas: every rank would keep the whole model's colours in host memory and
    all-reduce their host gradients each step; the sharded layout divides them instead."""
    model = config.pipeline.model
    if getattr(model, "offload", False) and world_size > 1 and getattr(model, "gaussian_layout", "") == "replicated":
        return (
            f"--pipeline.model.offload True on {world_size} ranks needs --pipeline.model.gaussian-layout sharded "
            "(replicated, every rank would hold and all-reduce the whole model's colours); or train on one rank"
        )
    return None


def count_refusal(config: Any) -> Optional[str]:
    """The first count (`refusals.COUNTS`) below 1, or None."""
    for flag, path, counts in refusals.COUNTS:
        value: Any = config
        for name in path:
            value = getattr(value, name, None)
        error = refusals.nonpositive_count(flag, value, counts)
        if error:
            return error
    return None


def output_refusal(output_dir: Path) -> Optional[str]:
    """--output-dir where no folder can be made or written (a file on its path, no write access)."""
    existing = Path(output_dir).absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"--output-dir {output_dir}: {existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--output-dir {output_dir}: {existing} is not writable"
    return None


def refusal_at_parse(config: Any) -> Optional[str]:
    """What must be refused as soon as the command line is parsed, or None. The output folder only
    when given: the method registry builds the default config at import (ns-export, ns-eval, ...),
    where an unwritable working directory must not refuse anything."""
    error = refusal(config) or shared_gpu_refusal(config) or count_refusal(config)
    error = error or offload_refusal(config, config.machine.num_devices * config.machine.num_machines)
    if error:
        return error
    output_dir = getattr(config, "output_dir", None)
    if output_dir is not None and Path(output_dir) != Path("outputs"):
        error = output_refusal(output_dir)
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
        CONSOLE.print(f"[bold red]error:[/bold red] {error}", soft_wrap=True)  # one line, however long
        raise SystemExit(2)


def data_path(config: Any) -> Optional[Path]:
    datamanager = config.pipeline.datamanager
    data = config.data or getattr(datamanager, "data", None) or getattr(datamanager.dataparser, "data", None)
    return Path(data) if data is not None else None


def check_job(config: Any, job: Any) -> None:
    """Fail early, in one line (`LaunchError`), on what cannot work for this job's shape."""
    # again: a --load-config never ran __post_init__
    error = refusal(config) or shared_gpu_refusal(config) or count_refusal(config)
    error = error or offload_refusal(config, job.world_size)
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
    if hasattr(datamanager, "cameras_per_rank"):
        error = data_refusal(config, job.world_size)
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


def _model_name(parser_config: Any) -> str:
    """The camera model a dataparser reads, as the user knows it."""
    data = Path(parser_config.data)
    if hasattr(parser_config, "colmap_path"):
        return f"COLMAP model {data / parser_config.colmap_path}"
    if type(parser_config).__name__ == "NerfstudioDataParserConfig":
        return f"transforms file {data if data.suffix == '.json' else data / 'transforms.json'}"
    return f"{type(parser_config).__name__.replace('Config', '')} model of {data}"


def cameras_parser(config: Any) -> Tuple[str, Any]:
    """The camera model's name and a parser for it as the ranks' datamanagers parse it, without the
    3D points (splatfacto's initialization, the slow part of a large COLMAP model)."""
    datamanager = config.pipeline.datamanager
    parser_config = copy.deepcopy(datamanager.dataparser)
    data = getattr(datamanager, "data", None) or getattr(config, "data", None)
    if data is not None:
        parser_config.data = Path(data)
    if hasattr(parser_config, "load_3D_points"):
        parser_config.load_3D_points = False
    return _model_name(parser_config), parser_config


def listed_images(outputs: Dict[str, Any]) -> List[Tuple[Path, int, int]]:
    """Every image of every split once, with the size its camera gives."""
    seen: Dict[Path, Tuple[Path, int, int]] = {}
    for split in outputs.values():
        widths, heights = split.cameras.width.flatten().tolist(), split.cameras.height.flatten().tolist()
        for path, width, height in zip(split.image_filenames, widths, heights):
            seen.setdefault(Path(path), (Path(path), int(width), int(height)))
    return list(seen.values())


def data_refusal(config: Any, world_size: int) -> Optional[str]:
    """The first thing wrong with the data, in one line naming the file: a camera model that does not
    parse, an image it lists that is missing, empty, unreadable, truncated or of another size than its
    camera (`image_problem`, every image on a thread pool), or too few cameras for the shards."""
    name, parser_config = cameras_parser(config)
    try:
        parser = parser_config.setup()
        outputs = {split: parser.get_dataparser_outputs(split=split) for split in ("train", "val")}
    except Exception as err:  # noqa: BLE001 - nerfstudio's parsers assert, raise KeyError, JSON errors...
        return f"the {name} cannot be read: {one_line(err)}"
    images = listed_images(outputs)
    workers = max(1, min(16, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # PIL reads and decodes without the GIL
        problems = list(pool.map(lambda image: image_problem(*image, listed_in=name), images))
    for problem in problems:
        if problem:
            return problem
    datamanager = config.pipeline.datamanager
    cameras = len(outputs["train"].image_filenames)
    shards = datamanager.data_shards or world_size
    try:
        CameraSchedule(cameras, shards, 0, world_size, datamanager.cameras_per_rank, 0)
    except ConfigError as err:
        return str(err)
    return None
