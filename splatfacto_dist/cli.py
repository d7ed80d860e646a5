"""`splatfacto-dist-train`: ns-train's command line, on CPU, on GPUs, under torchrun and SLURM.

This module imports only the standard library. Parsing the command line means importing
nerfstudio (seconds; every installed method, unless the method is splatfacto-dist); when the
arguments say this machine will run several CUDA ranks, they are started first (`prespawn`), so
that their own imports overlap the parse.
"""

from __future__ import annotations

import os
import sys
from typing import List, Mapping

from splatfacto_dist.argv import option
from splatfacto_dist.gpu_count import too_many_gpus_message, visible_gpus
from splatfacto_dist.prespawn import Prespawned, RankFailed


def guess_local_ranks(argv: List[str], environ: Mapping[str, str]) -> int:
    """How many CUDA ranks this command will spawn here, judged from the raw arguments; 0 when none
    or unsure (an external launcher, a config file, help). A wrong guess is corrected after parsing."""
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) > 1:
        return 0
    if any(token in ("-h", "--help") or token.startswith("--load-config") for token in argv):
        return 0
    if (option(argv, "--machine.device-type", "--machine.device_type") or "cuda") != "cuda":
        return 0
    devices = option(argv, "--machine.num-devices", "--machine.num_devices") or "1"
    return int(devices) if devices.isdigit() and int(devices) > 1 else 0


def entrypoint() -> None:
    """Refuse more GPUs than there are, or start the ranks if the arguments call for several CUDA
    devices; then parse and launch."""
    count = guess_local_ranks(sys.argv[1:], os.environ)
    visible = visible_gpus(os.environ) if count else None
    if visible is not None and count > visible:
        print(f"error: {too_many_gpus_message(count, visible)}", flush=True)
        raise SystemExit(2)
    ranks = Prespawned(count) if count else None
    try:
        from splatfacto_dist import launch

        launch.parse_and_launch(ranks)
    except RankFailed as err:
        print(f"error: {err.message}", file=sys.stderr, flush=True)
        raise
    finally:
        if ranks is not None:
            ranks.dismiss()


if __name__ == "__main__":
    entrypoint()
