"""One rank's life: its threads and device, the process group, nerfstudio's training, the final
barrier. Every launcher ends here: `launch` (forked, spawned or pre-spawned ranks, torchrun,
SLURM) and `prespawn`'s waiting processes.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils import comms, profiler

from splatfacto_dist import comm
from splatfacto_dist.launching.devices import gpu_of, gpus_needed, ranks_per_gpu
from splatfacto_dist.launching.signals import PREEMPTION
from splatfacto_dist.reporting.profiling import STARTUP
from splatfacto_dist.reporting.records import clear_rank_records, write_rank_record

DEFAULT_TIMEOUT = timedelta(minutes=10)


@dataclass
class Job:
    """Where this process sits in the job."""

    world_size: int
    num_devices_per_machine: int
    machine_rank: int
    init_method: str
    local_rank: Optional[int] = None  # set when an external launcher already started this process
    global_rank: Optional[int] = None


def _train(local_rank: int, world_size: int, config: TrainerConfig, global_rank: int) -> None:
    """nerfstudio's train_loop (seed + rank, set up, train), without importing nerfstudio.scripts.train:
    that module builds every installed method's config, which each spawned rank would pay for."""
    if global_rank != 0:
        # nerfstudio's Trainer prints its notes and the "Training Finished" box on every rank: rank 0's
        # are the job's. Only that module's console: the ranks' own report lines are still printed.
        from nerfstudio.engine import trainer as nerfstudio_trainer
        from rich.console import Console

        nerfstudio_trainer.CONSOLE = Console(quiet=True)
    seed = config.machine.seed + global_rank
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    clear_rank_records(config.get_base_dir(), global_rank)
    try:
        trainer = config.setup(local_rank=local_rank, world_size=world_size)
        trainer.setup()
        trainer.train()
    except Exception as err:
        try:
            failure = {"failed": f"{type(err).__name__}: {err}"[:4000], "failed_at": time.time()}
            write_rank_record(config.get_base_dir(), global_rank, failure)
        except Exception as unwritten:  # noqa: BLE001 - the training error is the one to raise
            print(f"rank {global_rank}: could not write its failure record: {unwritten}", file=sys.stderr, flush=True)
        raise
    finally:
        profiler.flush_profiler(config.logging)  # as ns-train's launcher does; rank 0 only holds one


def run_rank(local_rank: int, config: TrainerConfig, job: Job) -> None:
    """One rank: threads, device, process group, training, then the final barrier."""
    PREEMPTION.watch()  # from the first moment: a signal during start-up is acted on at the first agreement
    STARTUP.mark("command line")
    global_rank = (
        job.global_rank if job.global_rank is not None else job.machine_rank * job.num_devices_per_machine + local_rank
    )
    if "OMP_NUM_THREADS" not in os.environ:
        # Every rank would otherwise size its thread pool to the whole machine (as torchrun avoids).
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // job.num_devices_per_machine))
    if job.world_size == 1:
        _train(local_rank, 1, config, 0)
        return
    cuda = config.machine.device_type == "cuda"
    shared_gpus = ranks_per_gpu(config) > 1
    if cuda:
        torch.cuda.set_device(gpu_of(local_rank, config))
    if shared_gpus and global_rank == 0:
        print(
            f"{job.num_devices_per_machine} ranks share {gpus_needed(job.num_devices_per_machine, ranks_per_gpu(config))}"
            f" GPU(s) on each machine over gloo (--ranks-per-gpu {ranks_per_gpu(config)}): per-rank memory is real,"
            " speed figures are not",
            flush=True,
        )
    dist.init_process_group(
        backend="nccl" if cuda and not shared_gpus else "gloo",
        init_method=job.init_method,
        world_size=job.world_size,
        rank=global_rank,
        timeout=DEFAULT_TIMEOUT,
    )
    STARTUP.mark("process group")
    for machine in range(job.world_size // job.num_devices_per_machine):
        ranks = list(range(machine * job.num_devices_per_machine, (machine + 1) * job.num_devices_per_machine))
        group = dist.new_group(ranks)
        if machine == job.machine_rank:
            comms.LOCAL_PROCESS_GROUP = group
    try:
        _train(local_rank, job.world_size, config, global_rank)
        comm.barrier()
    except Exception as err:
        # Said by the rank itself: the launcher reports whichever rank it notices first, often a
        # peer that only lost its connection to the rank that really failed.
        print(f"rank {global_rank} failed: {type(err).__name__}: {err}", file=sys.stderr, flush=True)
        raise
    finally:
        dist.destroy_process_group()
