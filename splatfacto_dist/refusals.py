"""The one-line refusals that are made twice: from the raw command line (`cli`, before any
import of torch) and from the parsed config (`preflight`, for what the raw line cannot show, such
as a --load-config). One wording for both. Standard library only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def too_many_gpus(requested: int, visible: int) -> Optional[str]:
    if requested <= visible:
        return None
    return f"--machine.num-devices {requested} but only {visible} GPU(s) are visible on this machine"


def missing_data(path: Optional[Path]) -> Optional[str]:
    if path is not None and path.exists():
        return None
    return f"data path {path} does not exist (pass --data DIR or the dataparser's --data)"
