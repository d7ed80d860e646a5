"""The live viewer of a 2-process run, opened in a real headless Chromium: during training, and kept
open after it. Every wait is for an event (a step reached, the scene on screen, the view changed
by a camera move, the end-of-training line), never for a run to be long or short enough; the job
is ended with ctrl+c, as its user would."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
import pytest
from conftest import free_port, train_command
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from viewer_probe import HeadlessChromium

DEADLINE_S = 600  # for any one event, on the slowest machine we run on; a hang fails, not a slow machine


def _last_step(run_root: Path) -> int:
    runs = list(run_root.glob("*/splatfacto-dist/run"))
    if not runs:
        return -1
    scalars = EventAccumulator(str(runs[0])).Reload().Tags()["scalars"]
    if "Train Loss" not in scalars:
        return -1
    return max(e.step for e in EventAccumulator(str(runs[0])).Reload().Scalars("Train Loss"))


def _view(shot: np.ndarray) -> np.ndarray:
    """The 3D view: the left ~70% below the title bar (the control panel with yellow buttons is right)."""
    return shot[80:, : int(shot.shape[1] * 0.7), :3].astype(np.float32)


def _scene_share(shot: np.ndarray) -> float:
    """Share of the view in saturated colour: the embedded scene is a sphere in saturated hues, and an
    empty or disconnected viewer is grey."""
    view = _view(shot)
    return float(((view.max(axis=-1) - view.min(axis=-1)) > 100).mean())


def _wait(what: str, ready: Callable[[], bool], launcher: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not ready():
        assert launcher.poll() is None, f"the job ended while waiting for {what}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no {what} after {DEADLINE_S} s:\n{log.read_text()[-3000:]}"
        time.sleep(1)


def _look_and_move(browser: HeadlessChromium, port: int, tmp_path: Path, launcher, log: Path):
    """Open the viewer, wait for the scene on screen, dolly the camera out, wait for the re-render."""
    browser.call("Page.navigate", url=f"http://127.0.0.1:{port}")
    shots = {}

    def scene_shown() -> bool:
        shot = browser.capture(tmp_path / "viewer.png")
        if shot is None:
            return False
        shots["first"] = np.asarray(Image.open(shot))
        return _scene_share(shots["first"]) > 0.05 and _view(shots["first"]).std() > 20

    _wait("scene in the viewer", scene_shown, launcher, log)
    shown = _scene_share(shots["first"])
    browser.wheel(shots["first"].shape[1] * 35 // 100, shots["first"].shape[0] // 2, delta_y=1500)  # dolly out

    def moved() -> bool:
        shots["moved"] = np.asarray(Image.open(browser.capture(tmp_path / "moved.png")))  # type: ignore[arg-type]
        return 0.002 < _scene_share(shots["moved"]) < 0.7 * shown  # farther away: smaller, still there

    _wait("re-render after the camera move", moved, launcher, log)


def _alive(ranks) -> int:
    """How many of the launcher's rank processes still run (an exited one may linger as a zombie)."""
    count = 0
    for rank in ranks:
        try:
            count += rank.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            pass
    return count


def _ctrl_c(launcher: subprocess.Popen) -> float:
    """Send ctrl+c to the whole job (its process group, as a terminal does); seconds until it ended."""
    start = time.monotonic()
    os.killpg(launcher.pid, signal.SIGINT)
    launcher.wait(timeout=120)
    return time.monotonic() - start


def _start(tmp_path: Path, scene: Path, layout: str, port: int, args: list) -> tuple:
    out = tmp_path / "out"
    viewer = ["--vis", "viewer+tensorboard", "--viewer.websocket-port", str(port)]
    cmd = train_command(out, scene, 2, viewer + ["--pipeline.model.gaussian-layout", layout] + args)
    log = tmp_path / "log.txt"
    # ctrl+c must reach the job as in a terminal, also where this test runs with SIGINT ignored (a
    # non-interactive shell's background job), which the job would inherit: a handled signal is reset
    # to its default in the child, an ignored one stays ignored.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        launcher = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        signal.signal(signal.SIGINT, previous)
    return launcher, out, log


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_viewer_shows_the_training_scene_and_follows_a_camera_move(tmp_path, scene, layout):
    """Sharded, every render the viewer asks for is served by both ranks on their training threads."""
    port = free_port()
    launcher, out, log = _start(tmp_path, scene, layout, port, ["--max-num-iterations", "10000000"])
    browser = None
    try:
        _wait("training step 100", lambda: _last_step(out) >= 100, launcher, log)
        browser = HeadlessChromium()
        _look_and_move(browser, port, tmp_path, launcher, log)
        assert _last_step(out) < 5_000_000, "the run was meant to be still training"
        assert _ctrl_c(launcher) < 60
    finally:
        if browser is not None:
            browser.close()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    if layout == "sharded":
        (run,) = out.glob("*/splatfacto-dist/run")
        assert "Viewer Render Delay (ms)" in EventAccumulator(str(run)).Reload().Tags()["scalars"]


@pytest.mark.parametrize(
    "layout, offload", [("replicated", False), ("sharded", True)], ids=["replicated", "sharded-offload"]
)
def test_viewer_kept_open_after_training_renders_the_trained_model(tmp_path, scene, layout, offload):
    """--viewer.quit-on-train-completion False. Replicated, rank 0 holds every Gaussian and renders
    alone (rank 1 exits); sharded, no rank holds the whole model, so both stay up and serve the
    viewer's renders until ctrl+c (here with their colours offloaded: each render fetches its own)."""
    port = free_port()
    args = ["--max-num-iterations", "200", "--viewer.quit-on-train-completion", "False"]
    args += ["--pipeline.model.offload", "True"] if offload else []
    launcher, out, log = _start(tmp_path, scene, layout, port, args)
    browser = None
    try:
        _wait("both ranks", lambda: len(psutil.Process(launcher.pid).children()) == 2, launcher, log)
        ranks = psutil.Process(launcher.pid).children()
        _wait("the end of training", lambda: "Use ctrl+c to quit" in log.read_text(), launcher, log)
        if layout == "replicated":
            _wait("rank 1's exit", lambda: _alive(ranks) == 1, launcher, log)
        browser = HeadlessChromium()
        _look_and_move(browser, port, tmp_path, launcher, log)
        assert _alive(ranks) == (2 if layout == "sharded" else 1)
        assert _ctrl_c(launcher) < 60
    finally:
        if browser is not None:
            browser.close()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
    assert (out / "unnamed" / "splatfacto-dist" / "run" / "nerfstudio_models" / "step-000000099.ckpt").exists()
