"""`splatfacto-dist-train`: ns-train's command line, on CPU, on GPUs, under torchrun and SLURM.

This module imports only the standard library. Parsing the command line means importing
nerfstudio (seconds; every installed method, unless the method is splatfacto-dist), so what the
raw arguments already show to be impossible is refused first; when they say this machine will run
several CUDA ranks, those are started before the parse (`prespawn`), so that their own imports
overlap it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, Mapping, Optional

from splatfacto_dist.launching import refusals
from splatfacto_dist.launching.argv import option, values
from splatfacto_dist.launching.gpu_count import visible_gpus
from splatfacto_dist.launching.prespawn import Prespawned, RankFailed


def _parse_decides(argv: List[str]) -> bool:
    """Help, or a config file the raw arguments do not show: only the parsed config can tell."""
    return any(token in ("-h", "--help") or token.startswith("--load-config") for token in argv)


def guess_local_ranks(argv: List[str], environ: Mapping[str, str]) -> int:
    """How many CUDA ranks this command will spawn here, judged from the raw arguments; 0 when none
    or unsure (an external launcher, a config file, help). A wrong guess is corrected after parsing."""
    if "RANK" in environ or int(environ.get("SLURM_NTASKS", "1")) > 1:
        return 0
    if _parse_decides(argv):
        return 0
    if (option(argv, "--machine.device-type", "--machine.device_type") or "cuda") != "cuda":
        return 0
    devices = option(argv, "--machine.num-devices", "--machine.num_devices") or "1"
    return int(devices) if devices.isdigit() and int(devices) > 1 else 0


def literal_refusal(argv: List[str]) -> Optional[str]:
    """The first option of a splatfacto-dist method given a value the parsed config would refuse
    (`refusals.LITERAL`), in its words, or None. Other methods take these options as they are."""
    if not (argv and argv[0].startswith("splatfacto-dist")):
        return None
    for entry in refusals.LITERAL:
        raw = option(argv, *entry.spellings)
        error = None if raw is None else refusals.refused_value(entry, raw)
        if error:
            return error
    return None


def refusal_before_parsing(argv: List[str], environ: Mapping[str, str], local_ranks: int) -> Optional[str]:
    """The commonest impossible launches, refused from the raw arguments in well under a second
    (parsing means seconds of imports): an option value splatfacto-dist refuses, more GPUs than
    this machine shows, a data path that does not exist. None when the raw arguments cannot tell;
    the checks after parsing still run."""
    if _parse_decides(argv):
        return None
    error = literal_refusal(argv)
    if error:
        return error
    visible = visible_gpus(environ) if local_ranks else None
    per_gpu = option(argv, "--ranks-per-gpu", "--ranks_per_gpu") or "1"
    if visible is not None and per_gpu.isdigit():
        error = refusals.too_many_gpus(local_ranks, visible, int(per_gpu))
        if error:
            return error
    given = values(argv, "--data", "--pipeline.datamanager.data")  # whichever nerfstudio would use
    errors = [refusals.missing_data(Path(path)) for path in given]
    return errors[0] if given and all(errors) else None


def entrypoint() -> None:
    """Refuse what the raw arguments show to be impossible, start the ranks if they call for
    several CUDA devices, then parse and launch."""
    count = guess_local_ranks(sys.argv[1:], os.environ)
    error = refusal_before_parsing(sys.argv[1:], os.environ, count)
    if error:
        print(f"error: {error}", flush=True)
        raise SystemExit(2)
    ranks = Prespawned(count) if count else None
    try:
        from splatfacto_dist.launching import launch

        launch.parse_and_launch(ranks)
    except RankFailed as err:
        print(f"error: {err.message}", file=sys.stderr, flush=True)
        raise
    finally:
        if ranks is not None:
            ranks.dismiss()


if __name__ == "__main__":
    entrypoint()
