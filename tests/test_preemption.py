"""Preemption (SIGTERM, SIGUSR1) saves the last finished step and exits with PREEMPTED_EXIT; the same
command with --auto-resume continues in the same run folder and ends as an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import ROUNDING_FREE_ADAM, SCHEDULE, assert_renders_match, train_command

from splatfacto_dist.launching.signals import PREEMPTED_EXIT, Preemption, forwarded_to


@pytest.mark.parametrize(
    "layout, target, signum",
    [("replicated", "launcher", signal.SIGTERM), ("sharded", "process group", signal.SIGUSR1)],
)
def test_a_preempted_run_saves_and_auto_resume_ends_as_an_uninterrupted_one(
    tmp_path, scene, straight_run, layout, target, signum
):
    """The signal lands once step 8 is saved (an event, not a delay); the ranks agree at their next
    step, save it and exit 75 within 60 s; the same command then resumes to step 47 and renders as
    the straight 2-rank run does."""
    out = tmp_path / "out"
    args = SCHEDULE + ROUNDING_FREE_ADAM + ["--pipeline.model.gaussian-layout", layout]
    args += ["--auto-resume", "True", "--control-every", "1", "--steps-per-save", "8"]
    cmd = train_command(out, scene, 2, args)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    models = out / "unnamed" / "splatfacto-dist" / "run" / "nerfstudio_models"
    with open(tmp_path / "first.log", "w") as log:
        job = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        deadline = time.monotonic() + 600
        while not (models / "step-000000008.ckpt").exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert job.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        if target == "launcher":
            os.kill(job.pid, signum)
        else:
            os.killpg(job.pid, signum)
        signalled = time.monotonic()
        job.wait(timeout=300)
    text = (tmp_path / "first.log").read_text()
    assert job.returncode == PREEMPTED_EXIT, text[-3000:]
    assert time.monotonic() - signalled < 60
    assert f"preempted ({signal.Signals(signum).name}): saved step" in text, text[-3000:]
    (saved,) = models.glob("step-*.ckpt")  # the periodic save of step 8 replaced by the preemption's
    step = torch.load(saved, map_location="cpu")["step"]
    assert 8 <= step < 47
    assert not list(models.glob(".*.tmp"))

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-3000:]
    assert "--auto-resume: continuing the run in" in text and f"continuing at step {step + 1}" in text, text[-3000:]
    (final,) = models.glob("step-*.ckpt")
    assert final.name == "step-000000047.ckpt"
    assert_renders_match(straight_run, models.parent)


def test_auto_resume_without_a_checkpoint_starts_fresh_in_one_line(tmp_path, scene):
    cmd = train_command(tmp_path, scene, 1, ["--auto-resume", "True", "--max-num-iterations", "2"])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "--auto-resume: no checkpoint under" in proc.stdout


def test_a_preemption_note_keeps_the_first_signal_and_the_launcher_passes_signals_on():
    """In this process: the note is taken, not acted on, and a second signal keeps the first; a
    forwarding launcher sends what it receives to its ranks (here a child that records it)."""
    preemption = Preemption()
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        preemption.watch()
        os.kill(os.getpid(), signal.SIGUSR1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert preemption.requested and preemption.name == "SIGUSR1"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    waits = (
        "import signal, sys\nsignal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])\nprint('ready', flush=True)\n"
    )
    waits += "signal.sigwait([signal.SIGTERM])\nsys.exit(75)"
    child = subprocess.Popen([sys.executable, "-c", waits], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"  # SIGTERM is now held for it
    with forwarded_to([child.pid]):
        os.kill(os.getpid(), signal.SIGTERM)  # to the "launcher": forwarded, not fatal
    assert child.wait(timeout=60) == 75
