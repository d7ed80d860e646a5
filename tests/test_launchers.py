"""torchrun and SLURM map onto the same job as --machine.* settings (gloo, CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import BIN, TINY, free_port

ARGS = [*TINY, "--max-num-iterations", "60", "--verify-replicas-every", "5", "--timestamp", "run"]


def _finished(log: str, ranks: int) -> None:
    for r in range(ranks):
        assert f"rank {r}: trains on" in log, log[-3000:]
    assert "Training Finished" in log


def test_torchrun(tmp_path, scene):
    cmd = [str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2", "-m", "splatfacto_dist.launch",
           "splatfacto-dist", *ARGS, "--output-dir", str(tmp_path), "colmap", "--data", str(scene)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    _finished(proc.stdout + proc.stderr, 2)
    assert list(Path(tmp_path).glob("*/splatfacto-dist/run/nerfstudio_models/*.ckpt"))


def test_slurm_environment(tmp_path, scene):
    port = free_port()
    procs = []
    for rank in range(2):
        env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NTASKS="2", SLURM_NNODES="1",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "splatfacto_dist.launch", "splatfacto-dist", *ARGS, "--output-dir", str(tmp_path),
               "colmap", "--data", str(scene)]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-2000:] for log in logs)
    _finished("\n".join(logs), 2)
