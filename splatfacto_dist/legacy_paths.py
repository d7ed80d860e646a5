"""Module paths that runs' config.yml files name from before the package was laid out in rooms.

nerfstudio writes a run's config.yml with a `!!python/object:` tag per config class (the module
path of the class), and loads it back for resume, ns-eval, ns-export, ns-render and the viewer.
Runs written before the move name `splatfacto_dist.trainer` and its siblings: importing one of
those names gives the module now in its place, so those runs still load as they are.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import Optional, Sequence

MOVED = {
    "splatfacto_dist.trainer": "splatfacto_dist.engine.trainer",
    "splatfacto_dist.pipeline": "splatfacto_dist.engine.pipeline",
    "splatfacto_dist.scaling": "splatfacto_dist.engine.scaling",
    "splatfacto_dist.datamanager": "splatfacto_dist.data.datamanager",
    "splatfacto_dist.model": "splatfacto_dist.models.model",
}


class _Alias(importlib.abc.Loader):
    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec):  # type: ignore[override]
        return importlib.import_module(self.target)

    def exec_module(self, module) -> None:  # the target module is already executed
        pass


class MovedModules(importlib.abc.MetaPathFinder):
    """Finds each old name in `MOVED` as the module that now holds its classes."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):  # type: ignore[override]
        if fullname not in MOVED:
            return None
        return importlib.util.spec_from_loader(fullname, _Alias(MOVED[fullname]))


def install() -> None:
    """Put the finder on the import path once (the package's `__init__` calls it)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
