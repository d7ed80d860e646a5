"""The one-line refusals that are made twice: from the raw command line (`cli`, before any
import of torch) and from the parsed config (`preflight` and `options`, for what the raw line
cannot show, such as a --load-config). One wording for both. Standard library only."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple

from splatfacto_dist.launching.devices import gpus_needed


def too_many_gpus(requested: int, visible: int, per_gpu: int = 1) -> Optional[str]:
    if gpus_needed(requested, per_gpu) <= visible:
        return None
    if per_gpu > 1:
        return (
            f"--machine.num-devices {requested} at --ranks-per-gpu {per_gpu} needs {gpus_needed(requested, per_gpu)}"
            f" GPUs but only {visible} GPU(s) are visible on this machine"
        )
    return (
        f"--machine.num-devices {requested} but only {visible} GPU(s) are visible on this machine"
        " (for tests and memory measurements, --ranks-per-gpu K lets K ranks share one)"
    )


def missing_data(path: Optional[Path]) -> Optional[str]:
    if path is not None and path.exists():
        return None
    return f"data path {path} does not exist (pass --data DIR or the dataparser's --data)"


# Counts that must be positive: the flag, where the parsed config keeps it, and what it counts.
COUNTS: Tuple[Tuple[str, Tuple[str, ...], str], ...] = (
    ("--machine.num-devices", ("machine", "num_devices"), "processes (GPUs or CPU ranks) per machine"),
    ("--machine.num-machines", ("machine", "num_machines"), "machines"),
    ("--max-num-iterations", ("max_num_iterations",), "steps to train (images with --schedule-unit images)"),
    (
        "--pipeline.datamanager.cameras-per-rank",
        ("pipeline", "datamanager", "cameras_per_rank"),
        "images per rank and step",
    ),
    (
        "--steps-per-save",
        ("steps_per_save",),
        "steps between checkpoints (one above --max-num-iterations saves only at the end)",
    ),
)


def nonpositive_count(flag: str, value: object, counts: str) -> Optional[str]:
    """The refusal of a count below 1, or None."""
    if not isinstance(value, int) or isinstance(value, bool) or value >= 1:
        return None
    return f"{flag} {value}: give a positive number of {counts}"


INERT = "{flag} {why}; leave it at {default!r}"


@dataclass(frozen=True)
class LiteralRefusal:
    """An option refused at any value but its default, a literal: the raw command line shows the
    refusal as surely as the parsed config does (`options` builds its rule from this entry)."""

    flag: str
    default: object
    why: str
    wording: str = INERT

    @property
    def spellings(self) -> Tuple[str, str]:
        """The flag as nerfstudio prints it, and with underscores, which tyro accepts as well."""
        return self.flag, "--" + self.flag[2:].replace("-", "_")

    @property
    def path(self) -> Tuple[str, ...]:
        """The config sections above the field, from the trainer config down."""
        return tuple(self.flag[2:].split(".")[:-1])

    @property
    def field(self) -> str:
        return self.flag.rsplit(".", 1)[-1].lstrip("-").replace("-", "_")

    def line(self, value: object) -> str:
        return self.wording.format(flag=self.flag, why=self.why, default=self.default, value=value)


_DM = "--pipeline.datamanager."
_M = "--pipeline.model."
NO_RAYS = "has no effect on Gaussian splatting, which renders no ray bundles (stock neither)"
FULL_IMAGE = "is not read by full-image datamanagers (stock neither)"

# In the order of `options.SECTIONS` and its tables, so that both paths name the same option first.
LITERAL: Tuple[LiteralRefusal, ...] = (
    LiteralRefusal("--prompt", None, "splatfacto takes no text prompt; leave it unset", wording="{flag}: {why}"),
    LiteralRefusal(_DM + "masks-on-gpu", False, "has no effect on full-image training (stock neither)"),
    LiteralRefusal(_DM + "images-on-gpu", False, "has no effect on full-image training (stock neither)"),
    LiteralRefusal(_DM + "eval-num-images-to-sample-from", -1, FULL_IMAGE),
    LiteralRefusal(_DM + "eval-num-times-to-repeat-images", -1, FULL_IMAGE),
    LiteralRefusal(
        _DM + "train-cameras-sampling-strategy",
        "random",
        "is not supported: splatfacto-dist deals cameras to ranks in seeded random shuffles; use random",
        wording="{flag} {value} {why}",
    ),
    LiteralRefusal(_DM + "fps-reset-every", 100, "only applies to fps sampling, which splatfacto-dist does not do"),
    LiteralRefusal(_M + "enable-collider", True, NO_RAYS),
    LiteralRefusal(_M + "eval-num-rays-per-chunk", 4096, NO_RAYS),
    LiteralRefusal(_M + "prompt", None, "is not read by splatfacto (stock neither)"),
    LiteralRefusal(
        _M + "n-split-samples", 2, "is not read: gsplat's densification always splits a Gaussian in two (stock too)"
    ),
    LiteralRefusal(_M + "images-per-step", 1, "is set by the trainer from the GPUs and cameras per rank"),
)

_UNREAD = object()


def _read(raw: str, default: object) -> object:
    """`raw` as tyro reads a value of the default's type (nerfstudio's bools take True or False),
    or _UNREAD where tyro would not, or might read it otherwise: tyro's own error tells then."""
    if raw.startswith("--"):  # argparse reads the next option here, not a value
        return _UNREAD
    if isinstance(default, bool):
        return {"True": True, "False": False}.get(raw, _UNREAD)
    if isinstance(default, int):
        try:
            return int(raw)
        except ValueError:
            return _UNREAD
    if default is None:
        return None if raw == "None" else raw
    return raw


def refused_value(entry: LiteralRefusal, raw: str) -> Optional[str]:
    """The refusal of `raw` given to `entry`'s flag on the command line, or None where the parsed
    config would not refuse it (the default) or the raw text cannot tell (tyro reads it)."""
    value = _read(raw, entry.default)
    if value is _UNREAD or value == entry.default:
        return None
    return entry.line(value)
