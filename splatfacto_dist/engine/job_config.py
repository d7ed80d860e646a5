"""The configuration a job trains with, derived once from the one the user gave.

The user's config is what config.yml keeps and what a resume, ns-eval or ns-export reads back, so it
holds what the user typed. A job needs more than that: the model's seed (--machine.seed unless the
model names one), whether cameras are dealt by measured cost (on where a camera's time is its own:
the replicated layout), every image count as a step count for the job's images per step, and the
Gaussians' Adam fused and adapted to that batch (scaling.py), and SparseAdam for offloaded colours
when asked. `for_job` returns a copy with all of it
resolved; nerfstudio's Trainer builds the pipeline, model and optimizers from that copy, so every
value reaches the model down the config it is built from and nothing is written into a config
someone else holds.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

from splatfacto_dist.engine.scaling import convert_images_to_steps, fuse_adam, scale_optimizers, sparse_adam
from splatfacto_dist.offload.working_set import HOST_GROUPS

if TYPE_CHECKING:
    from splatfacto_dist.engine.trainer import DistTrainerConfig


def images_per_step(config: DistTrainerConfig, world_size: int) -> int:
    """Images one step sees across the job: every rank renders its cameras per rank."""
    return world_size * getattr(config.pipeline.datamanager, "cameras_per_rank", 1)


def for_job(config: DistTrainerConfig, world_size: int) -> DistTrainerConfig:
    """A copy of `config` with the job's derived values resolved (see the module docstring)."""
    job = copy.deepcopy(config)
    model, datamanager = job.pipeline.model, job.pipeline.datamanager
    if getattr(model, "seed", 0) is None:
        model.seed = job.machine.seed
    if getattr(datamanager, "balance_cameras", False) is None:
        datamanager.balance_cameras = getattr(model, "gaussian_layout", "replicated") == "replicated"
    batch = images_per_step(job, world_size)
    if job.schedule_unit == "images":
        convert_images_to_steps(job, batch)
    if job.fused_adam:
        fuse_adam(job)
    scale_optimizers(job, batch, job.batch_optimizer_scaling)
    if getattr(model, "offload", False) and getattr(model, "offload_adam", "dense") == "sparse":
        sparse_adam(job, HOST_GROUPS)
    return job
