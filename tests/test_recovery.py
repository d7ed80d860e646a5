"""Resume on another process count, a rank killed mid-run, and misconfigurations (gloo, CPU)."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Optional, Sequence

import psutil
import pytest
import torch
from conftest import CLI, ROUNDING_FREE_ADAM, SCHEDULE, renders, tool, train, train_command


@pytest.mark.parametrize("first_procs, then_procs", [(2, 1), (1, 2)])
def test_resume_on_another_process_count_equals_training_straight(
    tmp_path, scene, straight_run, first_procs, then_procs
):
    """Steps 0-32 on one layout (a refine at 32 empties the statistics), steps 33-47 on the other
    (2 ranks of 1 camera, or 1 process rendering the same 2 cameras) == 2 ranks for steps 0-47."""
    compared = SCHEDULE + ROUNDING_FREE_ADAM
    layout = {2: [], 1: ["--pipeline.datamanager.cameras-per-rank", "2", "--pipeline.datamanager.data-shards", "2"]}
    first = train(
        tmp_path / "first", scene, first_procs, compared + layout[first_procs] + ["--max-num-iterations", "33"]
    )
    resumed = train(
        tmp_path / "resumed",
        scene,
        then_procs,
        compared + layout[then_procs] + ["--max-num-iterations", "15", "--load-dir", str(first / "nerfstudio_models")],
    )
    assert "continuing at step 33" in (tmp_path / "resumed" / "train.log").read_text()
    (ckpt,) = (resumed / "nerfstudio_models").glob("*.ckpt")
    assert ckpt.name == "step-000000047.ckpt"
    count_a, images_a = renders(straight_run)
    count_b, images_b = renders(resumed)
    assert count_a == count_b
    mse = torch.mean((torch.stack(images_a) - torch.stack(images_b)) ** 2)
    assert -10 * torch.log10(mse) > 40, float(mse)


def test_resume_counts_images_across_gpu_counts(tmp_path, scene):
    first = train(tmp_path / "first", scene, 2, ["--max-num-iterations", "64"])  # steps 0-31, 2 images each
    train(
        tmp_path / "resumed", scene, 1, ["--max-num-iterations", "16", "--load-dir", str(first / "nerfstudio_models")]
    )
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert "images seen: 64, continuing at step 64" in log
    (ckpt,) = (tmp_path / "resumed").glob("*/splatfacto-dist/run/nerfstudio_models/*.ckpt")
    assert ckpt.name == "step-000000079.ckpt"


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_killed_rank_stops_the_job_and_the_last_checkpoint_resumes(tmp_path, scene, layout):
    """Sharded, the newest checkpoint still holds every Gaussian with its Adam moments."""
    out = tmp_path / "out"
    layout_args = ["--pipeline.model.gaussian-layout", layout]
    cmd = train_command(
        out,
        scene,
        2,
        ["--max-num-iterations", "100000", "--steps-per-save", "20", "--save-only-latest-checkpoint", "False"]
        + layout_args,
    )
    log = open(tmp_path / "log.txt", "w")
    launcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    checkpoints = out / "unnamed" / "splatfacto-dist" / "run" / "nerfstudio_models"
    while time.monotonic() < deadline and len(list(checkpoints.glob("*.ckpt"))) < 2:
        time.sleep(0.5)
    ranks = psutil.Process(launcher.pid).children()
    assert len(ranks) == 2
    ranks[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    launcher.wait(timeout=120)
    log.close()
    assert launcher.returncode != 0
    assert time.monotonic() - killed_at < 60
    text = (tmp_path / "log.txt").read_text()
    assert "terminated with signal SIGKILL" in text, text[-2000:]
    assert not list(checkpoints.glob(".*.tmp"))  # no half-written checkpoint left behind
    newest = sorted(checkpoints.glob("*.ckpt"))[-1]
    state = torch.load(newest, map_location="cpu")  # complete, and loadable with weights_only
    n = len(state["pipeline"]["_model.gauss_params.means"])
    assert len(state["optimizers"]["means"]["state"][0]["exp_avg"]) == n == len(state["gaussian_ids"])
    train(tmp_path / "resumed", scene, 2, ["--max-num-iterations", "20", "--load-dir", str(checkpoints)] + layout_args)


def _launch(
    out: Path, scene: Path, nprocs: Optional[int], *args: str, launcher: Sequence[str] = CLI
) -> subprocess.CompletedProcess:
    cmd = train_command(out, scene, nprocs, args, launcher=launcher)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    return [line for line in proc.stdout.splitlines() if line.startswith("error:")][0]


def test_missing_data_fails_in_one_line(tmp_path):
    proc = _launch(tmp_path, tmp_path / "nowhere", 2)
    assert f"data path {tmp_path / 'nowhere'} does not exist" in _error_line(proc)


def test_busy_port_fails_in_one_line(tmp_path, scene):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = _launch(tmp_path, scene, 2, "--machine.dist-url", f"tcp://127.0.0.1:{port}")
    assert f"port {port}" in _error_line(proc)


def test_cuda_without_a_gpu_fails_in_one_line(tmp_path, scene):
    if torch.cuda.is_available():
        proc = _launch(tmp_path, scene, torch.cuda.device_count() + 1, "--machine.device-type", "cuda")
        assert "GPU(s) are visible" in _error_line(proc)
    else:
        proc = _launch(tmp_path, scene, None, "--machine.device-type", "cuda")
        assert "CUDA is not available" in _error_line(proc)


def test_incompatible_batch_settings_fail_in_one_line(tmp_path, scene):
    proc = _launch(tmp_path, scene, 2, "--pipeline.datamanager.data-shards", "3")
    assert "multiple of the world size 2" in _error_line(proc)


def test_more_gpus_than_visible_fail_in_one_line_under_ns_train_too(tmp_path, scene):
    """Checked while the command line is parsed, so nerfstudio's own launcher never spawns."""
    wanted = max(2, torch.cuda.device_count() + 1)
    for launcher in (CLI, tool("ns-train")):
        proc = _launch(tmp_path, scene, wanted, "--machine.device-type", "cuda", launcher=launcher)
        assert f"--machine.num-devices {wanted} but only {torch.cuda.device_count()} GPU(s)" in _error_line(proc)
