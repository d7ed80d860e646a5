"""A training run's command line, built in one place: the benchmark (`benchmarking.bench`), the
capacity benchmark (`benchmarks/capacity.py`) and the tests (`tests/conftest.py`) start their runs
with `train_argv`, so the shape tyro parses (launcher, method, its options, the dataparser's
subcommand and options, the data) is written once.

Standard library only: the benchmark imports it without importing the launcher.
"""

from __future__ import annotations

import os
import sys
from typing import List, Sequence, Union

# `splatfacto-dist-train` as this interpreter runs it: the checkout's package, whatever is on PATH.
CLI = (sys.executable, "-m", "splatfacto_dist.cli")
METHOD = "splatfacto-dist"


def train_argv(
    launcher: Sequence[str],
    method: str,
    options: Sequence[str],
    dataparser: Sequence[str],
    data: Union[str, os.PathLike],
) -> List[str]:
    """[*launcher, method, *options, *dataparser, "--data", data]: `launcher` the program (and its own
    arguments: torchrun's, or none for the arguments tyro parses), `method` its subcommand, `options`
    the method's (the trainer's, the pipeline's, the model's), `dataparser` its subcommand and
    options (["colmap"]), and last the dataparser's --data."""
    return [*launcher, method, *options, *dataparser, "--data", str(data)]


def layout_args(layout: str) -> List[str]:
    """The trainer options selecting a Gaussian layout; none for the default, replicated, so that a
    benchmark runs on trainers that predate the option."""
    return [] if layout == "replicated" else ["--pipeline.model.gaussian-layout", layout]
