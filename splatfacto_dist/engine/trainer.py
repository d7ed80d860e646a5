"""DistTrainer: nerfstudio's Trainer with one training step that is correct on N ranks.

One step, top to bottom (`train` -> `train_iteration`):
  agree with rank 0 on pause/stop (and any rank on a preemption) and serve viewer renders
  (control.py, every `control_every` steps) -> this rank's cameras (dealt by measured cost,
  camera_costs.py) -> render + loss (the Gaussian layout brings the Gaussians each camera sees) ->
  backward -> one all-reduce of the groups the layout does not split -> optimizer step ->
  densification callbacks (statistics from every camera, id-keyed draws) -> log / eval / save
  (checkpoint.py).
Where the Gaussians live (replicated or sharded) is the model's `layout`; pre-flight checks are in
preflight.py.
"""

from __future__ import annotations

import functools
import os
import resource
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Type

import psutil
import torch
from nerfstudio.engine.callbacks import TrainingCallbackLocation
from nerfstudio.engine.trainer import TRAIN_INTERATION_OUTPUT, Trainer, TrainerConfig
from nerfstudio.utils import profiler, writer
from nerfstudio.utils.decorators import check_eval_enabled
from nerfstudio.utils.misc import step_check
from nerfstudio.utils.rich_utils import CONSOLE
from nerfstudio.utils.writer import EventName, TimeWriter

from splatfacto_dist import comm
from splatfacto_dist.engine import checkpoint, job_config
from splatfacto_dist.engine.control import PAUSE, PREEMPT, RUN, STOP, RankControl
from splatfacto_dist.engine.optimizer_step import live_parameters, squared_norms, step_optimizers
from splatfacto_dist.engine.scaling import ScalingRule
from splatfacto_dist.engine.viewer_renders import TrainLock
from splatfacto_dist.launching.devices import gpu_of
from splatfacto_dist.launching.memcap import ENV as MEMORY_CAP_ENV, apply_memory_cap, use_expandable_segments
from splatfacto_dist.launching.preflight import refuse_at_parse
from splatfacto_dist.launching.signals import PREEMPTED_EXIT, PREEMPTION
from splatfacto_dist.layouts.contract import named_tensors
from splatfacto_dist.reporting.profiling import PHASES, STARTUP
from splatfacto_dist.reporting.records import describe_layout, write_rank_record


@dataclass
class DistTrainerConfig(TrainerConfig):
    """Trainer settings for splatfacto-dist (plus all of nerfstudio's)."""

    _target: Type = field(default_factory=lambda: DistTrainer)
    schedule_unit: Literal["images", "steps"] = "images"
    """'images': --max-num-iterations and every schedule (densification, SH degree, LR decay, eval and
    save intervals) count images seen, and are divided by the images per step (GPUs x cameras per
    rank), so N GPUs learn what one GPU learns, in 1/N of the steps. 'steps': counts are steps."""
    batch_optimizer_scaling: ScalingRule = "sqrt"
    """How the Gaussians' Adam adapts to E images per step: 'sqrt' (Grendel-GS: lr x sqrt(E),
    eps / sqrt(E), betas^E), 'linear' (lr x E, eps / E, betas^E) or 'off'."""
    verify_replicas_every: int = 0
    """Every this many steps, compare checksums of all parameters and optimizer states across ranks
    and stop with an error naming the first tensor that differs (0: never)."""
    fused_adam: bool = True
    """Run every Adam as torch's fused kernel (same algorithm, far fewer kernel launches per step)."""
    eval_all_images_at_end: bool = False
    """After the last step, evaluate every test image (the final test metrics, logged like the
    periodic --steps-per-eval-all-images ones)."""
    control_every: int = 10
    """Every this many steps all ranks adopt rank 0's pause/stop state (the viewer lives on rank 0)."""
    ranks_per_gpu: int = 1
    """CUDA: this many ranks share each GPU, over gloo instead of NCCL, each with its own allocator
    and memory cap (SPLATFACTO_DIST_MEMORY_CAP_GIB), so an N-rank job's per-rank memory and its
    distributed code paths can be measured and tested on fewer GPUs. Speed figures of such a run
    are meaningless. Needs splatfacto-dist-train (ns-train's launcher gives each rank a GPU)."""
    auto_resume: bool = False
    """Continue from the newest complete checkpoint of this experiment (its newest run folder under
    <output-dir>/<experiment-name>/<method>/, in that folder), or start fresh when there is none;
    --max-num-iterations is then the whole run's budget, so the same command line serves every
    restart (SLURM requeue, torchrun --max-restarts) after a preemption (SIGTERM or SIGUSR1: the
    ranks save the last finished step and exit with code 75)."""
    profile_phases_every: int = 0
    """Every this many steps, time each phase of the step (data, render+loss, backward, all-reduce,
    optimizer, densify, other) and log the means as "Step Phases (ms)". Those steps pay a device
    sync per phase; the others are untouched (0: never). Pick a K out of step with the densification
    interval (e.g. a prime), or the sampled steps over-represent refinement."""

    def __post_init__(self) -> None:
        """Refuse impossible settings while the command line is parsed: before ns-train's own
        launcher spawns anything, and in one line instead of a traceback per rank."""
        refuse_at_parse(self)


def host_scalars(values: List[Any], *named: Dict[str, Any]) -> Tuple[Any, ...]:
    """`values` and the `named` dicts with their one-element tensors as Python numbers, read from the
    device in one copy: the writer would read each tensor by itself, every read a wait for the GPU."""
    flat = [*values, *(v for d in named for v in d.values())]
    scalars = [i for i, v in enumerate(flat) if isinstance(v, torch.Tensor) and v.numel() == 1]
    if scalars:
        device = flat[scalars[0]].device  # a CPU scalar among CUDA ones is moved, not refused by stack
        read = torch.stack([flat[i].detach().float().reshape(()).to(device) for i in scalars]).tolist()
        for i, number in zip(scalars, read):
            flat[i] = number
    out, at = [flat[: len(values)]], len(values)
    for d in named:
        out.append(dict(zip(d, flat[at : at + len(d)])))
        at += len(d)
    return tuple(out)


class DistTrainer(Trainer):
    """See the module docstring."""

    config: DistTrainerConfig

    def __init__(self, config: DistTrainerConfig, local_rank: int = 0, world_size: int = 1) -> None:
        cuda = config.machine.device_type == "cuda"
        self.memory_cap_gib: Optional[float] = None  # the capacity benchmark's stand-in for a smaller card
        if cuda:
            torch.cuda.set_device(gpu_of(local_rank, config))
            use_expandable_segments()  # before the first allocation: every later segment grows in place
            if apply_memory_cap() is not None:
                self.memory_cap_gib = float(os.environ[MEMORY_CAP_ENV])
            # ns-train turns cuDNN autotuning on when its module is imported; our launcher, torchrun
            # and SLURM jobs never import it. Without it cuDNN's heuristics pick slower kernels for
            # the SSIM loss's convolutions, a large share of each full-resolution step.
            torch.backends.cudnn.benchmark = True
        config = job_config.for_job(config, world_size)  # the user's config stays as typed (config.yml)
        super().__init__(config, local_rank=local_rank, world_size=world_size)
        self.train_lock = TrainLock()  # a viewer render waiting on every rank lets it go (engine/viewer_renders.py)
        if cuda:
            self.device = f"cuda:{gpu_of(local_rank, config)}"
        if config.ranks_per_gpu > 1 and comm.is_distributed() and torch.distributed.get_backend() == "nccl":
            raise RuntimeError(
                "--ranks-per-gpu needs splatfacto-dist-train: this launcher gives each rank a GPU (NCCL)"
            )
        self.images_per_step = job_config.images_per_step(config, world_size)
        PHASES.reset(config.profile_phases_every)
        self.preemption = PREEMPTION  # SIGTERM / SIGUSR1, noted from the rank's start (launching/signals.py)
        self.control = RankControl(
            config.control_every,
            torch.device(self.device),
            on_served=lambda step, ms: writer.put_scalar("Viewer Render Delay (ms)", ms, step),
        )

    def setup(self, test_mode: Literal["test", "val", "inference"] = "val") -> None:
        super().setup(test_mode)
        STARTUP.mark("setup")

    def train(self) -> None:
        """Train the model (see the module docstring for one step's path), then finish: the final
        checkpoint, and the viewer kept open if asked. However it ends, no viewer render is left
        waiting for ranks that no longer serve."""
        self.preemption.watch()  # already, where a launcher started this rank
        try:
            try:
                self._train_steps()
            finally:
                self.preemption.unwatch()  # after the loop a signal ends the process (a kept viewer too)
            self._report_rank()
            self._after_train()
        finally:
            self.pipeline.model.viewer_renders.close("training has stopped: no rank serves the viewer any more")

    def _train_steps(self) -> None:
        datamanager = self.pipeline.datamanager
        assert datamanager.train_dataset is not None, "Missing DatsetInputs"
        if comm.is_main() and hasattr(datamanager, "train_dataparser_outputs"):
            datamanager.train_dataparser_outputs.save_dataparser_transform(self.base_dir / "dataparser_transforms.json")
        self._init_viewer_state()
        self.stop_training = False
        rays_per_step = self.world_size * datamanager.get_train_rays_per_batch()  # loads this rank's images
        STARTUP.mark("images")
        end = self.config.max_num_iterations  # the whole run's budget when resuming by itself
        if not self.config.auto_resume:
            end += self._start_step
        if self._start_step >= end:
            self.step = self._start_step - 1  # the checkpoint's: nothing left to train
            if comm.is_main():
                CONSOLE.print(f"The run is complete: its checkpoint is at step {self.step} of {end}.")
        with TimeWriter(writer, EventName.TOTAL_TRAIN_TIME):
            for step in range(self._start_step, end):
                self.step = step
                agreed = self._agree_to_continue(step)
                if agreed == PREEMPT:
                    self._end_preempted(step - 1)
                if agreed != RUN:
                    break
                with self.train_lock:
                    with TimeWriter(writer, EventName.ITER_TRAIN_TIME, step=step) as train_t:
                        PHASES.begin_step(step)
                        self.pipeline.train()
                        for callback in self.callbacks:
                            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
                        loss, loss_dict, metrics_dict = self.train_iteration(step)
                        with PHASES.phase("densify"):
                            for callback in self.callbacks:
                                callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)
                        PHASES.end_step()
                if step == self._start_step:
                    STARTUP.mark("first step")
                if step > 1:
                    writer.put_time(
                        name=EventName.TRAIN_RAYS_PER_SEC,
                        duration=rays_per_step / max(0.001, train_t.duration),
                        step=step,
                        avg_over_steps=True,
                    )
                self._update_viewer_state(step)
                if step_check(step, self.config.logging.steps_per_log, run_at_zero=True):
                    (loss,), loss_dict, metrics_dict = host_scalars([loss], loss_dict, metrics_dict)
                    writer.put_scalar(name="Train Loss", scalar=loss, step=step)
                    writer.put_dict(name="Train Loss Dict", scalar_dict=loss_dict, step=step)
                    writer.put_dict(name="Train Metrics Dict", scalar_dict=metrics_dict, step=step)
                    writer.put_scalar(name="Images Seen", scalar=(step + 1) * self.images_per_step, step=step)
                    if PHASES.enabled:
                        writer.put_dict(name="Step Phases (ms)", scalar_dict=PHASES.per_step_ms(), step=step)
                    if torch.cuda.is_available():
                        memory_mb = PHASES.memory.peak_bytes() / (1024**2)
                        writer.put_scalar(name="GPU Memory (MB)", scalar=memory_mb, step=step)
                if datamanager.eval_dataset:
                    with self.train_lock:
                        self.eval_iteration(step)
                if step_check(step, self.config.verify_replicas_every):
                    self.verify_replicas(step)
                if step_check(step, self.config.steps_per_save):
                    self.save_checkpoint(step)
                writer.write_out_storage()

    def _report_rank(self) -> None:
        """Each rank's record (`records.py`) and its line: start-up (process start to the end of the
        first step, by stage), peak host and GPU memory, what the layout held."""
        created = psutil.Process().create_time()
        startup = STARTUP.marks[-1][1] - created if STARTUP.marks else 0.0
        host_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        gpu_mb = PHASES.memory.peak_bytes() / 2**20 if "cuda" in self.device else None
        model = self.pipeline.model
        local = len(model.gauss_params["means"])
        record = {
            "startup_s": startup,
            "startup_stages": STARTUP.stages(created),
            "peak_host_mb": host_mb,
            "peak_gpu_mb": gpu_mb,
            "memory_cap_gib": self.memory_cap_gib,
            "phase_memory_mb": PHASES.memory.phases,
            **model.layout.record(local),
        }
        write_rank_record(self.base_dir, comm.rank(), record)
        gpu = f", peak GPU {gpu_mb:.0f} MB" if gpu_mb is not None else ""
        CONSOLE.print(
            f"rank {comm.rank()}: start-up {startup:.1f} s ({STARTUP.breakdown(created)}), peak host {host_mb:.0f} MB"
            f"{gpu}{describe_layout(record)}",
            soft_wrap=True,
        )

    def _agree_to_continue(self, step: int) -> int:
        """Adopt rank 0's pause/stop state (or any rank's preemption) and serve its waiting viewer
        renders (control.py)."""
        renders = self.pipeline.model.viewer_renders
        return self.control.agree_to_continue(step, self._local_state, renders, self._serve_render)

    def _local_state(self) -> int:
        if self.preemption.requested:
            return PREEMPT
        return STOP if self.stop_training else PAUSE if self.training_state == "paused" else RUN

    def _end_preempted(self, last_step: int) -> None:
        """Every rank, once they agreed on a preemption: save the last step every rank finished (if
        this run finished one), wait until rank 0 has written it, and exit with PREEMPTED_EXIT."""
        written = self.save_checkpoint(last_step) if last_step >= self._start_step else None
        comm.barrier()  # no rank exits (and has its launcher stop the others) before the file is complete
        if comm.is_main():
            if written is not None:
                said = f"saved step {last_step} as {written}"
            elif last_step >= self._start_step:
                said = f"step {last_step} could not be saved (above); the newest checkpoint stands"
            else:
                said = "no step finished since the start, nothing to save"
            CONSOLE.print(
                f"preempted ({self.preemption.name}): {said}; the same command with --auto-resume True continues",
                soft_wrap=True,
            )
        raise SystemExit(PREEMPTED_EXIT)

    def _serve_render(self) -> None:
        with self.train_lock:
            self.pipeline.model.serve_render()

    def _trainable_groups(self) -> Dict[str, List[torch.nn.Parameter]]:
        """The live parameters of every optimizer (densification replaces them; the optimizers' lists
        are what gsplat keeps current), in the same order on every rank."""
        return {name: live_parameters(self.optimizers, name) for name in self.optimizers.optimizers}

    @profiler.time_function
    def train_iteration(self, step: int) -> TRAIN_INTERATION_OUTPUT:
        """Forward, backward, gradient all-reduce and optimizer step for this rank's cameras."""
        accumulation = self.gradient_accumulation_steps
        groups = list(self.optimizers.parameters.keys())
        self.optimizers.zero_grad_some([g for g in groups if step % accumulation[g] == 0])
        device_type = "cpu" if self.device.split(":")[0] == "mps" else self.device.split(":")[0]
        with self.pipeline.datamanager.timing(step, torch.device(self.device)):  # the cameras' cost, to deal them by
            with torch.autocast(device_type=device_type, enabled=self.mixed_precision):
                _, loss_dict, metrics_dict = self.pipeline.get_train_loss_dict(step=step)
                loss = functools.reduce(torch.add, loss_dict.values())
            with PHASES.phase("backward"):
                self.grad_scaler.scale(loss).backward()  # type: ignore[union-attr]
        with PHASES.phase("all-reduce"):
            split = self.pipeline.model.layout.split_groups  # their gradients met in the render's exchange
            comm.average_gradients(
                [p for name, ps in self._trainable_groups().items() if name not in split for p in ps]
            )
        with PHASES.phase("optimizer"):
            needs_step = [g for g in groups if step % accumulation[g] == accumulation[g] - 1]
            step_optimizers(self.optimizers, self.grad_scaler, needs_step, split)
            scale = self.grad_scaler.get_scale()
            self.grad_scaler.update()
            if scale <= self.grad_scaler.get_scale():
                self.optimizers.scheduler_step_all(step)
        if self.config.log_gradients:
            metrics_dict.update(self._gradient_norms())
        return loss, loss_dict, metrics_dict  # type: ignore[return-value]

    def _gradient_norms(self) -> Dict[str, torch.Tensor]:
        """Stock --log-gradients metrics, read like stock after the optimizer step, of the gradients
        every rank stepped with, over the whole model (a Gaussian shard's are summed over the
        shards). Every rank calls it."""
        named = {name: [p.grad] for name, p in self.pipeline.model.named_parameters() if p.grad is not None}
        by_group = {name.split(".")[1] if name.startswith("gauss_params.") else name: name for name in named}
        split = self.pipeline.model.layout.split_groups
        squared = squared_norms({group: named[name] for group, name in by_group.items()}, split)
        norms = {f"Gradients/{by_group[group]}": value.sqrt() for group, value in squared.items()}
        norms["Gradients/Total"] = functools.reduce(torch.add, norms.values(), torch.zeros((), device=self.device))
        return norms

    @check_eval_enabled
    @profiler.time_function
    def eval_iteration(self, step: int) -> None:
        """Single-image evals on rank 0 (the other ranks serve its render when sharded); the
        all-images eval is shared by every rank."""
        if step_check(step, self.config.steps_per_eval_batch):
            self._on_main(lambda: self._log_eval_batch(step))
        if step_check(step, self.config.steps_per_eval_image):
            self._on_main(lambda: self._log_eval_image(step))
        if step_check(step, self.config.steps_per_eval_all_images):
            metrics_dict = self.pipeline.get_average_eval_image_metrics(step=step)
            writer.put_dict(name="Eval Images Metrics Dict (all images)", scalar_dict=metrics_dict, step=step)

    def _on_main(self, render_and_log: Callable[[], None]) -> None:
        """Run a one-render evaluation on rank 0; a sharded model's other ranks take part in its render."""
        if comm.is_main():
            render_and_log()
        elif self.pipeline.model.layout.sharded:
            self.pipeline.model.serve_render()

    def _log_eval_batch(self, step: int) -> None:
        _, eval_loss_dict, eval_metrics_dict = self.pipeline.get_eval_loss_dict(step=step)
        writer.put_scalar(name="Eval Loss", scalar=functools.reduce(torch.add, eval_loss_dict.values()), step=step)
        writer.put_dict(name="Eval Loss Dict", scalar_dict=eval_loss_dict, step=step)
        writer.put_dict(name="Eval Metrics Dict", scalar_dict=eval_metrics_dict, step=step)

    def _log_eval_image(self, step: int) -> None:
        metrics_dict, images_dict = self.pipeline.get_eval_image_metrics_and_images(step=step)
        writer.put_dict(name="Eval Images Metrics", scalar_dict=metrics_dict, step=step)
        for image_name, image in images_dict.items():
            writer.put_image(name="Eval Images/" + image_name, image=image, step=step)

    def _after_train(self) -> None:
        if self.config.eval_all_images_at_end:
            eval_all_images_at_end(self)
        super()._after_train()

    def verify_replicas(self, step: int) -> None:
        """Stop with `ReplicaMismatch` if anything replicated differs between ranks, or the
        Gaussians do not add up to the count every rank expects."""
        model = self.pipeline.model
        try:
            check_optimizer_rows(model, self.optimizers)
            comm.verify_replicas(
                named_tensors(list(model.named_parameters()), self.optimizers.optimizers, model.layout.split_groups)
            )
            model.layout.verify_total(model.num_points)
        except comm.ReplicaMismatch as err:
            raise comm.ReplicaMismatch(f"step {step}: {err}") from None

    def save_checkpoint(self, step: int) -> Optional[Path]:
        """Every rank takes part (a sharded model is gathered); rank 0 writes (checkpoint.py). A save
        that fails (disk full, unwritable; checked against the free space first) leaves the previous
        checkpoints and no temporary file, and says so in one line: training goes on after a
        periodic save, the final one (after the last step) stops the run with that line. Returns, on
        rank 0, the file written (None where the save failed, and on the other ranks)."""
        path = checkpoint.checkpoint_path(self.checkpoint_dir, step)
        extra = {"images_per_step": self.images_per_step, "scalers": self.grad_scaler.state_dict()}
        try:
            written = checkpoint.save(path, step, self.pipeline, self.optimizers, self.pipeline.model.layout, extra)
        except checkpoint.CheckpointError as err:
            if self.training_state == "completed":  # nerfstudio's _after_train: the last save
                raise
            CONSOLE.print(f"[bold red]error:[/bold red] {err}; training goes on", soft_wrap=True)
            return None
        if written is not None and self.config.save_only_latest_checkpoint:
            for old in self.checkpoint_dir.glob("*.ckpt"):
                if old != written:
                    old.unlink()
        return written

    def _load_checkpoint(self) -> None:
        """Resume from the checkpoint the config names, if any (checkpoint.py): the whole model cut to
        this rank's rows, the same images seen, and this run's optimizer settings. `--load-dir`
        resumes from its newest complete checkpoint; each newer one that does not load is named
        in one line (rank 0) and skipped."""
        config = self.config

        def say(line: str) -> None:
            if comm.is_main():  # every rank skips the same files; one line per job
                CONSOLE.print(f"[bold yellow]warning:[/bold yellow] {line}", soft_wrap=True)

        found = checkpoint.resume_from(config.load_dir, config.load_step, config.load_checkpoint, say)
        if found is None:
            if comm.is_main():  # one line per job, as nerfstudio's own notes are
                CONSOLE.print("No Nerfstudio checkpoint to load, so training from scratch.")
            return
        path, loaded = found
        self._start_step = checkpoint.start_step(loaded, self.images_per_step, config.schedule_unit == "images")
        model = self.pipeline.model
        pipeline_state, own = checkpoint.own_rows(loaded, model.layout)
        model.refuse_unless_it_fits(own.params)  # a checkpoint of another size, or another GPU count
        self.pipeline.load_pipeline(pipeline_state, loaded["step"])
        model.load_strategy_state(own.ids, own.statistics)
        self.optimizers = self.setup_optimizers()  # around the loaded Parameters
        for name, saved in checkpoint.with_moments(loaded["optimizers"], own.moments).items():
            checkpoint.load_moments(self.optimizers.optimizers[name], saved)
        if config.load_scheduler:
            checkpoint.continue_schedules(self.optimizers.schedulers, self._start_step)
        self.grad_scaler.load_state_dict(loaded["scalers"])
        self.pipeline.datamanager.load_cost_state(loaded.get("camera_costs"))
        if comm.is_main():
            CONSOLE.print(
                f"Done loading Nerfstudio checkpoint from {path} (images seen: "
                f"{self._start_step * self.images_per_step}, continuing at step {self._start_step})"
            )

    def _train_complete_viewer(self) -> None:
        """Keep the viewer open after training (until ctrl+c), holding only the ranks it needs.

        Replicated, rank 0 holds every Gaussian and serves the viewer alone: every rank leaving the
        training function enters one final barrier (nerfstudio's launcher and ours both do); rank 0
        enters it before it parks in the viewer loop, so the others exit. Sharded, no rank holds the
        whole model (it may not fit on one GPU), so every rank stays and serves the viewer's renders
        on its training thread, as during training.
        """
        layout = self.pipeline.model.layout
        if layout.sharded and comm.is_distributed():
            if not self.config.is_viewer_enabled():
                return
            if self.viewer_state is not None:
                self.viewer_state.training_complete()
                CONSOLE.print("Use ctrl+c to quit", justify="center")
            self.control.serve_until_stopped(self._local_state, self.pipeline.model.viewer_renders, self._serve_render)
            return
        if self.viewer_state is None:
            return
        comm.barrier()
        super()._train_complete_viewer()


def check_optimizer_rows(model: torch.nn.Module, optimizers) -> None:
    """Raise `ReplicaMismatch` unless every Gaussian group's Adam moments are this rank's own: of
    its parameter's shape and device (a checkpoint once left rank 0 the whole model's moments)."""
    for name, param in model.gauss_params.items():
        optimizer = optimizers.optimizers.get(name)
        if optimizer is None:
            continue
        if not any(p is param for p in live_parameters(optimizers, name)):
            raise comm.ReplicaMismatch(f"rank {comm.rank()}: the optimizer of {name} steps another tensor")
        for key, value in optimizer.state.get(param, {}).items():
            if key != "step" and (value.shape != param.shape or value.device != param.device):
                raise comm.ReplicaMismatch(
                    f"rank {comm.rank()}: Adam's {key} of {name} is {tuple(value.shape)} on {value.device}, "
                    f"its parameter {tuple(param.shape)} on {param.device}"
                )


def eval_all_images_at_end(trainer: Trainer) -> None:
    """Log the metrics over all test images at the trainer's last step, unless that step's
    periodic evaluation already did. Distributed, every rank must call it."""
    if trainer.pipeline.datamanager.eval_dataset is None:
        return
    if step_check(trainer.step, trainer.config.steps_per_eval_all_images):
        return
    metrics_dict = trainer.pipeline.get_average_eval_image_metrics(step=trainer.step)
    writer.put_dict(name="Eval Images Metrics Dict (all images)", scalar_dict=metrics_dict, step=trainer.step)
    writer.write_out_storage()
