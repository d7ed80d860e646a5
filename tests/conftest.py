"""Shared fixtures and helpers: the embedded scene, the training command line every test builds
from one place, and what several test modules compare (a short schedule, a run's renders)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import List, Optional, Sequence

import pytest
import torch

from splatfacto_dist.launching.command import CLI, METHOD, train_argv
from splatfacto_dist.scenes.scene import generate_scene

BIN = Path(sys.executable).parent


def tool(name: str) -> List[str]:
    """A console script of this environment, as a command: beside the interpreter (a venv), on PATH, or,
    where an install wrote no scripts (the GPU kit's `pip --target` keeps an existing bin/), its entry
    point run by this interpreter, as the script would."""
    beside = BIN / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found:
        return [found]
    (point,) = entry_points(group="console_scripts", name=name) or [None]
    assert point, f"{name} is not installed"
    run = f"import sys; sys.argv[0] = {name!r}; from {point.module} import {point.attr}; sys.exit({point.attr}())"
    return [sys.executable, "-c", run]


# A tiny but complete schedule: refines every 16 images after 32, no screen-size splitting
# (every Gaussian is "large" in a 64x48 image), nothing written that a test does not read.
TINY_DENSIFICATION = [
    "--pipeline.model.warmup-length",
    "32",
    "--pipeline.model.refine-every",
    "16",
    "--pipeline.model.stop-screen-size-at",
    "0",
    "--pipeline.model.sh-degree-interval",
    "64",
]
TINY = [
    "--vis",
    "tensorboard",
    "--machine.device-type",
    "cpu",
    "--logging.steps-per-log",
    "1",
    "--steps-per-eval-image",
    "0",
    "--steps-per-eval-all-images",
    "0",
    "--steps-per-save",
    "100000",
    *TINY_DENSIFICATION,
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("scene"), n_views=24, width=64, height=48)


# Counted in steps, no optimizer rescaling: 48 steps span a refine (step 32: splits with random samples,
# duplicates, prunes) and opacity resets (steps 0 and 40); replicas compared every 8 steps. Cameras
# in the seeded order: dealt by measured time (the default on several ranks), two runs would render
# other cameras after their first epoch, and the runs compared here must render the same ones.
SCHEDULE = [
    "--pipeline.datamanager.balance-cameras",
    "False",
    "--schedule-unit",
    "steps",
    "--batch-optimizer-scaling",
    "off",
    "--max-num-iterations",
    "48",
    "--pipeline.model.warmup-length",
    "8",
    "--pipeline.model.refine-every",
    "8",
    "--pipeline.model.reset-alpha-every",
    "5",
    "--verify-replicas-every",
    "8",
]


def train_command(
    out: Path,
    scene: Path,
    nprocs: Optional[int],
    args: Sequence[str] = (),
    dataparser: str = "colmap",
    launcher: Sequence[str] = CLI,
) -> List[str]:
    """A splatfacto-dist training command line on TINY's schedule, writing to `out/*/splatfacto-dist/run`.

    `nprocs` None leaves the process count to an external launcher (torchrun, SLURM); `args` come after
    TINY's and so override them; an empty `launcher` gives the arguments tyro parses."""
    processes = [] if nprocs is None else ["--machine.num-devices", str(nprocs)]
    options = [*TINY, *processes, "--output-dir", str(out), "--timestamp", "run", *args]
    return train_argv(launcher, METHOD, options, [dataparser], scene)


def train(out: Path, scene: Path, nprocs: int, args: List[str], timeout: int = 900) -> Path:
    """Run `splatfacto-dist-train` in `nprocs` gloo processes; return the run directory.

    One CPU thread per rank: threaded CPU reductions round differently from run to run, and
    comparisons of two runs must not depend on that (however many cores the machine has)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        train_command(out, scene, nprocs, args), capture_output=True, text=True, timeout=timeout, env=env
    )
    log = proc.stdout + proc.stderr
    (out / "train.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "train.log").write_text(log)
    assert proc.returncode == 0, log[-4000:]
    return next(out.glob("*/splatfacto-dist/run"))


def renders(run: Path) -> tuple:
    """Gaussian count and the eval-view images of a finished run, through nerfstudio's eval_setup."""
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(run / "config.yml", test_mode="test")
    model = pipeline.model
    images = [
        model.get_outputs_for_camera(camera)["rgb"] for camera, _ in pipeline.datamanager.fixed_indices_eval_dataloader
    ]
    return model.num_points, images


@pytest.fixture(scope="session")
def mixed_scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded scene with every odd frame at 3/4 resolution, seen by a second COLMAP camera."""
    from PIL import Image

    root = generate_scene(tmp_path_factory.mktemp("mixed"), n_views=24, width=64, height=48)
    sparse = root / "colmap" / "sparse" / "0"
    fx = float((sparse / "cameras.txt").read_text().split()[4])
    with open(sparse / "cameras.txt", "a") as f:
        f.write(f"2 PINHOLE 48 36 {fx * 0.75} {fx * 0.75} 24 18\n")
    lines = (sparse / "images.txt").read_text().splitlines()
    for i, line in enumerate(lines):
        fields = line.split()
        if len(fields) == 10 and int(fields[0]) % 2 == 0:  # image ids are 1-based: frames 1, 3, 5, ...
            fields[8] = "2"
            lines[i] = " ".join(fields)
            image = root / "images" / fields[9]
            Image.open(image).resize((48, 36), Image.BOX).save(image)
    (sparse / "images.txt").write_text("\n".join(lines) + "\n")
    return root


def build_model(random_init: bool, seed: int = 42, n_points: int = 300, layout: str = "replicated"):
    """A SplatfactoDistModel on the CPU from random seed points, without data or a trainer."""
    from nerfstudio.data.scene_box import SceneBox

    from splatfacto_dist.models.model import SplatfactoDistModelConfig

    g = torch.Generator().manual_seed(0)
    points = (torch.rand(n_points, 3, generator=g) - 0.5) * 2
    colors = torch.randint(0, 256, (n_points, 3), generator=g, dtype=torch.uint8)
    config = SplatfactoDistModelConfig(random_init=random_init, num_random=500, seed=seed, gaussian_layout=layout)
    return config.setup(
        scene_box=SceneBox(aabb=torch.tensor([[-1.0, -1, -1], [1, 1, 1]])),
        num_train_data=4,
        metadata={},
        device="cpu",
        seed_points=(points, colors),
    )


# The Gaussian-sharded layout, and comparisons of finished runs' models.
SHARDED = ["--pipeline.model.gaussian-layout", "sharded"]

# Comparisons of two layouts (or rank counts) sum the same gradients in another order. With Adam's
# eps of 1e-15 a gradient that is 0 in one run and a rounding error (1e-13) in the other makes a
# full step in one run only; with eps 1e-6 that step is 1e-7 of one, so what such tests compare
# no longer depends on rounding order. Both runs of a comparison use it; training is otherwise stock.
ROUNDING_FREE_ADAM = [
    arg
    for group in ("means", "scales", "quats", "features-dc", "features-rest", "opacities", "camera-opt")
    for arg in (f"--optimizers.{group}.optimizer.eps", "1e-6")
]


@pytest.fixture(scope="session")
def straight_run(tmp_path_factory: pytest.TempPathFactory, scene: Path) -> Path:
    """2 ranks for steps 0-47 on SCHEDULE + ROUNDING_FREE_ADAM: what the equivalence, resume and
    sharded-checkpoint tests compare against (trained once; they only read it)."""
    return train(tmp_path_factory.mktemp("straight"), scene, 2, SCHEDULE + ROUNDING_FREE_ADAM)


# Two CUDA ranks: on two GPUs over NCCL, or sharing one over gloo where the machine has one.
CUDA_TWO_RANKS = ["--machine.device-type", "cuda"] + (
    [] if torch.cuda.device_count() >= 2 else ["--ranks-per-gpu", "2"]
)

# nerfstudio saves every 2,000 of 30,000 images; at the tests' 48 steps that is every few steps, with
# saves before and after refines (every 8 steps) and the opacity reset (step 40).
SAVES = ["--steps-per-save", "6"]


def gaussians(run: Path) -> dict:
    (path,) = (run / "nerfstudio_models").glob("step-*.ckpt")
    state = torch.load(path, map_location="cpu")["pipeline"]
    return {k.split(".")[-1]: v for k, v in state.items() if k.startswith("_model.gauss_params.")}


def assert_same_set(a: dict, b: dict) -> None:
    """Every Gaussian of `a` has its own twin in `b`: the nearest in position, colour, opacity and
    scale, within 1e-2 (rounding differs between layouts, and Adam's eps=1e-15 makes steps of
    rounding-sized gradients full-sized: differences stay far below what a render shows)."""
    assert len(a["means"]) == len(b["means"])

    def vector(g: dict) -> torch.Tensor:
        return torch.cat([g["means"], g["features_dc"], g["opacities"], g["scales"]], dim=1)

    nearest = torch.cdist(vector(a), vector(b)).min(dim=1)
    assert len(set(nearest.indices.tolist())) == len(a["means"]), "two Gaussians matched one twin"
    for name in ("means", "features_dc", "opacities", "scales", "features_rest"):
        assert torch.allclose(a[name], b[name][nearest.indices], atol=1e-2), name


def assert_renders_match(a: Path, b: Path) -> None:
    count_a, images_a = renders(a)
    count_b, images_b = renders(b)
    assert count_a == count_b
    mse = torch.mean((torch.stack(images_a) - torch.stack(images_b)) ** 2)
    assert -10 * torch.log10(mse) > 40, float(mse)


# Rank 1 fails at step 3 of training: a `sitecustomize` that every rank's interpreter runs (forked ranks
# inherit it, spawned ones import it from PYTHONPATH), for the tests of how a job ends when one rank fails.
PLANTED_FAILURE = """
import torch.distributed as dist
from splatfacto_dist.engine import trainer

original = trainer.DistTrainer.train_iteration


def failing(self, step):
    if dist.get_rank() == 1 and step == 3:
        raise RuntimeError("planted failure of rank 1 at step 3")
    return original(self, step)


trainer.DistTrainer.train_iteration = failing
"""


def plant_failure(folder: Path) -> Path:
    """A folder holding PLANTED_FAILURE as sitecustomize.py, to put first on a job's PYTHONPATH."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(PLANTED_FAILURE)
    return folder
