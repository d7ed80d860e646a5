"""Reading options off a raw command line, before (or without) parsing it.

Standard library only: the launcher reads these before nerfstudio is imported, and the benchmark
without importing the launcher.
"""

from __future__ import annotations

from typing import List, Optional


def option(argv: List[str], *names: str) -> Optional[str]:
    """The last value given to any of `names` (as `--name value` or `--name=value`), as tyro keeps it."""
    given = values(argv, *names)
    return given[-1] if given else None


def values(argv: List[str], *names: str) -> List[str]:
    """Every value given to any of `names`, in order (one option may appear at several levels of
    the command, as --data does for the trainer and for the dataparser)."""
    found = []
    for i, token in enumerate(argv):
        key, eq, inline = token.partition("=")
        if key in names and (eq or i + 1 < len(argv)):
            found.append(inline if eq else argv[i + 1])
    return found
