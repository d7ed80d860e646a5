"""The live viewer during 2-process training, opened in a real headless Chromium."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import TINY, free_port
from viewer_probe import HeadlessChromium



def _last_step(run_root) -> int:
    runs = list(run_root.glob("*/splatfacto-dist/run"))
    if not runs:
        return -1
    scalars = EventAccumulator(str(runs[0])).Reload().Tags()["scalars"]
    if "Train Loss" not in scalars:
        return -1
    return max(e.step for e in EventAccumulator(str(runs[0])).Reload().Scalars("Train Loss"))


def test_viewer_shows_the_training_scene_and_training_finishes(tmp_path, scene):
    port = free_port()
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "splatfacto_dist.cli", "splatfacto-dist", *TINY, "--machine.num-devices", "2",
           "--vis", "viewer+tensorboard", "--viewer.websocket-port", str(port),
           "--viewer.quit-on-train-completion", "True", "--max-num-iterations", "700",
           "--output-dir", str(out), "--timestamp", "run", "colmap", "--data", str(scene)]
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
        assert launcher.wait(timeout=600) == 0, (tmp_path / "log.txt").read_text()[-3000:]
    finally:
        if browser is not None:
            browser.close()
        if launcher.poll() is None:
            launcher.kill()
        log.close()
    # The 3D view is the left ~70% below the title bar; the control panel (yellow buttons) is right.
    view = shot[80:, : int(shot.shape[1] * 0.7), :3].astype(np.float32)
    saturation = view.max(axis=-1) - view.min(axis=-1)
    # The embedded scene is a sphere in saturated hues; an empty or disconnected viewer is grey.
    assert (saturation > 100).mean() > 0.05, float((saturation > 100).mean())
    assert view.std() > 20, float(view.std())
    text = (tmp_path / "log.txt").read_text()
    assert text.count("Training Finished") == 2
