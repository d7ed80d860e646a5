"""The live viewer during 2-process training, opened in a real headless Chromium."""

from __future__ import annotations

import subprocess
import time

import numpy as np
import pytest
from conftest import free_port, train_command
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from viewer_probe import HeadlessChromium


def _last_step(run_root) -> int:
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
    view = _view(shot)
    return float(((view.max(axis=-1) - view.min(axis=-1)) > 100).mean())


@pytest.mark.parametrize("layout", ["replicated", "sharded"])
def test_viewer_shows_the_training_scene_follows_a_camera_move_and_training_finishes(tmp_path, scene, layout):
    """Sharded, every render the viewer asks for is served by both ranks on their training threads."""
    port = free_port()
    out = tmp_path / "out"
    cmd = train_command(
        out,
        scene,
        2,
        [
            "--vis",
            "viewer+tensorboard",
            "--viewer.websocket-port",
            str(port),
            "--viewer.quit-on-train-completion",
            "True",
            "--max-num-iterations",
            "2800",  # the run must outlast a browser start, a 15 s screenshot and 10 s more (1,400 once did not)
            "--pipeline.model.gaussian-layout",
            layout,
        ],
    )
    log = open(tmp_path / "log.txt", "w")
    launcher = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    browser = None
    try:
        deadline = time.monotonic() + 600
        while _last_step(out) < 200:
            assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()[-3000:]
            time.sleep(2)
        browser = HeadlessChromium()
        shot = np.asarray(Image.open(browser.screenshot(f"http://127.0.0.1:{port}", 15, tmp_path / "viewer.png")))
        browser.wheel(shot.shape[1] * 35 // 100, shot.shape[0] // 2, delta_y=1500)  # dolly out
        time.sleep(10)
        moved = np.asarray(Image.open(browser.capture(tmp_path / "moved.png")))
        assert launcher.poll() is None, "training ended before the moved camera was rendered"
        assert launcher.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        if browser is not None:
            browser.close()
        if launcher.poll() is None:
            launcher.kill()
        log.close()
    # The embedded scene is a sphere in saturated hues; an empty or disconnected viewer is grey.
    scene_share = _scene_share(shot)
    assert scene_share > 0.05, scene_share
    assert _view(shot).std() > 20, float(_view(shot).std())
    # Dollying out re-renders the scene from farther away: it still shows, and covers less of the view.
    assert 0.002 < _scene_share(moved) < 0.7 * scene_share, (_scene_share(moved), scene_share)
    text = (tmp_path / "log.txt").read_text()
    assert text.count("Training Finished") == 2
    if layout == "sharded":  # the viewer's renders were served by both ranks on their training threads
        (run,) = out.glob("*/splatfacto-dist/run")
        assert "Viewer Render Delay (ms)" in EventAccumulator(str(run)).Reload().Tags()["scalars"]
