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
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch

from splatfacto_dist.layouts.contract import GaussianLayout, WholeGaussians


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


def save(
    path: Path, step: int, pipeline: Any, optimizers: Any, layout: GaussianLayout, extra: Dict[str, Any]
) -> Optional[Path]:
    """Every rank calls this (a sharded model is gathered collectively); rank 0 writes the whole model
    in splatfacto's layout to `path` with `extra` (step bookkeeping, scalers, ...) and returns it."""
    model = pipeline.model
    costs = pipeline.datamanager.cost_state()  # every rank's camera costs, before rank 0 goes on alone
    whole = layout.gather(model.gauss_params, optimizers.optimizers, model.strategy_state["ids"])
    if whole is None:
        return None
    state = {k: v for k, v in pipeline.state_dict().items() if not k.startswith("_model.gauss_params.")}
    state.update({f"_model.gauss_params.{name}": value for name, value in whole.params.items()})
    optimizer_states = {}
    for name, optimizer in optimizers.optimizers.items():
        saved = optimizer.state_dict()
        if name in whole.moments and saved["state"]:
            (index,) = saved["state"]  # one parameter per Gaussian group
            saved = {**saved, "state": {index: {**saved["state"][index], **whole.moments[name]}}}
        optimizer_states[name] = saved
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(
        {
            "step": step,
            **extra,
            "pipeline": state,
            "optimizers": optimizer_states,
            "schedulers": {k: v.state_dict() for k, v in optimizers.schedulers.items()},
            "gaussian_ids": whole.ids,  # random draws are keyed by them (ops.py); stock tools ignore the key
            "camera_costs": costs,  # how the cameras are dealt (camera_costs.py)
        },
        path,
    )
    return path


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


def load(path: Path) -> Dict[str, Any]:
    """A checkpoint's contents, on the CPU."""
    return torch.load(path, map_location="cpu", weights_only=False)


def start_step(loaded: Dict[str, Any], images_per_step: int, count_images: bool) -> int:
    """The step a resume continues at: the same number of images seen when schedules count images
    and the checkpoint's run took another number per step."""
    start = loaded["step"] + 1
    saved_images_per_step = loaded.get("images_per_step", 1)
    if count_images and saved_images_per_step != images_per_step:
        start = start * saved_images_per_step // images_per_step
    return start


def own_rows(loaded: Dict[str, Any], layout: GaussianLayout) -> Tuple[Dict[str, torch.Tensor], WholeGaussians]:
    """The pipeline state and the Gaussians (parameters, Adam moments, ids) of a checkpoint holding the
    whole model (either layout wrote it, or stock splatfacto: its Gaussians are then numbered in
    order), cut to the rows this rank holds (`layout.hold`)."""
    state = loaded["pipeline"]
    n = len(state["_model.gauss_params.means"])
    rows = layout.hold(n)
    pipeline_state = {k: (v[rows] if k.startswith("_model.gauss_params.") else v) for k, v in state.items()}
    moments = {}
    for name, saved in loaded["optimizers"].items():
        per_param = saved["state"].get(0, {})
        if f"_model.gauss_params.{name}" in state:
            moments[name] = {k: v[rows] for k, v in per_param.items() if k != "step"}
    ids = loaded.get("gaussian_ids")
    ids = torch.arange(n, dtype=torch.int64) if ids is None else ids
    params = {k.split(".")[-1]: v for k, v in pipeline_state.items() if k.startswith("_model.gauss_params.")}
    return pipeline_state, WholeGaussians(params, moments, ids[rows])


def optimizer_states(loaded: Dict[str, Any], own: WholeGaussians) -> Dict[str, Dict]:
    """The saved optimizer states with each Gaussian group's moments replaced by this rank's rows."""
    out = {}
    for name, saved in loaded["optimizers"].items():
        if name in own.moments and saved["state"]:
            (index,) = saved["state"]
            saved = {**saved, "state": {index: {**saved["state"][index], **own.moments[name]}}}
        out[name] = saved
    return out


def continue_schedules(schedulers: Dict[str, torch.optim.lr_scheduler.LRScheduler], start: int) -> None:
    """Put this run's fresh schedulers at step `start`; their shape (base lr, decay length) is this
    run's, only the position is the checkpoint's."""
    for scheduler in schedulers.values():
        scheduler.last_epoch = start - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()": intended here
            scheduler.step()
