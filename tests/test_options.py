"""Every config field of a splatfacto-dist run is honoured or refused in one line (options.py)."""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from types import SimpleNamespace
from typing import Any, Callable, Dict, Tuple

import pytest
import torch
from conftest import TINY, build_model, tool
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.optimizers import RAdamOptimizerConfig
from nerfstudio.engine.schedulers import (
    CosineDecaySchedulerConfig,
    ExponentialDecaySchedulerConfig,
    MultiStepSchedulerConfig,
    SchedulerConfig,
)
from nerfstudio.engine.trainer import TrainerConfig

from splatfacto_dist.cli import refusal_before_parsing
from splatfacto_dist.data.datamanager import ShardedFullImageDatamanagerConfig
from splatfacto_dist.engine.pipeline import DistPipeline, DistPipelineConfig
from splatfacto_dist.engine.scaling import convert_images_to_steps, scale_optimizers
from splatfacto_dist.engine.trainer import DistTrainer, DistTrainerConfig
from splatfacto_dist.launching import preflight, rank
from splatfacto_dist.launching.options import SECTIONS, Honoured, Refused, refusal, section_of
from splatfacto_dist.launching.refusals import LITERAL
from splatfacto_dist.layouts.replicated import ReplicatedLayout
from splatfacto_dist.method import splatfacto_dist_config
from splatfacto_dist.models.model import SplatfactoDistModelConfig

SECTION_PATHS = {section.path for section in SECTIONS}


@pytest.mark.parametrize("section", SECTIONS, ids=lambda s: ".".join(s.path) or "trainer")
def test_every_field_is_honoured_or_refused_and_every_entry_is_a_field(section):
    config = section_of(splatfacto_dist_config(), section.path)
    assert isinstance(config, section.config_type)
    fields = {f.name for f in dataclasses.fields(config)}
    assert fields - section.table.keys() == set(), "fields nobody decided to honour or refuse"
    assert section.table.keys() - fields == set(), "table entries that are no field"
    for name in fields:
        if dataclasses.is_dataclass(getattr(config, name)) and (*section.path, name) not in SECTION_PATHS:
            assert isinstance(section.table[name], Honoured), f"{name}: a nested config needs its own table"


def _optimizer(group: str, optimizer: Any) -> Callable[[Any], None]:
    return lambda c: c.optimizers[group].__setitem__("optimizer", optimizer)


def _scheduler(group: str, scheduler: Any) -> Callable[[Any], None]:
    return lambda c: c.optimizers[group].__setitem__("scheduler", scheduler)


def _set(path: str, value: Any) -> Callable[[Any], None]:
    *parents, name = path.split(".")
    return lambda c: setattr(section_of(c, tuple(parents)), name, value)


# (section path, field) -> a change that must be refused, and a word of its line.
REFUSED: Dict[Tuple[Tuple[str, ...], str], Tuple[Callable[[Any], None], str]] = {
    ((), "optimizers"): (_optimizer("means", RAdamOptimizerConfig(lr=1e-4)), "is not Adam"),
    ((), "prompt"): (_set("prompt", "a fox"), "--prompt"),
    (("pipeline", "datamanager"), "masks_on_gpu"): (_set("pipeline.datamanager.masks_on_gpu", True), "masks-on"),
    (("pipeline", "datamanager"), "images_on_gpu"): (_set("pipeline.datamanager.images_on_gpu", True), "images-on"),
    (("pipeline", "datamanager"), "eval_num_images_to_sample_from"): (
        _set("pipeline.datamanager.eval_num_images_to_sample_from", 40),
        "eval-num-images",
    ),
    (("pipeline", "datamanager"), "eval_num_times_to_repeat_images"): (
        _set("pipeline.datamanager.eval_num_times_to_repeat_images", 100),
        "eval-num-times",
    ),
    (("pipeline", "datamanager"), "eval_image_indices"): (
        _set("pipeline.datamanager.eval_image_indices", None),
        "eval-image-indices",
    ),
    (("pipeline", "datamanager"), "train_cameras_sampling_strategy"): (
        _set("pipeline.datamanager.train_cameras_sampling_strategy", "fps"),
        "use random",
    ),
    (("pipeline", "datamanager"), "fps_reset_every"): (_set("pipeline.datamanager.fps_reset_every", 10), "fps"),
    (("pipeline", "model"), "enable_collider"): (_set("pipeline.model.enable_collider", False), "collider"),
    (("pipeline", "model"), "collider_params"): (_set("pipeline.model.collider_params", {"near_plane": 1.0}), "ray"),
    (("pipeline", "model"), "loss_coefficients"): (_set("pipeline.model.loss_coefficients", {"rgb": 2.0}), "loss"),
    (("pipeline", "model"), "eval_num_rays_per_chunk"): (_set("pipeline.model.eval_num_rays_per_chunk", 8), "chunk"),
    (("pipeline", "model"), "prompt"): (_set("pipeline.model.prompt", "a fox"), "prompt"),
    (("pipeline", "model"), "n_split_samples"): (_set("pipeline.model.n_split_samples", 3), "in two"),
    (("pipeline", "model"), "images_per_step"): (_set("pipeline.model.images_per_step", 4), "set by the trainer"),
    (("pipeline", "model"), "pixel_ranges"): (_set("pipeline.model.pixel_ranges", True), "only the sharded layout"),
    (("pipeline", "model"), "offload_adam"): (
        _set("pipeline.model.offload_adam", "sparse"),
        "add --pipeline.model.offload True",
    ),
    (("pipeline",), "datamanager"): (
        lambda c: (
            _set("pipeline.datamanager.balance_cameras", True)(c),
            _set("pipeline.model.gaussian_layout", "sharded")(c),
        ),
        "nothing to deal",
    ),
}


def test_every_refusal_has_a_case_here():
    refused = {(s.path, name) for s in SECTIONS for name, rule in s.table.items() if isinstance(rule, Refused)}
    assert refused == REFUSED.keys()


def test_the_default_config_is_refused_nothing():
    assert refusal(splatfacto_dist_config()) is None


def test_other_methods_are_not_judged():
    assert refusal(TrainerConfig(prompt="a fox")) is None


@pytest.mark.parametrize("key", REFUSED, ids=lambda k: ".".join((*k[0], k[1])))
def test_each_refusal_triggers_in_one_line(key):
    change, word = REFUSED[key]
    config = splatfacto_dist_config()
    change(config)
    line = refusal(config)
    assert line is not None and word in line and "\n" not in line


# refusals.LITERAL's flags -> a value the parsed config refuses, as typed and as parsed.
NON_DEFAULT: Dict[str, Tuple[str, Any]] = {
    "--prompt": ("a fox", "a fox"),
    "--pipeline.datamanager.masks-on-gpu": ("True", True),
    "--pipeline.datamanager.images-on-gpu": ("True", True),
    "--pipeline.datamanager.eval-num-images-to-sample-from": ("40", 40),
    "--pipeline.datamanager.eval-num-times-to-repeat-images": ("100", 100),
    "--pipeline.datamanager.train-cameras-sampling-strategy": ("fps", "fps"),
    "--pipeline.datamanager.fps-reset-every": ("10", 10),
    "--pipeline.model.enable-collider": ("False", False),
    "--pipeline.model.eval-num-rays-per-chunk": ("8", 8),
    "--pipeline.model.prompt": ("a fox", "a fox"),
    "--pipeline.model.n-split-samples": ("3", 3),
    "--pipeline.model.images-per-step": ("4", 4),
}
LITERAL_IDS = [entry.flag for entry in LITERAL]


def test_every_literal_refusal_has_a_case_here_in_table_order():
    assert NON_DEFAULT.keys() == {entry.flag for entry in LITERAL}
    paths = [section.path for section in SECTIONS]

    def position(entry):
        section = SECTIONS[paths.index(entry.path)]
        return paths.index(entry.path), list(section.table).index(entry.field)

    assert sorted(LITERAL, key=position) == list(LITERAL)  # both checks name the same option first


@pytest.mark.parametrize("entry", LITERAL, ids=LITERAL_IDS)
def test_a_literal_refusals_default_is_its_fields_dataclass_default(entry):
    """A future nerfstudio that changes a default fails here, not in a refusal of the new default."""
    (section,) = [s for s in SECTIONS if s.path == entry.path]
    spec = {f.name: f for f in dataclasses.fields(section.config_type)}[entry.field]
    default = spec.default if spec.default_factory is dataclasses.MISSING else spec.default_factory()
    assert (type(entry.default), entry.default) == (type(default), default)
    assert isinstance(section.table[entry.field], Refused)


@pytest.mark.parametrize("entry", LITERAL, ids=LITERAL_IDS)
def test_a_literal_refusal_reads_the_same_from_the_raw_command_line_and_the_parsed_config(entry):
    raw, value = NON_DEFAULT[entry.flag]
    config = splatfacto_dist_config()
    setattr(section_of(config, entry.path), entry.field, value)
    parsed = refusal(config)
    assert parsed is not None
    dashed, underscored = entry.spellings
    for method in ("splatfacto-dist", "splatfacto-dist-big"):
        assert refusal_before_parsing([method, "--vis", "viewer", dashed, raw, "colmap"], {}, 0) == parsed
    assert refusal_before_parsing(["splatfacto-dist", f"{underscored}={raw}"], {}, 0) == parsed


@pytest.mark.parametrize("entry", LITERAL, ids=LITERAL_IDS)
def test_the_raw_command_line_refuses_no_value_the_parse_might_take(entry):
    raw, _ = NON_DEFAULT[entry.flag]
    passed = [
        ["splatfacto-dist", entry.flag, str(entry.default)],  # the default, given explicitly
        ["splatfacto-dist", entry.flag, "--vis", "viewer"],  # no value: tyro says so
        ["splatfacto", entry.flag, raw],  # another method's options are its own
        ["splatfacto-dist", entry.flag, raw, "--help"],
        ["splatfacto-dist", "--load-config", "c.yml", entry.flag, raw],
    ]
    if not isinstance(entry.default, (str, type(None))):
        passed.append(["splatfacto-dist", entry.flag, "maybe"])  # not a value of its type: tyro says so
    for argv in passed:
        assert refusal_before_parsing(argv, {}, 0) is None, argv


def test_a_later_value_overrides_an_earlier_one_on_the_raw_command_line_as_in_tyro():
    dashed, underscored = "--pipeline.model.enable-collider", "--pipeline.model.enable_collider"
    assert refusal_before_parsing(["splatfacto-dist", dashed, "True", underscored, "False"], {}, 0)
    assert refusal_before_parsing(["splatfacto-dist", dashed, "False", underscored, "True"], {}, 0) is None


@pytest.mark.parametrize(
    "change",
    [
        _scheduler("scales", SchedulerConfig()),  # a scheduler scaling.py cannot convert
        _scheduler("camera_opt", SchedulerConfig()),
    ],
)
def test_unconvertible_schedulers_are_refused_unless_counted_in_steps_and_unscaled(change):
    config = splatfacto_dist_config()
    change(config)
    assert "scheduler of" in str(refusal(config))
    config.schedule_unit = "steps"
    config.batch_optimizer_scaling = "off"
    assert refusal(config) is None


def test_non_adam_gaussian_optimizer_is_honoured_without_batch_scaling():
    config = splatfacto_dist_config()
    radam = RAdamOptimizerConfig(lr=1e-4)
    config.optimizers["means"]["optimizer"] = radam
    config.batch_optimizer_scaling = "off"
    assert refusal(config) is None
    scale_optimizers(config, 4, "off")
    assert config.optimizers["means"]["optimizer"] is radam
    with pytest.raises(ValueError, match="not Adam"):
        scale_optimizers(config, 4, "sqrt")  # never replaced silently, even past the check


def test_multi_step_and_cosine_schedules_count_images():
    config = splatfacto_dist_config()
    config.optimizers["camera_opt"]["scheduler"] = MultiStepSchedulerConfig(max_steps=3000, milestones=(1000, 2000))
    config.optimizers["bilateral_grid"]["scheduler"] = CosineDecaySchedulerConfig(warm_up_end=400, max_steps=3000)
    config.optimizers["means"]["scheduler"] = ExponentialDecaySchedulerConfig(
        lr_pre_warmup=1e-6, lr_final=1e-5, warmup_steps=100, max_steps=3000
    )
    assert refusal(config) is None
    convert_images_to_steps(config, 4)
    scale_optimizers(config, 4, "sqrt")
    multi, cosine, exponential = (config.optimizers[g]["scheduler"] for g in ("camera_opt", "bilateral_grid", "means"))
    assert (multi.max_steps, multi.milestones) == (750, (250, 500))
    assert (cosine.warm_up_end, cosine.max_steps) == (100, 750)
    assert (exponential.warmup_steps, exponential.max_steps) == (25, 750)
    # Exponential decay's rates are absolute, unlike the others' factors: they follow the lr.
    assert exponential.lr_pre_warmup == pytest.approx(2e-6) and exponential.lr_final == pytest.approx(2e-5)


def test_refused_while_the_config_is_built(capsys):
    with pytest.raises(SystemExit) as exit_info:
        DistTrainerConfig(
            method_name="splatfacto-dist",
            pipeline=DistPipelineConfig(
                datamanager=ShardedFullImageDatamanagerConfig(train_cameras_sampling_strategy="fps"),
                model=SplatfactoDistModelConfig(),
            ),
        )
    assert exit_info.value.code == 2
    assert [line for line in capsys.readouterr().out.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize(
    "device, per_gpu, argv0, refused",
    [
        ("cuda", 2, "splatfacto-dist-train", None),
        ("cuda", 0, "splatfacto-dist-train", "--ranks-per-gpu 0: give a positive number"),
        ("cpu", 2, "splatfacto-dist-train", "--ranks-per-gpu is for CUDA ranks"),
        ("cuda", 2, "/usr/bin/ns-train", "--ranks-per-gpu needs splatfacto-dist-train"),
    ],
)
def test_ranks_sharing_a_gpu_are_an_explicit_cuda_opt_in_of_our_launcher(monkeypatch, device, per_gpu, argv0, refused):
    monkeypatch.setattr(sys, "argv", [argv0])
    config = splatfacto_dist_config()
    config.machine.device_type = device
    config.ranks_per_gpu = per_gpu
    error = preflight.shared_gpu_refusal(config)
    assert error is None if refused is None else error.startswith(refused), error


def test_launcher_refuses_a_loaded_config(scene):
    """A --load-config is read from YAML, which builds no dataclass: the launcher checks it again."""
    config = splatfacto_dist_config()
    config.machine.device_type = "cpu"
    config.pipeline.datamanager.data = scene
    config.pipeline.datamanager.train_cameras_sampling_strategy = "fps"
    job = rank.Job(world_size=1, num_devices_per_machine=1, machine_rank=0, init_method="tcp://127.0.0.1:1")
    with pytest.raises(preflight.LaunchError) as err:
        preflight.check_job(config, job)
    assert "use random" in err.value.message


def test_logged_gradient_norms_are_stock_names_of_the_reduced_gradients():
    model = torch.nn.Linear(2, 1)
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    model.layout = ReplicatedLayout()
    trainer = SimpleNamespace(pipeline=SimpleNamespace(model=model), device="cpu")
    norms = DistTrainer._gradient_norms(trainer)  # type: ignore[arg-type]
    assert norms.keys() == {"Gradients/weight", "Gradients/Total"}
    assert float(norms["Gradients/weight"]) == 5.0 and float(norms["Gradients/Total"]) == 5.0


def test_each_image_of_a_step_gets_its_own_background_row():
    model = build_model(random_init=False)
    model.train()
    model.step = 7
    whole = model._training_backgrounds(3)
    assert len({tuple(row.tolist()) for row in whole}) == 3
    assert torch.equal(model._training_backgrounds(2, [0, 2], 3), whole[[0, 2]])
    assert torch.equal(model._training_backgrounds(1, [1], 3), whole[[1]])


def test_mixed_sizes_pass_each_group_its_batch_positions():
    """The pipeline tells the model where each size group's images sit in the rank's batch."""
    seen = []

    class Model:
        info: Dict[str, Any] = {}

        def __call__(self, cameras):
            seen.append(dict(cameras.metadata))
            return {}

        def get_metrics_dict(self, outputs, batch):
            return {}

        def get_loss_dict(self, outputs, batch, metrics):
            return {"main_loss": torch.tensor(1.0)}

    sizes = [(48, 64), (36, 48), (48, 64)]
    cameras = Cameras(
        camera_to_worlds=torch.eye(4)[:3].expand(3, 3, 4),
        fx=50.0,
        fy=50.0,
        cx=torch.tensor([[32.0], [24.0], [32.0]]),
        cy=torch.tensor([[24.0], [18.0], [24.0]]),
        width=torch.tensor([[w] for _, w in sizes]),
        height=torch.tensor([[h] for h, _ in sizes]),
    )
    cameras.metadata = {"cam_idx": [5, 6, 7]}
    pipeline = DistPipeline.__new__(DistPipeline)
    torch.nn.Module.__init__(pipeline)
    pipeline._model = Model()
    pipeline._loss_by_image_size(cameras, {"image": [torch.zeros(h, w, 3) for h, w in sizes]})
    assert [(m["batch_positions"], m["batch_size"], m["cam_idx"]) for m in seen] == [([0, 2], 3, [5, 7]), ([1], 3, 6)]


@pytest.mark.parametrize("launcher", ["splatfacto-dist-train", "ns-train"])
def test_fps_sampling_is_refused_before_anything_starts(tmp_path, scene, launcher):
    command = [sys.executable, "-m", "splatfacto_dist.cli"] if launcher == "splatfacto-dist-train" else tool("ns-train")
    args = ["--output-dir", str(tmp_path), "--pipeline.datamanager.train-cameras-sampling-strategy", "fps"]
    proc = subprocess.run(
        [*command, "splatfacto-dist", *TINY, *args, "colmap", "--data", str(scene)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = [line for line in proc.stdout.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "train-cameras-sampling-strategy fps" in errors[0], proc.stdout[-2000:]
    assert not list(tmp_path.iterdir())  # no config saved, no run directory: nothing started


def test_the_job_config_resolves_a_copy_and_leaves_the_users_config_as_typed():
    from splatfacto_dist.engine.job_config import for_job

    config = splatfacto_dist_config()
    config.pipeline.datamanager.cameras_per_rank = 2
    typed = copy.deepcopy(config)
    job = for_job(config, world_size=2)
    assert config == typed  # config.yml, resume and ns-export read what the user typed
    assert job.max_num_iterations == round(typed.max_num_iterations / 4)
    assert job.pipeline.model.images_per_step == 4 and job.pipeline.model.seed == typed.machine.seed
    assert job.pipeline.datamanager.balance_cameras is True  # replicated: a camera's time is its own
    means = job.optimizers["means"]["optimizer"]
    assert means.fused and means.lr == pytest.approx(typed.optimizers["means"]["optimizer"].lr * 2)
