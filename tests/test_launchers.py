"""torchrun and SLURM map onto the same job as --machine.* settings (gloo, CPU)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from conftest import free_port, tool, train_command

from splatfacto_dist.reporting.records import read_rank_records

ARGS = ["--max-num-iterations", "60", "--verify-replicas-every", "5"]


def _finished(log: str, ranks: int) -> None:
    for r in range(ranks):
        assert f"rank {r}: trains on" in log, log[-3000:]
    assert "Training Finished" in log


def test_torchrun(tmp_path, scene):
    torchrun = [*tool("torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "splatfacto_dist.cli"]
    cmd = train_command(tmp_path, scene, None, ARGS, launcher=torchrun)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    _finished(proc.stdout + proc.stderr, 2)
    assert list(Path(tmp_path).glob("*/splatfacto-dist/run/nerfstudio_models/*.ckpt"))


def test_slurm_environment(tmp_path, scene):
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(
            os.environ,
            SLURM_PROCID=str(rank),
            SLURM_LOCALID=str(rank),
            SLURM_NTASKS="2",
            SLURM_NNODES="1",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=str(port),
        )
        cmd = train_command(tmp_path, scene, None, ARGS)
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    _finished("\n".join(logs), 2)


def test_guess_local_ranks_reads_cuda_device_counts_off_the_raw_arguments():
    from splatfacto_dist.cli import guess_local_ranks

    data = ["colmap", "--data", "x"]
    assert guess_local_ranks(["splatfacto-dist", "--machine.num-devices", "4", *data], {}) == 4
    assert guess_local_ranks(["splatfacto-dist", "--machine.num_devices=2", *data], {}) == 2
    assert guess_local_ranks(["splatfacto-dist", *data], {}) == 0  # one device: nothing to overlap
    assert guess_local_ranks(["splatfacto-dist", "--machine.num-devices", "4", "--machine.device-type", "cpu"], {}) == 0
    assert guess_local_ranks(["splatfacto-dist", "--machine.num-devices", "4", "--help"], {}) == 0
    assert guess_local_ranks(["splatfacto-dist", "--machine.num-devices", "4"], {"RANK": "0"}) == 0
    assert guess_local_ranks(["splatfacto-dist", "--machine.num-devices", "4"], {"SLURM_NTASKS": "8"}) == 0
    assert guess_local_ranks(["splatfacto-dist", "--machine.num-devices", "four"], {}) == 0


def test_visible_gpus_follow_cuda_visible_devices_or_say_unsure():
    from splatfacto_dist.launching.gpu_count import count_visible

    assert count_visible(4, None) == 4
    assert count_visible(4, "") == 0
    assert count_visible(4, "1,3") == 2
    assert count_visible(2, "0,1,2,3") == 2  # CUDA stops at the first index that does not exist
    assert count_visible(4, "-1,0") == 0
    assert count_visible(4, "GPU-8d2f0e1a-5c3b") is None
    assert count_visible(4, "0,MIG-1") is None


def test_the_drivers_gpu_list_is_counted_unless_a_gpu_is_split_into_mig_instances(monkeypatch):
    from splatfacto_dist.launching import gpu_count

    listing = "GPU 0: NVIDIA H200 (UUID: GPU-1)\nGPU 1: NVIDIA H200 (UUID: GPU-2)\n"
    monkeypatch.setattr(gpu_count.shutil, "which", lambda name: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(
        gpu_count.subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 0, stdout=listing, stderr="")
    )
    assert gpu_count.physical_gpus() == 2
    listing += "  MIG 1g.18gb     Device  0: (UUID: MIG-3)\n"
    assert gpu_count.physical_gpus() is None


def test_what_the_raw_arguments_show_impossible_is_refused_from_them(tmp_path, monkeypatch):
    from splatfacto_dist import cli

    monkeypatch.setattr(cli, "visible_gpus", lambda environ: 2)
    here, nowhere = str(tmp_path), str(tmp_path / "nowhere")
    assert cli.refusal_before_parsing(["splatfacto-dist", "colmap", "--data", here], {}, 2) is None
    assert "only 2 GPU(s)" in cli.refusal_before_parsing(["splatfacto-dist", "--data", here], {}, 4)
    shared = ["splatfacto-dist", "--ranks-per-gpu", "2", "--data", here]
    assert cli.refusal_before_parsing(shared, {}, 4) is None  # 4 ranks on 2 GPUs, as asked
    assert "needs 3 GPUs but only 2" in cli.refusal_before_parsing(shared, {}, 5)
    assert f"data path {nowhere} does not exist" in cli.refusal_before_parsing(
        ["m", "colmap", "--data", nowhere], {}, 0
    )
    assert cli.refusal_before_parsing(["m", "--data", here, "colmap", f"--data={nowhere}"], {}, 0) is None  # one exists
    assert cli.refusal_before_parsing(["m", "--pipeline.datamanager.data", nowhere], {}, 0) is not None
    assert cli.refusal_before_parsing(["m", "--load-config", "c.yml", "--data", nowhere], {}, 0) is None
    assert cli.refusal_before_parsing(["m", "--help", "--data", nowhere], {}, 0) is None


def _refused_at_once(argv: list, setup: str = "") -> list:
    """The lines `cli.entrypoint` prints for `argv` in a fresh interpreter, then its exit code and
    whether torch, nerfstudio or a spawned rank had been imported by then."""
    code = (
        f"import sys\n{setup}sys.argv = {['splatfacto-dist-train', *argv]!r}\n"
        "from splatfacto_dist import cli\ntry:\n    cli.entrypoint()\nexcept SystemExit as e:\n"
        "    print('exit', e.code, *(m in sys.modules for m in ('torch', 'nerfstudio', 'multiprocessing.popen_spawn_posix')))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout, proc.stderr
    return proc.stdout.splitlines()


def test_more_gpus_than_the_driver_lists_are_refused_before_torch_is_imported(tmp_path):
    """The commonest impossible launch fails at once: no import of torch or nerfstudio, no rank
    spawned (the driver's count is stubbed to 2: the CPU machines have none)."""
    stub = "import splatfacto_dist.launching.gpu_count as g\ng.physical_gpus = lambda: 2\n"
    argv = ["splatfacto-dist", "--machine.num-devices", "4", "--data", str(tmp_path)]
    assert _refused_at_once(argv, stub) == [
        "error: --machine.num-devices 4 but only 2 GPU(s) are visible on this machine"
        " (for tests and memory measurements, --ranks-per-gpu K lets K ranks share one)",
        "exit 2 False False False",
    ]


def test_a_refused_option_value_is_refused_before_torch_is_imported(tmp_path):
    """Options splatfacto-dist refuses at any value but a literal default fail at once too, in the
    words of the check on the parsed config (test_options compares the two)."""
    argv = ["splatfacto-dist", "--pipeline.model.enable-collider", "False", "colmap", "--data", str(tmp_path)]
    assert _refused_at_once(argv) == [
        "error: --pipeline.model.enable-collider has no effect on Gaussian splatting, which renders no ray"
        " bundles (stock neither); leave it at True",
        "exit 2 False False False",
    ]


def _parsed(args: list):
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    return tyro.cli(AnnotatedBaseConfigUnion, args=args)


def test_prespawned_ranks_train_the_parsed_job(tmp_path, scene, capfd):
    """The ranks `splatfacto-dist-train` starts before parsing (on CUDA) run the job they are handed."""
    from splatfacto_dist.launching import launch
    from splatfacto_dist.launching.prespawn import Prespawned

    config = _parsed(train_command(tmp_path, scene, 2, ARGS, launcher=()))
    ranks = Prespawned(2)
    launch.launch(config, ranks)
    out = capfd.readouterr().out
    _finished(out, 2)
    assert list(Path(tmp_path).glob("*/splatfacto-dist/run/nerfstudio_models/*.ckpt"))
    records = read_rank_records(next(Path(tmp_path).glob("*/splatfacto-dist/run")))
    stages = ["imports", "command line", "process group", "setup", "images", "first step"]
    assert [r["rank"] for r in records] == [0, 1]
    assert all(list(r["startup_stages"]) == stages and r["startup_s"] > 0 for r in records), records


def test_a_failing_prespawned_rank_stops_the_others(tmp_path, scene, monkeypatch):
    """Rank 1 fails at step 3 (planted); the launcher stops rank 0 and says rank 1's cause first."""
    import os
    import time

    import pytest
    from conftest import plant_failure

    from splatfacto_dist.launching import launch
    from splatfacto_dist.launching.prespawn import Prespawned, RankFailed

    monkeypatch.setenv("PYTHONPATH", f"{plant_failure(tmp_path / 'plant')}:{os.environ.get('PYTHONPATH', '')}")
    config = _parsed(train_command(tmp_path, scene, 2, ["--max-num-iterations", "400"], launcher=()))
    ranks = Prespawned(2)  # spawned: each imports the planted sitecustomize
    start = time.monotonic()
    with pytest.raises(RankFailed) as failed:
        launch.launch(config, ranks)
    assert failed.value.code == 1
    message = failed.value.message
    assert message.startswith("rank 1 failed: RuntimeError: planted failure of rank 1 at step 3"), message
    assert "1 (exit code 1)" in message, message
    assert time.monotonic() - start < 120
    assert not any(p.is_alive() for p in ranks._procs)


def test_prespawned_ranks_that_are_not_needed_exit_when_dismissed():
    """A wrong guess (or a refused command line) costs only the idle processes: told to exit, and
    ended after a short grace if still importing."""
    import time

    from splatfacto_dist.launching.prespawn import Prespawned

    ranks = Prespawned(2)
    start = time.monotonic()
    ranks.dismiss()
    assert not any(p.is_alive() for p in ranks._procs)
    assert all(p.exitcode in (0, -signal.SIGTERM) for p in ranks._procs), [p.exitcode for p in ranks._procs]
    assert time.monotonic() - start < 30
    ranks.dismiss()  # idempotent, as the CLI's cleanup relies on
