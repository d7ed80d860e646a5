"""Stock nerfstudio tools on a checkpoint of a distributed run: shared by the CPU and GPU tests."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tool
from PIL import Image
from plyfile import PlyData
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def checkpoint(run: Path) -> dict:
    (path,) = (run / "nerfstudio_models").glob("step-*.ckpt")
    return torch.load(path, map_location="cpu")  # torch's default: weights_only=True


def _export_env(tmp_path: Path) -> dict:
    """ns-export imports open3d, pymeshlab, mediapy and xatlas at start-up, for the point-cloud, mesh
    and texture exports; the GPU machines' kit carries none of them (hundreds of MB of wheels).
    `gaussian-splat` uses none, so where they are missing they are stubbed as empty modules for the
    export alone."""
    env = dict(os.environ)
    missing = [name for name in ("open3d", "pymeshlab", "mediapy", "xatlas") if importlib.util.find_spec(name) is None]
    if missing:
        stubs = tmp_path / "import_stubs"
        for name in missing:
            (stubs / name).mkdir(parents=True, exist_ok=True)
            (stubs / name / "__init__.py").write_text("")
        env["PYTHONPATH"] = os.pathsep.join([str(stubs), env.get("PYTHONPATH", "")])
    return env


def check_ns_export(run: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [*tool("ns-export"), "gaussian-splat", "--load-config", str(run / "config.yml"), "--output-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
        env=_export_env(tmp_path),
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ply = PlyData.read(str(tmp_path / "splat.ply"))["vertex"]
    state = checkpoint(run)["pipeline"]
    g = {k.split(".")[-1]: v for k, v in state.items() if k.startswith("_model.gauss_params.")}
    keep = g["opacities"][:, 0] >= -5.5373  # ns-export drops Gaussians it would not rasterize
    assert len(ply) == int(keep.sum()) > 0
    np.testing.assert_array_equal(np.stack([ply["x"], ply["y"], ply["z"]], -1), g["means"][keep].numpy())
    np.testing.assert_array_equal(np.stack([ply[f"scale_{i}"] for i in range(3)], -1), g["scales"][keep].numpy())
    np.testing.assert_array_equal(np.stack([ply[f"rot_{i}"] for i in range(4)], -1), g["quats"][keep].numpy())
    np.testing.assert_array_equal(ply["opacity"], g["opacities"][keep, 0].numpy())
    np.testing.assert_array_equal(np.stack([ply[f"f_dc_{i}"] for i in range(3)], -1), g["features_dc"][keep].numpy())
    rest = g["features_rest"][keep].transpose(1, 2).reshape(int(keep.sum()), -1).numpy()
    np.testing.assert_array_equal(np.stack([ply[f"f_rest_{i}"] for i in range(45)], -1), rest)


def check_ns_eval(run: Path, tmp_path: Path, last_step: int) -> None:
    events = EventAccumulator(str(run)).Reload()
    during = {k: events.Scalars(f"Eval Images Metrics Dict (all images)/{k}")[-1] for k in ("psnr", "ssim")}
    assert during["psnr"].step == last_step
    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [*tool("ns-eval"), "--load-config", str(run / "config.yml"), "--output-path", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    after = json.loads(out.read_text())["results"]
    for key in ("psnr", "ssim"):
        assert after[key] == pytest.approx(during[key].value, rel=1e-5), key


def check_ns_render(run: Path, tmp_path: Path, views: int) -> None:
    proc = subprocess.run(
        [
            *tool("ns-render"),
            "dataset",
            "--load-config",
            str(run / "config.yml"),
            "--output-path",
            str(tmp_path),
            "--split",
            "test",
            "--rendered-output-names",
            "rgb",
            "--image-format",
            "png",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    frames = sorted(tmp_path.rglob("*.png"))
    assert len(frames) == views
    assert all(np.asarray(Image.open(f)).std() > 10 for f in frames)
