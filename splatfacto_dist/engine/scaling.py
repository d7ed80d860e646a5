"""Make N GPUs x B cameras per step do the learning of one GPU, in 1/(N*B) of the steps.

splatfacto's schedules count steps of one image each. With an effective batch of E images per
step, every count that means "after this much training" is divided by E (the run then sees the
same number of images), and Adam is adapted to the larger batch following Grendel-GS
(arXiv:2406.18533): learning rates x sqrt(E), eps / sqrt(E) and betas -> beta^E, so that one
step on E images moves the Gaussians about as far as E steps on one image would, and the
moments forget at the same rate per image seen. Pose and bilateral-grid optimizers are left
as they are: each of their parameters only ever sees its own camera's image.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, Tuple, Type

import torch
from nerfstudio.engine.optimizers import AdamOptimizerConfig, OptimizerConfig
from nerfstudio.engine.schedulers import (
    CosineDecaySchedulerConfig,
    ExponentialDecaySchedulerConfig,
    MultiStepSchedulerConfig,
)
from nerfstudio.engine.trainer import TrainerConfig

from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES  # each Gaussian parameter has its optimizer

# The optimizer groups a splatfacto model can have; nerfstudio builds no optimizer for any other entry.
SPLATFACTO_GROUPS = (*GAUSSIAN_NAMES, "camera_opt", "bilateral_grid")
ScalingRule = Literal["sqrt", "linear", "off"]
# Every scheduler whose step counts `convert_images_to_steps` rewrites, and whose learning rates stay
# right under `scale_optimizers` (all are factors of the optimizer's lr, but exponential decay's
# lr_final and lr_pre_warmup, which are scaled with it).
CONVERTIBLE_SCHEDULERS = (ExponentialDecaySchedulerConfig, MultiStepSchedulerConfig, CosineDecaySchedulerConfig)

_TRAINER_COUNTS = (
    "max_num_iterations",
    "steps_per_save",
    "steps_per_eval_batch",
    "steps_per_eval_image",
    "steps_per_eval_all_images",
)
_MODEL_COUNTS = (
    "warmup_length",
    "refine_every",
    "resolution_schedule",
    "sh_degree_interval",
    "stop_screen_size_at",
    "stop_split_at",
)


def _per_batch(images: int, effective_batch: int) -> int:
    """Steps that see `images` images; intervals never collapse to 0 (0 keeps meaning 'off')."""
    return 0 if images == 0 else max(1, round(images / effective_batch))


@dataclasses.dataclass
class AdamConfig(AdamOptimizerConfig):
    """nerfstudio's Adam config plus the `betas` and `fused` arguments it does not expose."""

    betas: tuple = (0.9, 0.999)
    fused: bool = False


@dataclasses.dataclass
class SparseAdamConfig(OptimizerConfig):
    """torch's SparseAdam (Adam on the rows a sparse gradient names): the offloaded colours'
    visible-only update (`--pipeline.model.offload-adam sparse`)."""

    _target: Type = torch.optim.SparseAdam
    betas: tuple = (0.9, 0.999)


def sparse_adam(config: TrainerConfig, names: Tuple[str, ...]) -> None:
    """Replace the Adam of the groups `names` by SparseAdam with the same rate, eps and betas."""
    for name in names:
        adam = config.optimizers[name]["optimizer"]
        config.optimizers[name]["optimizer"] = SparseAdamConfig(
            lr=adam.lr, eps=adam.eps, max_norm=adam.max_norm, betas=getattr(adam, "betas", (0.9, 0.999))
        )


def is_adam(optimizer: Any) -> bool:
    """Whether an optimizer config builds torch's Adam with the arguments `scale_optimizers` adapts."""
    return isinstance(optimizer, AdamOptimizerConfig) and optimizer._target is torch.optim.Adam


def fuse_adam(config: TrainerConfig) -> None:
    """Use torch's fused Adam (one kernel per parameter group and step) for every Adam group."""
    for group in config.optimizers.values():
        adam = group["optimizer"]
        if type(adam) in (AdamOptimizerConfig, AdamConfig):
            fields = {f.name: getattr(adam, f.name) for f in dataclasses.fields(adam) if f.name != "_target"}
            group["optimizer"] = AdamConfig(**{**fields, "fused": True})


def convert_images_to_steps(config: TrainerConfig, effective_batch: int) -> None:
    """Rewrite, in place, every image-count of `config` as a step count for `effective_batch`."""
    if effective_batch == 1:
        return
    for name in _TRAINER_COUNTS:
        setattr(config, name, _per_batch(getattr(config, name), effective_batch))
    model = config.pipeline.model
    for name in _MODEL_COUNTS:
        setattr(model, name, _per_batch(getattr(model, name), effective_batch))
    model.images_per_step = effective_batch  # type: ignore[attr-defined]
    for name, group in config.optimizers.items():
        if name in SPLATFACTO_GROUPS:
            _convert_scheduler(group.get("scheduler"), effective_batch)


def _convert_scheduler(scheduler: Any, effective_batch: int) -> None:
    if isinstance(scheduler, ExponentialDecaySchedulerConfig):
        scheduler.max_steps = _per_batch(scheduler.max_steps, effective_batch)
        scheduler.warmup_steps = _per_batch(scheduler.warmup_steps, effective_batch)
    elif isinstance(scheduler, MultiStepSchedulerConfig):
        scheduler.max_steps = _per_batch(scheduler.max_steps, effective_batch)
        scheduler.milestones = tuple(_per_batch(m, effective_batch) for m in scheduler.milestones)
    elif isinstance(scheduler, CosineDecaySchedulerConfig):
        scheduler.max_steps = _per_batch(scheduler.max_steps, effective_batch)
        scheduler.warm_up_end = _per_batch(scheduler.warm_up_end, effective_batch)
    elif scheduler is not None:
        raise ValueError(f"cannot count {type(scheduler).__name__} in images; use --schedule-unit steps")


def scale_optimizers(config: TrainerConfig, effective_batch: int, rule: ScalingRule) -> None:
    """Adapt the Gaussians' Adam settings to `effective_batch` images per step, in place."""
    if effective_batch == 1 or rule == "off":
        return
    factor = math.sqrt(effective_batch) if rule == "sqrt" else float(effective_batch)
    for name in GAUSSIAN_NAMES:
        group = config.optimizers.get(name)
        if group is None:
            continue
        adam = group["optimizer"]
        if not is_adam(adam):
            raise ValueError(
                f"the '{name}' group's {type(adam).__name__} is not Adam; use --batch-optimizer-scaling off"
            )
        beta1, beta2 = getattr(adam, "betas", (0.9, 0.999))
        group["optimizer"] = AdamConfig(
            lr=adam.lr * factor,
            eps=adam.eps / factor,
            max_norm=adam.max_norm,
            weight_decay=adam.weight_decay,
            betas=(beta1**effective_batch, beta2**effective_batch),
            fused=getattr(adam, "fused", False),
        )
        scheduler = group.get("scheduler")
        if isinstance(scheduler, ExponentialDecaySchedulerConfig):
            scheduler.lr_final = scheduler.lr_final * factor if scheduler.lr_final is not None else None
            scheduler.lr_pre_warmup = scheduler.lr_pre_warmup * factor
        elif scheduler is not None and not isinstance(scheduler, CONVERTIBLE_SCHEDULERS):
            raise ValueError(
                f"cannot scale the '{name}' group's {type(scheduler).__name__}; use --batch-optimizer-scaling off"
            )
