"""How ranks start, pause, fail and finish together (gloo processes on CPU)."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, plant_failure, train_command

from splatfacto_dist import comm
from splatfacto_dist.engine.control import PAUSE, RUN, STOP, RankControl
from splatfacto_dist.engine.viewer_renders import TrainLock, ViewerRenders


def _in_group(rank: int, world: int, port: int, fn, results) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        results[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def run_ranks(fn, world: int = 2) -> list:
    """fn(rank) in `world` gloo processes; returns each rank's result."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.start_processes(_in_group, args=(world, free_port(), fn, results), nprocs=world, start_method="fork")
        return [results[r] for r in range(world)]


def _scaler_step(rank: int):
    param = torch.nn.Parameter(torch.ones(4))
    optimizer = torch.optim.SGD([param], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=4.0)
    scaler.scale(param.sum()).backward()
    if rank == 1:
        param.grad[2] = float("inf")  # only rank 1 sees the overflow
    comm.average_gradients([param])
    scaler.step(optimizer)
    scaler.update()
    return param.detach().tolist(), scaler.get_scale()


def test_non_finite_gradient_on_one_rank_skips_the_step_on_every_rank():
    (p0, s0), (p1, s1) = run_ranks(_scaler_step)
    assert p0 == p1 == [1.0, 1.0, 1.0, 1.0]  # no rank stepped
    assert s0 == s1 == 2.0  # and both backed off the scale together


def _pause_then_stop(rank: int):
    """Rank 0's viewer pauses for ~1 s at step 3, then stops training at step 6."""
    viewer_state = SimpleNamespace(training_state="training", stop_training=False)
    if rank == 0:

        def viewer():
            time.sleep(0.3)
            viewer_state.training_state = "paused"
            time.sleep(1.0)
            viewer_state.training_state = "training"
            time.sleep(0.3)
            viewer_state.stop_training = True

        threading.Thread(target=viewer, daemon=True).start()

    def local_state() -> int:
        return STOP if viewer_state.stop_training else PAUSE if viewer_state.training_state == "paused" else RUN

    control = RankControl(every=1, device=torch.device("cpu"))
    events = []
    for step in range(10_000):
        start = time.monotonic()
        if control.agree_to_continue(step, local_state, ViewerRenders(), lambda: None) != RUN:
            events.append(("stopped", step))
            break
        if time.monotonic() - start > 0.5:
            events.append(("paused", round(time.monotonic() - start, 1)))
        time.sleep(0.05)
    return events


def test_viewer_pause_and_stop_on_rank_0_reach_every_rank():
    r0, r1 = run_ranks(_pause_then_stop)
    assert [e[0] for e in r0] == [e[0] for e in r1] == ["paused", "stopped"]
    assert r0[-1] == r1[-1]  # stopped at the same step
    assert r1[0][1] >= 0.8  # rank 1 waited out rank 0's pause


def _viewer_render_served_by_every_rank(rank: int):
    """Rank 0's viewer thread asks for a render that needs every rank (here: a sum over ranks); the
    training threads serve it at their next agreement, while the viewer thread holds the train lock."""
    renders, train_lock = ViewerRenders(), TrainLock()
    result = {}
    if rank == 0:

        def viewer():
            with train_lock:  # nerfstudio's viewer renders under the trainer's lock
                result["sum"] = renders.submit(lambda: comm.all_reduce_ints([1])[0])

        threading.Thread(target=viewer, daemon=True).start()
    control = RankControl(every=5, device=torch.device("cpu"))
    served_at = None
    for step in range(200):
        with train_lock:  # a training step
            time.sleep(0.01)
        control.agree_to_continue(step, lambda: RUN, renders, lambda: comm.all_reduce_ints([1]))
        if rank == 1 or "sum" in result:
            served_at = step if served_at is None else served_at
    return result.get("sum"), served_at


def test_a_viewer_render_is_served_by_every_rank_without_deadlock():
    (total, served_at), _ = run_ranks(_viewer_render_served_by_every_rank)
    assert total == 2
    assert served_at is not None and served_at < 200


def test_a_failing_rank_stops_every_rank_promptly_and_its_cause_is_the_last_line(tmp_path, scene):
    """Rank 1 fails mid-run (planted through sitecustomize, which every forked rank inherits); rank 0
    then loses its connection. The job ends long before the collective timeout, and the last line
    the user sees is rank 1's cause, not rank 0's lost connection."""
    env = {**os.environ, "PYTHONPATH": f"{plant_failure(tmp_path / 'plant')}:{os.environ.get('PYTHONPATH', '')}"}
    start = time.monotonic()
    proc = subprocess.run(
        train_command(tmp_path / "out", scene, 2, ["--max-num-iterations", "400"]),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: rank 1 failed: RuntimeError: planted failure of rank 1 at step 3"), last
    assert time.monotonic() - start < 120  # not the collective timeout (10 min)
