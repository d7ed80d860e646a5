"""Multi-process training where nerfstudio's launcher cannot go: CPU over gloo, torchrun, SLURM.

`splatfacto-dist-train` (see `cli`) takes exactly ns-train's command line (any method, all
`--machine.*` settings). It runs `--machine.num-devices` processes per machine (gloo on CPU, NCCL
on CUDA), or, when started by torchrun or srun, joins the job those launchers describe in the
environment. Misconfigurations are reported in one line before any training or GPU work starts.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional

import torch.multiprocessing as mp
import tyro
import yaml
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from splatfacto_dist.launching.preflight import LaunchError, check_job, output_refusal
from splatfacto_dist.launching.prespawn import RankFailed
from splatfacto_dist.launching.rank import Job, run_rank
from splatfacto_dist.launching.signals import PREEMPTED_EXIT, forwarded_to
from splatfacto_dist.reporting.records import first_failure

if TYPE_CHECKING:
    from splatfacto_dist.launching.prespawn import Prespawned


def _env_job() -> Optional[Job]:
    """The job described by torchrun (RANK/WORLD_SIZE/LOCAL_RANK) or SLURM (SLURM_*) variables."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env:
        rank, world, local = int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"])
        per_machine = int(env.get("LOCAL_WORLD_SIZE", world))
        return Job(world, per_machine, rank // per_machine, "env://", local, rank)
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world, local = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"]), int(env["SLURM_LOCALID"])
        per_machine = world // int(env.get("SLURM_NNODES", "1"))
        if "MASTER_ADDR" not in env:
            raise LaunchError(
                "under SLURM set MASTER_ADDR (and MASTER_PORT) to the first node, see configs/slurm_*.sbatch"
            )
        url = f"tcp://{env['MASTER_ADDR']}:{env.get('MASTER_PORT', '29500')}"
        return Job(world, per_machine, rank // per_machine, url, local, rank)
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def launch(config: TrainerConfig, ranks: Optional[Prespawned] = None) -> None:
    """Run `config` on this machine's share of the job (see the module docstring); `ranks`, if
    given, are processes already started for it."""
    machine = config.machine
    job = _env_job()
    if job is None:
        url = machine.dist_url
        world = machine.num_machines * machine.num_devices
        if url == "auto":
            if machine.num_machines > 1:
                raise LaunchError("--machine.dist-url auto only works on one machine; give tcp://HOST:PORT")
            url = f"tcp://127.0.0.1:{_free_port()}"
        job = Job(world, machine.num_devices, machine.machine_rank, url)
    check_job(config, job)
    if job.local_rank is not None:
        run_rank(job.local_rank, config, job)
    elif job.num_devices_per_machine == 1:
        run_rank(0, config, job)
    elif ranks is not None and len(ranks) == job.num_devices_per_machine:
        ranks.run(config, job)
    else:
        # CPU ranks fork and inherit the imported modules; CUDA ranks must spawn (nerfstudio's
        # imports initialize CUDA in this process, which a forked child cannot reuse).
        method = "spawn" if config.machine.device_type == "cuda" else "fork"
        ranks_started = mp.start_processes(
            run_rank, nprocs=job.num_devices_per_machine, args=(config, job), start_method=method, join=False
        )
        with forwarded_to([process.pid for process in ranks_started.processes]):
            try:
                while not ranks_started.join():  # raises once a rank fails, the others stopped
                    pass
            except mp.ProcessExitedException as ended:
                if ended.exit_code == PREEMPTED_EXIT:  # the ranks saved and said so
                    raise SystemExit(PREEMPTED_EXIT) from None
                if ended.exit_code < 0:  # killed by a signal: it wrote no record, and its peers lost it
                    raise RankFailed(str(ended)) from None
                raise RankFailed(first_failure(config.get_base_dir()) or str(ended)) from None
            except mp.ProcessRaisedException as raised:
                print(raised, file=sys.stderr, flush=True)  # the traceback of the rank torch noticed first
                raise RankFailed(first_failure(config.get_base_dir()) or "a rank failed (above)") from None


def main(config: TrainerConfig, ranks: Optional[Prespawned] = None) -> None:
    """ns-train's main(), with this module's launcher."""
    if config.data:
        config.pipeline.datamanager.data = config.data
    if config.load_config:
        config = yaml.load(config.load_config.read_text(), Loader=yaml.Loader)
    if getattr(config, "auto_resume", False):
        resume_automatically(config)
    config.set_timestamp()
    try:
        refusal = output_refusal(Path(config.output_dir))  # before anything is written there
        if refusal:
            raise LaunchError(refusal)
        if comm_rank_from_env() == 0:
            config.print_to_terminal()
            config.save_config()
        launch(config, ranks)
    except LaunchError as err:
        CONSOLE.print(f"[bold red]error:[/bold red] {err.message}", soft_wrap=True)
        raise


def resume_automatically(config: TrainerConfig) -> None:
    """--auto-resume: point `config` at the newest run folder of its experiment that holds a
    checkpoint (its timestamp, so the run goes on in that folder, and its checkpoints), or say in
    one line that the run starts fresh. Every process of a job sees the same folders, so each
    decides alike."""
    config.set_experiment_name()
    experiment = Path(config.output_dir) / f"{config.experiment_name}" / f"{config.method_name}"
    saved = {
        run: [p.stat().st_mtime for p in (run / config.relative_model_dir).glob("step-*.ckpt")]
        for run in experiment.glob("*")
    }
    runs = {run: max(times) for run, times in saved.items() if times}  # each run's newest checkpoint
    talk = comm_rank_from_env() == 0
    if not runs:
        if talk:
            CONSOLE.print(f"--auto-resume: no checkpoint under {experiment}, so training from scratch.")
        return
    newest = max(runs, key=runs.__getitem__)
    config.timestamp = newest.name
    config.load_dir = newest / config.relative_model_dir
    if talk:
        CONSOLE.print(f"--auto-resume: continuing the run in {newest}")


def comm_rank_from_env() -> int:
    """The global rank an external launcher gave this process (0 when none did)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def parse(argv: List[str]) -> TrainerConfig:
    """ns-train's command line (METHOD, then its options) as a config.

    When METHOD is one of ours, only its config is parsed against: ns-train's union of all
    methods imports every installed method and plugin first, the longest part of the command-line
    process's start-up, which pre-spawned ranks wait for. Help, and any other method, go through
    the full union, so the result is the same either way.
    """
    tyro.extras.set_accent_color("bright_yellow")
    ours = ("splatfacto-dist", "splatfacto-dist-big")
    if argv and argv[0] in ours and not any(token in ("-h", "--help") for token in argv):
        from splatfacto_dist.method import splatfacto_dist, splatfacto_dist_big

        method = splatfacto_dist if argv[0] == "splatfacto-dist" else splatfacto_dist_big
        config_type = tyro.conf.SuppressFixed[tyro.conf.FlagConversionOff[type(method.config)]]
        return tyro.cli(config_type, default=method.config, args=argv[1:], description=__doc__)
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion  # heavy: the CLI process only

    return tyro.cli(AnnotatedBaseConfigUnion, args=argv, description=__doc__)


def parse_and_launch(ranks: Optional[Prespawned] = None) -> None:
    """Parse ns-train's command line and run it; `ranks` as in `launch`."""
    main(parse(sys.argv[1:]), ranks)
