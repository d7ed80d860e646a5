"""Checkpoints: written whole and atomically by rank 0, resumed on any GPU count.

Written files hold the whole model in splatfacto's layout (the Gaussian layout gathers a sharded
model first), load in stock ns-export / ns-eval / ns-render with torch's default
`weights_only=True`, and never exist half-written. A resume continues at the same number of
images seen with the *new* run's optimizer settings: torch's `load_state_dict` would otherwise
bring back the saving run's learning rates, eps and betas, which `scale_optimizers` chose for the
old GPU count.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Protocol

import numpy as np
import torch
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist import comm


class Checkpointed(Protocol):
    """What saving and resuming read and set on a trainer (the trainer calls them: this module
    does not import it)."""

    config: Any  # DistTrainerConfig: save_only_latest_checkpoint, load_dir / load_step / load_checkpoint, ...
    pipeline: Any
    optimizers: Any
    grad_scaler: torch.amp.GradScaler
    checkpoint_dir: Path
    images_per_step: int
    _start_step: int

    def setup_optimizers(self) -> Any: ...


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


def save(trainer: Checkpointed, step: int) -> None:
    """Every rank calls this (a sharded model is gathered collectively); rank 0 writes."""
    costs = trainer.pipeline.datamanager.cost_state()  # every rank's camera costs, before rank 0 goes on alone
    full = trainer.pipeline.model.layout.full_state(trainer.pipeline, trainer.optimizers)
    if full is None:
        return
    pipeline_state, optimizer_states, ids = full
    trainer.checkpoint_dir.mkdir(parents=True, exist_ok=True)
    path: Path = trainer.checkpoint_dir / f"step-{step:09d}.ckpt"
    state = {
        "step": step,
        "images_per_step": trainer.images_per_step,
        "pipeline": pipeline_state,
        "optimizers": optimizer_states,
        "schedulers": {k: v.state_dict() for k, v in trainer.optimizers.schedulers.items()},
        "scalers": trainer.grad_scaler.state_dict(),
        "gaussian_ids": ids,  # random draws are keyed by them (ops.py); stock tools ignore the key
        "camera_costs": costs,  # how the cameras are dealt (camera_costs.py)
    }
    save_atomic(state, path)
    if trainer.config.save_only_latest_checkpoint:
        for old in trainer.checkpoint_dir.glob("*.ckpt"):
            if old != path:
                old.unlink()


def checkpoint_to_resume(load_dir: Optional[Path], load_step: Optional[int], load_checkpoint: Optional[Path]):
    """The file `--load-dir` (newest, or `--load-step`) or `--load-checkpoint` names; None for neither."""
    if load_dir is not None:
        step = load_step
        if step is None:
            steps = sorted(int(p.stem.split("-")[1]) for p in Path(load_dir).glob("step-*.ckpt"))
            if not steps:
                raise FileNotFoundError(f"no step-*.ckpt checkpoint in {load_dir}")
            step = steps[-1]
        path = Path(load_dir) / f"step-{step:09d}.ckpt"
    elif load_checkpoint is not None:
        path = Path(load_checkpoint)
    else:
        return None
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


def load_moments(optimizer: torch.optim.Optimizer, saved: Dict[str, Any]) -> None:
    """Load the saved moments (exp_avg, exp_avg_sq, step) and keep this run's hyperparameters."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(saved)
    for group, own in zip(optimizer.param_groups, settings):
        group.update(own)
        if own.get("fused") or own.get("capturable"):  # their step counters live beside the parameters
            for p in group["params"]:
                state = optimizer.state.get(p, {})
                if "step" in state:
                    state["step"] = state["step"].to(device=p.device, dtype=torch.float32)


def resume(trainer: Checkpointed) -> None:
    """Load the checkpoint the config names (if any) into the trainer, see the module docstring."""
    config = trainer.config
    path = checkpoint_to_resume(config.load_dir, config.load_step, config.load_checkpoint)
    if path is None:
        if comm.is_main():  # one line per job, as nerfstudio's own notes are
            CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
        return
    loaded = torch.load(path, map_location="cpu", weights_only=False)
    start = loaded["step"] + 1
    saved_images_per_step = loaded.get("images_per_step", 1)
    if config.schedule_unit == "images" and saved_images_per_step != trainer.images_per_step:
        start = start * saved_images_per_step // trainer.images_per_step  # the same images seen
    trainer._start_step = start
    model = trainer.pipeline.model
    model.layout.load_full_state(trainer.pipeline, loaded["pipeline"], loaded["step"], loaded.get("gaussian_ids"))
    trainer.optimizers = trainer.setup_optimizers()  # around the loaded Parameters
    optimizer_states = model.layout.local_optimizer_states(loaded["optimizers"])
    for name, saved in optimizer_states.items():
        load_moments(trainer.optimizers.optimizers[name], saved)
    if config.load_scheduler:
        continue_schedules(trainer.optimizers.schedulers, start)
    trainer.grad_scaler.load_state_dict(loaded["scalers"])
    trainer.pipeline.datamanager.load_cost_state(loaded.get("camera_costs"))
    if comm.is_main():
        CONSOLE.print(
            f"Done loading Nerfstudio checkpoint from {path} (images seen: "
            f"{start * trainer.images_per_step}, continuing at step {start})"
        )


def continue_schedules(schedulers: Dict[str, torch.optim.lr_scheduler.LRScheduler], start: int) -> None:
    """Put this run's fresh schedulers at step `start`; their shape (base lr, decay length) is this
    run's, only the position is the checkpoint's."""
    for scheduler in schedulers.values():
        scheduler.last_epoch = start - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()": intended here
            scheduler.step()
