"""Reading options off a raw command line, before (or without) parsing it.

Standard library only: the launcher reads these before nerfstudio is imported, and the benchmark
without importing the launcher.
"""

from __future__ import annotations

from typing import List, Optional


def option(argv: List[str], *names: str) -> Optional[str]:
    """The last value given to any of `names` (as `--name value` or `--name=value`), as tyro keeps it."""
    value = None
    for i, token in enumerate(argv):
        key, eq, inline = token.partition("=")
        if key in names:
            value = inline if eq else (argv[i + 1] if i + 1 < len(argv) else None)
    return value
