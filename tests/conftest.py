"""Shared fixtures: the embedded scene and a helper that runs real multi-process training."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from splatfacto_dist.scene import generate_scene

BIN = Path(sys.executable).parent

# A tiny but complete schedule: refines every 16 images after 32, no screen-size splitting
# (every Gaussian is "large" in a 64x48 image), nothing written that a test does not read.
TINY = [
    "--vis", "tensorboard",
    "--machine.device-type", "cpu",
    "--logging.steps-per-log", "1",
    "--steps-per-eval-image", "0",
    "--steps-per-eval-all-images", "0",
    "--steps-per-save", "100000",
    "--pipeline.model.warmup-length", "32",
    "--pipeline.model.refine-every", "16",
    "--pipeline.model.stop-screen-size-at", "0",
    "--pipeline.model.sh-degree-interval", "64",
]


@pytest.fixture(scope="session")
def scene(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_scene(tmp_path_factory.mktemp("scene"), n_views=24, width=64, height=48)


def train(out: Path, scene: Path, nprocs: int, args: List[str], timeout: int = 900) -> Path:
    """Run `splatfacto-dist-train` in `nprocs` gloo processes; return the run directory."""
    cmd = [
        sys.executable, "-m", "splatfacto_dist.launch", "splatfacto-dist",
        *TINY, "--machine.num-devices", str(nprocs), "--output-dir", str(out), "--timestamp", "run", *args,
        "colmap", "--data", str(scene),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    log = proc.stdout + proc.stderr
    (out / "train.log").parent.mkdir(parents=True, exist_ok=True)
    (out / "train.log").write_text(log)
    assert proc.returncode == 0, log[-4000:]
    return next(out.glob("*/splatfacto-dist/run"))
