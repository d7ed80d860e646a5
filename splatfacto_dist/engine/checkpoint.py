"""Checkpoints: written whole and atomically by rank 0, resumed on any GPU count.

Written files hold the whole model in splatfacto's layout (the Gaussian layout gathers a sharded
model first), load in stock ns-export / ns-eval / ns-render with torch's default
`weights_only=True`, and never exist half-written. A resume continues at the same number of
images seen with the *new* run's optimizer settings: torch's `load_state_dict` would otherwise
bring back the saving run's learning rates, eps and betas, which `scale_optimizers` chose for the
old GPU count.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

from splatfacto_dist import comm
from splatfacto_dist.layouts.contract import GaussianLayout, WholeGaussians

STATISTICS = ("grad2d", "count", "radii")
"""The densification statistics a checkpoint keeps (those the strategy holds), so that a run resumed
between two refines refines as the uninterrupted one."""


def to_builtin(obj: Any) -> Any:
    """Replace numpy scalars (nerfstudio's LR schedules produce them) with Python numbers."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_builtin(v) for v in obj)
    return obj


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be written or resumed from; its message is the one line to show."""


def state_bytes(state: Any) -> int:
    """About what `torch.save` writes for `state`: its tensors' bytes, 64 per tensor for the zip
    records and their alignment, and 1 MiB for the pickled rest."""
    total = 1 << 20

    def add(obj: Any) -> None:
        nonlocal total
        if isinstance(obj, torch.Tensor):
            total += obj.nelement() * obj.element_size() + 64
        elif isinstance(obj, dict):
            for value in obj.values():
                add(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                add(value)

    add(state)
    return total


def _free_bytes(folder: Path) -> Optional[int]:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def _amount(n: int) -> str:
    return f"{n} bytes ({n / 2**20:.1f} MiB)"


def save_atomic(state: Any, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename over it. Refused before writing
    when the disk has less free space than the state needs; a failed write (disk full, unwritable)
    removes the temporary file, leaves whatever `path` held, and raises `CheckpointError`."""
    state = to_builtin(state)
    needed = state_bytes(state)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise CheckpointError(f"checkpoint {path} not written: {one_line(err)} (it needs about {_amount(needed)})")
    free = _free_bytes(path.parent)
    if free is not None and free < needed:
        raise CheckpointError(
            f"checkpoint {path} not written: it needs about {_amount(needed)}, {path.parent} has {_amount(free)} free"
        )
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        free = _free_bytes(path.parent)
        room = "" if free is None else f", {path.parent} has {_amount(free)} free"
        raise CheckpointError(
            f"checkpoint {path} not written: {one_line(err)} (it needs about {_amount(needed)}{room})"
        ) from None


def one_line(err: BaseException) -> str:
    """An exception as one line: its type and its message's first line (torch's C++ errors append
    a stack trace)."""
    lines = str(err).strip().splitlines()
    first = " ".join(lines[0].split()) if lines else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def checkpoint_path(folder: Path, step: int) -> Path:
    """Where the checkpoint of `step` lives in `folder` (nerfstudio's naming, which its tools read)."""
    return Path(folder) / f"step-{step:09d}.ckpt"


def with_moments(states: Dict[str, Dict], moments: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict]:
    """Optimizer state dicts with each Gaussian group's per-Gaussian moments replaced by `moments`
    (one parameter per group; its `step` and settings kept)."""
    out = {}
    for name, saved in states.items():
        if name in moments and saved["state"]:
            (index,) = saved["state"]
            saved = {**saved, "state": {index: {**saved["state"][index], **moments[name]}}}
        out[name] = saved
    return out


def save(
    path: Path, step: int, pipeline: Any, optimizers: Any, layout: GaussianLayout, extra: Dict[str, Any]
) -> Optional[Path]:
    """Every rank calls this (a sharded model is gathered collectively); rank 0 writes the whole model
    in splatfacto's layout to `path` with `extra` (step bookkeeping, scalers, ...) and returns it."""
    model = pipeline.model
    costs = pipeline.datamanager.cost_state()  # every rank's camera costs, before rank 0 goes on alone
    state = model.strategy_state
    statistics = {key: state[key] for key in STATISTICS if state.get(key) is not None}
    whole = layout.gather(model.gauss_params, optimizers.optimizers, state["ids"], statistics)
    if whole is None:
        return None
    state = {k: v for k, v in pipeline.state_dict().items() if not k.startswith("_model.gauss_params.")}
    state.update({f"_model.gauss_params.{name}": value for name, value in whole.params.items()})
    optimizer_states = with_moments({k: v.state_dict() for k, v in optimizers.optimizers.items()}, whole.moments)
    save_atomic(
        {
            "step": step,
            **extra,
            "pipeline": state,
            "optimizers": optimizer_states,
            "schedulers": {k: v.state_dict() for k, v in optimizers.schedulers.items()},
            "gaussian_ids": whole.ids,  # random draws are keyed by them (ops.py); stock tools ignore the key
            "densification_statistics": {k: v.cpu() for k, v in whole.statistics.items()},
            "camera_costs": costs,  # how the cameras are dealt (camera_costs.py)
        },
        path,
    )
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


# What a checkpoint must hold to be resumed from (stock splatfacto's hold them too).
REQUIRED = ("step", "pipeline", "optimizers")


def load_complete(path: Path) -> Dict[str, Any]:
    """`load`, raising `CheckpointError` (one line naming the file) for a file that does not load
    (truncated, empty, unreadable) or lacks what a resume needs."""
    try:
        loaded = load(path)
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, OSError...
        raise CheckpointError(f"checkpoint {path} does not load: {one_line(err)}") from None
    missing = [key for key in REQUIRED if not isinstance(loaded, dict) or key not in loaded]
    if not missing and "_model.gauss_params.means" not in loaded["pipeline"]:
        missing = ["pipeline's _model.gauss_params.means"]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: it holds no {', '.join(missing)}")
    return loaded


def _steps(load_dir: Path) -> List[Tuple[int, Path]]:
    """The dir's `step-N.ckpt` files, newest first."""
    found = []
    for path in Path(load_dir).glob("step-*.ckpt"):
        number = path.stem.split("-", 1)[1]
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found, reverse=True)


def resume_from(
    load_dir: Optional[Path],
    load_step: Optional[int],
    load_checkpoint: Optional[Path],
    say: Callable[[str], None] = print,
) -> Optional[Tuple[Path, Dict[str, Any]]]:
    """The checkpoint to resume from and its contents: `--load-dir`'s newest complete one (each newer
    one that does not load is named by `say` in one line and skipped), or exactly the file
    `--load-dir --load-step` or `--load-checkpoint` names; None for neither. `CheckpointError` (one
    line) when none loads."""
    if load_dir is not None and load_step is None:
        found = _steps(load_dir)
        if not found:
            raise CheckpointError(f"no step-*.ckpt checkpoint in {load_dir}")
        for i, (_, path) in enumerate(found):
            try:
                return path, load_complete(path)
            except CheckpointError as err:
                older = "trying the next older one" if i + 1 < len(found) else "no older one is left"
                say(f"{err}; {older}")
        raise CheckpointError(f"none of the {len(found)} checkpoints in {load_dir} loads (each is named above)")
    if load_dir is not None:
        path = checkpoint_path(load_dir, load_step)  # type: ignore[arg-type]
    elif load_checkpoint is not None:
        path = Path(load_checkpoint)
    else:
        return None
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path, load_complete(path)


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
    statistics = {k: v[rows] for k, v in loaded.get("densification_statistics", {}).items()}
    if not layout.sharded and comm.rank() != 0:  # replicas sum their statistics at a refine: rank 0 brings them
        statistics = {k: torch.zeros_like(v) for k, v in statistics.items()}
    return pipeline_state, WholeGaussians(params, moments, ids[rows], statistics)


def continue_schedules(schedulers: Dict[str, torch.optim.lr_scheduler.LRScheduler], start: int) -> None:
    """Put this run's fresh schedulers at step `start`; their shape (base lr, decay length) is this
    run's, only the position is the checkpoint's."""
    for scheduler in schedulers.values():
        scheduler.last_epoch = start - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "step() before optimizer.step()": intended here
            scheduler.step()
