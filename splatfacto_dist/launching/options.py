"""Every option of a splatfacto-dist run, honoured or refused in one line.

The trainer, pipeline, datamanager and model are nerfstudio's classes with much of their work
overridden (one step per rank, sharded cameras, batched renders); an option the stock code reads
in a method we replaced would otherwise be dropped without a word. Each config class in play has
a table naming every one of its fields: `Honoured` (with where, so a reader can check it) or
`Refused` under a condition, with the line that tells the user what to change. The tests walk
the dataclasses against these tables, so a field added by a future nerfstudio fails them instead
of being ignored.

Options that stock splatfacto ignores as well (ray colliders, eval ray chunks, ...) are refused
when changed from their default: a user who sets one expects an effect neither can give. Those
whose default is a literal are listed in `refusals.LITERAL`, which the launcher also checks on the
raw command line, in the same words, before the seconds of imports a parse needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from nerfstudio.configs.base_config import LoggingConfig, MachineConfig, ViewerConfig
from nerfstudio.engine.trainer import TrainerConfig

from splatfacto_dist.data.datamanager import ShardedFullImageDatamanagerConfig
from splatfacto_dist.engine.pipeline import DistPipelineConfig
from splatfacto_dist.engine.scaling import CONVERTIBLE_SCHEDULERS, SPLATFACTO_GROUPS, is_adam
from splatfacto_dist.launching.refusals import FULL_IMAGE, INERT, LITERAL, NO_RAYS
from splatfacto_dist.layouts.contract import GAUSSIAN_NAMES
from splatfacto_dist.models.model import SplatfactoDistModelConfig


@dataclass(frozen=True)
class Honoured:
    """The field keeps its nerfstudio meaning; `where` says which code reads it."""

    where: str


@dataclass(frozen=True)
class Refused:
    """The field is refused when `when(section)` holds; `message(section)` is the one line shown."""

    when: Callable[[Any], bool]
    message: Union[str, Callable[[Any], str]]

    def line(self, section: Any) -> str:
        return self.message if isinstance(self.message, str) else self.message(section)


Rule = Union[Honoured, Refused]
Table = Dict[str, Rule]


@dataclass(frozen=True)
class Section:
    """One config object of a run: where it sits under the trainer config, its type, its table.

    A run whose object at `path` is not a `config_type` (another datamanager or model) is not
    checked against the table.
    """

    path: Tuple[str, ...]
    config_type: type
    table: Table


def _default(section: Any, name: str) -> Any:
    """The dataclass default of `name`, as the class (not this instance) declares it."""
    spec = next(f for f in dataclasses.fields(section) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _inert(flag: str, why: str) -> Refused:
    """Refuse a field that has no effect on splatfacto (stock included) once it is changed, where
    its default is no literal a raw command line could be compared with (a dict, a tuple)."""
    name = flag.rsplit(".", 1)[-1].lstrip("-").replace("-", "_")
    return Refused(
        when=lambda section: getattr(section, name) != _default(section, name),
        message=lambda section: INERT.format(flag=flag, why=why, default=_default(section, name)),
    )


_LITERAL = {entry.flag: entry for entry in LITERAL}


def _literal(flag: str) -> Refused:
    """Refuse a `refusals.LITERAL` option once it is changed, in the words of the raw check."""
    entry = _LITERAL[flag]
    return Refused(
        when=lambda section: getattr(section, entry.field) != entry.default,
        message=lambda section: entry.line(getattr(section, entry.field)),
    )


def _groups_with(config: Any, bad: Callable[[str, Dict[str, Any]], bool]) -> Iterator[str]:
    for name, group in config.optimizers.items():
        if name in SPLATFACTO_GROUPS and bad(name, group):
            yield name


def _non_adam_gaussian_groups(config: Any) -> List[str]:
    """Gaussian groups whose optimizer `scale_optimizers` would have to rewrite as Adam."""
    if config.batch_optimizer_scaling == "off":
        return []
    return list(_groups_with(config, lambda name, g: name in GAUSSIAN_NAMES and not is_adam(g["optimizer"])))


def _unconvertible_schedulers(config: Any) -> List[str]:
    """Groups whose scheduler counts cannot be read as images, or whose rates cannot be scaled."""

    def bad(name: str, group: Dict[str, Any]) -> bool:
        scheduler = group.get("scheduler")
        if scheduler is None or isinstance(scheduler, CONVERTIBLE_SCHEDULERS):
            return False
        return config.schedule_unit == "images" or (name in GAUSSIAN_NAMES and config.batch_optimizer_scaling != "off")

    return list(_groups_with(config, bad))


def _optimizers_refusal(config: Any) -> Optional[str]:
    non_adam, schedulers = _non_adam_gaussian_groups(config), _unconvertible_schedulers(config)
    if non_adam:
        return (
            f"--optimizers: the optimizer of {', '.join(non_adam)} is not Adam, which --batch-optimizer-scaling "
            "adapts to the batch; use Adam or --batch-optimizer-scaling off"
        )
    if schedulers:
        return (
            f"--optimizers: the scheduler of {', '.join(schedulers)} cannot be counted in images or scaled to "
            "the batch (exponential decay, multi-step and cosine decay can); use one of those, or "
            "--schedule-unit steps with --batch-optimizer-scaling off"
        )
    return None


TRAINER: Table = {
    "_target": Honoured("the trainer class built by config.setup"),
    "output_dir": Honoured("ExperimentConfig.get_base_dir"),
    "method_name": Honoured("ExperimentConfig.get_base_dir"),
    "experiment_name": Honoured("ExperimentConfig.get_base_dir"),
    "project_name": Honoured("Trainer.setup (event writers, rank 0)"),
    "timestamp": Honoured("ExperimentConfig.get_base_dir"),
    "machine": Honoured("its own table"),
    "logging": Honoured("its own table"),
    "viewer": Honoured("its own table"),
    "pipeline": Honoured("its own table"),
    "optimizers": Refused(
        when=lambda c: _optimizers_refusal(c) is not None,
        message=lambda c: str(_optimizers_refusal(c)),
    ),
    "vis": Honoured("Trainer.setup (viewer and event writers on rank 0)"),
    "data": Honoured("alias of --pipeline.datamanager.data (ns-train main, launch.main)"),
    "prompt": _literal("--prompt"),
    "relative_model_dir": Honoured("ExperimentConfig.get_checkpoint_dir"),
    "load_scheduler": Honoured("DistTrainer._load_checkpoint"),
    "steps_per_save": Honoured("DistTrainer.train (converted by scaling.convert_images_to_steps)"),
    "steps_per_eval_batch": Honoured("DistTrainer.eval_iteration (rank 0)"),
    "steps_per_eval_image": Honoured("DistTrainer.eval_iteration (rank 0)"),
    "steps_per_eval_all_images": Honoured("DistTrainer.eval_iteration (all ranks)"),
    "max_num_iterations": Honoured("DistTrainer.train"),
    "mixed_precision": Honoured("DistTrainer.train_iteration (autocast)"),
    "use_grad_scaler": Honoured("Trainer.__init__ (GradScaler), DistTrainer.train_iteration"),
    "save_only_latest_checkpoint": Honoured("DistTrainer.save_checkpoint"),
    "load_dir": Honoured("DistTrainer._load_checkpoint (checkpoint.resume_from)"),
    "load_step": Honoured("DistTrainer._load_checkpoint (checkpoint.resume_from)"),
    "load_config": Honoured("ns-train main, launch.main"),
    "load_checkpoint": Honoured("DistTrainer._load_checkpoint (checkpoint.resume_from)"),
    "log_gradients": Honoured("DistTrainer._gradient_norms (whole-model norms of the gradients stepped with)"),
    "gradient_accumulation_steps": Honoured("DistTrainer.train_iteration (zero_grad_some / step_some)"),
    "start_paused": Honoured("Trainer.__init__ (training_state), DistTrainer._agree_to_continue"),
    "schedule_unit": Honoured("DistTrainer.__init__"),
    "batch_optimizer_scaling": Honoured("scaling.scale_optimizers"),
    "verify_replicas_every": Honoured("DistTrainer.train"),
    "fused_adam": Honoured("scaling.fuse_adam"),
    "eval_all_images_at_end": Honoured("DistTrainer._after_train"),
    "control_every": Honoured("DistTrainer._agree_to_continue"),
    "auto_resume": Honoured("launch.resume_automatically, DistTrainer._train_steps"),
    "ranks_per_gpu": Honoured("rank.run_rank, DistTrainer.__init__ (devices.gpu_of); preflight.shared_gpu_refusal"),
    "profile_phases_every": Honoured("profiling.PHASES"),
}

MACHINE: Table = {
    "seed": Honoured("rank._train / ns-train train_loop (seed + rank), the model's shared seed"),
    "num_devices": Honoured("launch.launch / ns-train launch"),
    "num_machines": Honoured("launch.launch / ns-train launch"),
    "machine_rank": Honoured("launch.launch / ns-train launch"),
    "dist_url": Honoured("launch.launch / ns-train launch"),
    "device_type": Honoured("Trainer.__init__; gloo carries non-CUDA tensors through the host (comm)"),
}

LOGGING: Table = {
    "relative_log_dir": Honoured("Trainer.setup (event writers)"),
    "steps_per_log": Honoured("DistTrainer.train"),
    "max_buffer_size": Honoured("writer.setup_local_writer"),
    "local_writer": Honoured("writer.setup_local_writer (stock, whole)"),
    "profiler": Honoured("profiler.time_function on the step and eval methods; flushed by both launchers"),
}

VIEWER: Table = {
    name: Honoured("nerfstudio's viewer, on rank 0, reads it unchanged")
    for name in (
        "relative_log_filename",
        "websocket_port",
        "websocket_port_default",
        "websocket_host",
        "num_rays_per_chunk",
        "max_num_display_images",
        "image_format",
        "jpeg_quality",
        "make_share_url",
        "camera_frustum_scale",
        "default_composite_depth",
    )
}
VIEWER["quit_on_train_completion"] = Honoured("Trainer._after_train, DistTrainer._train_complete_viewer")

_DM = "--pipeline.datamanager."
PIPELINE: Table = {
    "_target": Honoured("the pipeline class built by config.setup"),
    "datamanager": Refused(  # its own table, and this one rule that needs the model's layout too
        when=lambda p: p.datamanager.balance_cameras is True and p.model.gaussian_layout == "sharded",
        message=f"{_DM}balance-cameras True: a sharded layout's ranks meet in every render's exchange, so a "
        "camera's time is the step's and there is nothing to deal; leave it unset or False",
    ),
    "model": Honoured("its own table"),
}

DATAMANAGER: Table = {
    "_target": Honoured("the datamanager class built by config.setup"),
    "data": Honoured("FullImageDatamanager.__init__"),
    "masks_on_gpu": _literal(f"{_DM}masks-on-gpu"),
    "images_on_gpu": _literal(f"{_DM}images-on-gpu"),
    "dataparser": Honoured("FullImageDatamanager.__init__ (stock dataparser, whole)"),
    "camera_res_scale_factor": Honoured("FullImageDatamanager.create_train_dataset / create_eval_dataset"),
    "eval_num_images_to_sample_from": _literal(f"{_DM}eval-num-images-to-sample-from"),
    "eval_num_times_to_repeat_images": _literal(f"{_DM}eval-num-times-to-repeat-images"),
    "eval_image_indices": _inert(f"{_DM}eval-image-indices", FULL_IMAGE),
    "cache_images": Honoured("ShardedFullImageDatamanager._load_subset / cached_train"),
    "cache_images_type": Honoured("ShardedFullImageDatamanager._load_subset"),
    "max_thread_workers": Honoured("ShardedFullImageDatamanager._load_subset"),
    "train_cameras_sampling_strategy": _literal(f"{_DM}train-cameras-sampling-strategy"),
    "train_cameras_sampling_seed": Honoured("CameraSchedule (the deal and every epoch's shuffles)"),
    "fps_reset_every": _literal(f"{_DM}fps-reset-every"),
    "cameras_per_rank": Honoured("CameraSchedule"),
    "data_shards": Honoured("CameraSchedule"),
    "balance_cameras": Honoured("CameraCosts / CameraSchedule (camera_costs.py)"),
}

_M = "--pipeline.model."
MODEL: Table = {
    "_target": Honoured("the model class built by config.setup"),
    "enable_collider": _literal(f"{_M}enable-collider"),
    "collider_params": _inert(f"{_M}collider-params", NO_RAYS),
    "loss_coefficients": _inert(f"{_M}loss-coefficients", "is not read by splatfacto (stock neither)"),
    "eval_num_rays_per_chunk": _literal(f"{_M}eval-num-rays-per-chunk"),
    "prompt": _literal(f"{_M}prompt"),
    "warmup_length": Honoured("SynchronizedDefaultStrategy (refine_start_iter)"),
    "refine_every": Honoured("SynchronizedDefaultStrategy"),
    "resolution_schedule": Honoured("SplatfactoModel._get_downscale_factor"),
    "background_color": Honoured("SplatfactoDistModel._training_backgrounds / _get_background_color"),
    "num_downscales": Honoured("SplatfactoModel._get_downscale_factor"),
    "cull_alpha_thresh": Honoured("SynchronizedDefaultStrategy (prune_opa)"),
    "cull_scale_thresh": Honoured("SynchronizedDefaultStrategy (prune_scale3d)"),
    "reset_alpha_every": Honoured("SynchronizedDefaultStrategy (reset_every)"),
    "densify_grad_thresh": Honoured("SynchronizedDefaultStrategy (grow_grad2d)"),
    "use_absgrad": Honoured("SynchronizedDefaultStrategy (absgrad), raster.rasterize"),
    "densify_size_thresh": Honoured("SynchronizedDefaultStrategy (grow_scale3d)"),
    "n_split_samples": _literal(f"{_M}n-split-samples"),
    "sh_degree_interval": Honoured("SplatfactoDistModel.get_outputs"),
    "cull_screen_size": Honoured("SynchronizedDefaultStrategy (prune_scale2d)"),
    "split_screen_size": Honoured("SynchronizedDefaultStrategy (grow_scale2d)"),
    "stop_screen_size_at": Honoured("SynchronizedDefaultStrategy (refine_scale2d_stop_iter)"),
    "random_init": Honoured("SplatfactoDistModel._initial_gaussians"),
    "num_random": Honoured("SplatfactoDistModel._initial_gaussians"),
    "random_scale": Honoured("SplatfactoDistModel._initial_gaussians"),
    "ssim_lambda": Honoured("SplatfactoDistModel.get_loss_dict"),
    "stop_split_at": Honoured("SynchronizedDefaultStrategy (refine_stop_iter)"),
    "sh_degree": Honoured("SplatfactoDistModel._initial_gaussians / get_outputs"),
    "use_scale_regularization": Honoured("SplatfactoDistModel.get_loss_dict"),
    "max_gauss_ratio": Honoured("SplatfactoDistModel.get_loss_dict"),
    "output_depth_during_training": Honoured("SplatfactoDistModel.get_outputs"),
    "rasterize_mode": Honoured("raster.rasterize (gsplat, or the reference's compensations)"),
    "camera_optimizer": Honoured("SplatfactoDistModel.populate_modules / _camera_to_worlds (stock, whole)"),
    "use_bilateral_grid": Honoured("SplatfactoDistModel.populate_modules / get_outputs / get_loss_dict"),
    "grid_shape": Honoured("SplatfactoDistModel.populate_modules"),
    "color_corrected_metrics": Honoured("SplatfactoDistModel.get_image_metrics_and_images"),
    "seed": Honoured("SplatfactoDistModel.seed"),
    "images_per_step": _literal(f"{_M}images-per-step"),
    "fused_ssim": Honoured("ssim.LossSSIM (SplatfactoDistModel.get_loss_dict)"),
    "gaussian_layout": Honoured("where the Gaussians live (replicated or sharded)"),
    "offload": Honoured("SplatfactoDistModel._host_groups_apart, the layouts' render (offload/working_set.py)"),
    "offload_adam": Refused(
        when=lambda m: m.offload_adam == "sparse" and not m.offload,
        message=f"{_M}offload-adam sparse updates the colours a render fetched from host memory; add "
        f"{_M}offload True (without offload every colour is on the GPU and Adam steps them all)",
    ),
    "pixel_ranges": Refused(
        when=lambda m: m.pixel_ranges is True and m.gaussian_layout != "sharded",
        message=f"{_M}pixel-ranges True: only the sharded layout renders images in pixel ranges (a replicated rank "
        f"holds the whole model and renders its own images whole); add {_M}gaussian-layout sharded",
    ),
}

SECTIONS: Tuple[Section, ...] = (
    Section((), TrainerConfig, TRAINER),
    Section(("machine",), MachineConfig, MACHINE),
    Section(("logging",), LoggingConfig, LOGGING),
    Section(("viewer",), ViewerConfig, VIEWER),
    Section(("pipeline",), DistPipelineConfig, PIPELINE),
    Section(("pipeline", "datamanager"), ShardedFullImageDatamanagerConfig, DATAMANAGER),
    Section(("pipeline", "model"), SplatfactoDistModelConfig, MODEL),
)


def section_of(config: Any, path: Tuple[str, ...]) -> Any:
    for name in path:
        config = getattr(config, name, None)
    return config


def refusal(config: Any) -> Optional[str]:
    """The first refused option of a splatfacto-dist run, as one line, or None.

    Runs of other methods (our launcher takes any) are not judged: their trainer config lacks the
    fields the trainer table reads, and a splatfacto-dist pipeline is what marks ours.
    """
    if not isinstance(section_of(config, ("pipeline",)), DistPipelineConfig):
        return None
    for section in SECTIONS:
        obj = section_of(config, section.path)
        if not isinstance(obj, section.config_type):
            continue
        for rule in section.table.values():
            if isinstance(rule, Refused) and rule.when(obj):
                return rule.line(obj)
    return None
