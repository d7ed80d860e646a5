"""The package's import graph has no cycle: every module can be read (and imported) after the
modules it names, function-level imports included. Imports under `if TYPE_CHECKING:` are left out:
annotations never import at run time."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, List, Set

PACKAGE = Path(__file__).resolve().parents[1] / "splatfacto_dist"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(source: str, modules: Set[str]) -> Set[str]:
    """The package's modules that `source` imports anywhere (also `importlib.import_module("...")`)."""
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            found.add(str(node.args[0].value))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {name for name in found if name in modules}


def with_packages(graph: Dict[str, Set[str]]) -> Dict[str, Set[str]]:
    """`graph` plus the imports Python makes on its own: importing a.b.c runs a/__init__ and
    a/b/__init__ first, unless the importer is itself inside that package (then it is already
    being imported)."""
    out = {}
    for module, targets in graph.items():
        edges = set(targets)
        for target in targets:
            parts = target.split(".")
            for end in range(1, len(parts)):
                package = ".".join(parts[:end])
                if package in graph and not (module == package or module.startswith(package + ".")):
                    edges.add(package)
        out[module] = edges
    return out


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    """One cycle of `graph` (its modules in import order, the first repeated at the end), or []."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def walk(node: str) -> List[str]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                cycle = walk(nxt)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = walk(node)
            if cycle:
                return cycle
    return []


def test_the_cycle_finder_finds_cycles_through_function_level_imports():
    modules = {"pkg.a", "pkg.b", "pkg.c"}
    a = "import os\nfrom pkg import b\n"
    b = "def f():\n    from pkg.c import thing\n"
    c = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import b\ndef g():\n    import pkg.a\n"
    graph = {"pkg.a": imports_of(a, modules), "pkg.b": imports_of(b, modules), "pkg.c": imports_of(c, modules)}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a"}}
    assert find_cycle(graph) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    graph["pkg.c"] = set()
    assert find_cycle(graph) == []
    # Through a package's __init__: pkg.a imports pkg.sub.x, whose package imports pkg.a back.
    graph = {"pkg": set(), "pkg.a": {"pkg.sub.x"}, "pkg.sub": {"pkg.a", "pkg.sub.x"}, "pkg.sub.x": set()}
    assert find_cycle(graph) == []
    assert find_cycle(with_packages(graph)) == ["pkg.a", "pkg.sub", "pkg.a"]


def test_no_module_of_the_package_imports_itself_back():
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph = {_module_name(path): imports_of(path.read_text(), modules) - {_module_name(path)} for path in paths}
    assert sum(len(targets) for targets in graph.values()) > 50  # the graph was read
    assert find_cycle(with_packages(graph)) == []


def test_a_non_editable_install_ships_every_package():
    """pyproject lists packages by hand (for lpips_stub, a folder without __init__): a new package
    missing from the list would install without its modules (the GPU machines install that way)."""
    import re

    line = re.search(r"^packages = \[(.*)\]$", (PACKAGE.parent / "pyproject.toml").read_text(), re.M)
    listed = {name.strip().strip('"') for name in line[1].split(",")} if line else set()
    folders = {_module_name(path.parent / "__init__.py") for path in PACKAGE.rglob("*.py")}
    assert folders == listed


# The classes a run's config.yml names by module path (nerfstudio loads them back for resume, ns-eval,
# ns-export and the viewer): runs written before any refactor must still find them there.
CONFIG_PATHS = {
    "splatfacto_dist.trainer.DistTrainerConfig": "splatfacto_dist.engine.trainer.DistTrainerConfig",
    "splatfacto_dist.trainer.DistTrainer": "splatfacto_dist.engine.trainer.DistTrainer",
    "splatfacto_dist.pipeline.DistPipelineConfig": "splatfacto_dist.engine.pipeline.DistPipelineConfig",
    "splatfacto_dist.pipeline.DistPipeline": "splatfacto_dist.engine.pipeline.DistPipeline",
    "splatfacto_dist.datamanager.ShardedFullImageDatamanagerConfig": (
        "splatfacto_dist.data.datamanager.ShardedFullImageDatamanagerConfig"
    ),
    "splatfacto_dist.datamanager.ShardedFullImageDatamanager": "splatfacto_dist.data.datamanager.ShardedFullImageDatamanager",
    "splatfacto_dist.model.SplatfactoDistModelConfig": "splatfacto_dist.models.model.SplatfactoDistModelConfig",
    "splatfacto_dist.model.SplatfactoDistModel": "splatfacto_dist.models.model.SplatfactoDistModel",
    "splatfacto_dist.scaling.AdamConfig": "splatfacto_dist.engine.scaling.AdamConfig",
}


def test_earlier_runs_config_paths_still_resolve():
    """A config.yml written before the package's rooms (its !!python tags) loads with nerfstudio's
    own loader, to the classes now in their place; today's paths load as they are."""
    import yaml

    for paths in (list(CONFIG_PATHS), list(CONFIG_PATHS.values())):
        tags = "\n".join(f"- !!python/name:{path} ''" for path in paths)
        loaded = yaml.load(tags, Loader=yaml.Loader)
        assert [f"{c.__module__}.{c.__qualname__}" for c in loaded] == list(CONFIG_PATHS.values())


def _contract_members(cls) -> Dict[str, object]:
    import inspect

    members = {name: inspect.signature(value) for name, value in vars(cls).items() if inspect.isfunction(value)}
    members.update({name: "attribute" for name in getattr(cls, "__annotations__", {})})
    return {name: sig for name, sig in members.items() if not name.startswith("_")}


def test_both_layouts_answer_every_call_of_the_contract_with_its_signature():
    """The replicated and sharded layouts implement `GaussianLayout` side by side (neither inherits the
    other): every call with the contract's parameters, every attribute; a planted layout missing a call
    or renaming a parameter is caught."""
    import inspect

    from splatfacto_dist.layouts.contract import GaussianLayout
    from splatfacto_dist.layouts.replicated import ReplicatedLayout
    from splatfacto_dist.layouts.sharded import ShardedLayout

    contract = _contract_members(GaussianLayout)
    assert {"render", "stats_to_owners", "reduce_stats", "after_refine", "gather", "hold"} <= contract.keys()

    def mismatches(cls) -> List[str]:
        layout = cls()
        wrong = []
        for name, want in contract.items():
            if not hasattr(layout, name):
                wrong.append(f"{name} missing")
            elif want != "attribute" and list(inspect.signature(getattr(cls, name)).parameters) != list(
                want.parameters  # type: ignore[attr-defined]
            ):
                wrong.append(f"{name} has other parameters")
        return wrong

    assert mismatches(ReplicatedLayout) == [] and mismatches(ShardedLayout) == []
    assert ReplicatedLayout not in ShardedLayout.__mro__ and ShardedLayout not in ReplicatedLayout.__mro__

    class Planted(ReplicatedLayout):
        def gather(self, params, optimisers, ids, statistics):  # a renamed parameter
            return None

    assert mismatches(Planted) == ["gather has other parameters"]
