"""The documentation: README's size and set-up commands, no development-machine paths, links that
resolve, and docs/benchmarks.md's tables equal to what benchmarks/bench_tables.py makes from the raw
JSON under docs/bench/."""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BENCHMARKS = ROOT / "docs" / "benchmarks.md"
DOCS = [README] + sorted((ROOT / "docs").glob("*.md"))
MACHINE_PATHS = ("../shared", "/work/", "/root/", "/tmp/")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")


def _tables_module():
    spec = importlib.util.spec_from_file_location("bench_tables", ROOT / "benchmarks" / "bench_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench_tables = _tables_module()


def test_readme_is_short() -> None:
    assert len(README.read_text().splitlines()) <= 150


def test_readme_test_command_is_what_ci_runs() -> None:
    """CI (.ci/run) runs the README's test command; only pip's -q (quieter CI logs) may differ."""
    readme = [
        line.strip() for line in README.read_text().splitlines() if line.startswith("    bash configs/system_deps.sh")
    ]
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.startswith("bash configs/")]
    assert len(readme) == 1 and len(ci) == 1
    assert ci[0].replace("pip install -q ", "pip install ") == readme[0]
    assert 'pytest -m "not gpu"' in readme[0]


def test_readme_keeps_the_demo_command_and_picture() -> None:
    text = README.read_text()
    demo = 'python3 -m venv .venv && . .venv/bin/activate && pip install --no-compile -e ".[pinned]" && splatfacto-dist-demo'
    assert f"\n    {demo}\n" in text
    assert "(docs/demo.png)" in text


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_no_development_machine_paths(doc: Path) -> None:
    text = doc.read_text()
    assert [p for p in MACHINE_PATHS if p in text] == []


def _slug(heading: str) -> str:
    """GitHub's anchor for a markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(doc: Path) -> set:
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", doc.read_text(), re.MULTILINE)}


def broken_links(doc: Path) -> list:
    """Relative links of `doc` whose file does not exist, or whose #anchor is no heading of it."""
    broken = []
    for match in LINK.finditer(doc.read_text()):
        target = match.group(1) or match.group(2)
        if re.match(r"^[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        resolved = (doc.parent / path).resolve() if path else doc
        if not resolved.exists():
            broken.append(target)
        elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
            broken.append(target)
    return broken


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_relative_links_resolve(doc: Path) -> None:
    assert broken_links(doc) == []


def test_link_check_notices_a_missing_file_and_anchor(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# A heading\n")
    doc = tmp_path / "doc.md"
    doc.write_text("[ok](other.md#a-heading) [gone](missing.md) [bad](other.md#no-such) ![pic](pic.png)\n")
    assert broken_links(doc) == ["missing.md", "other.md#no-such", "pic.png"]


def test_every_generated_table_is_in_benchmarks_md() -> None:
    tables = bench_tables.generate()
    assert set(tables) == set(bench_tables.TABLES)
    assert bench_tables.missing(BENCHMARKS.read_text(), tables) == []


def test_table_check_notices_an_altered_figure_in_the_page() -> None:
    doc = BENCHMARKS.read_text()
    tables = bench_tables.generate()
    altered = doc.replace("| 1,617 (0.445x) |", "| 1,618 (0.445x) |", 1)
    assert altered != doc
    assert bench_tables.missing(altered, tables) == ["memory"]


def test_table_check_notices_an_altered_raw_result(tmp_path: Path) -> None:
    root = tmp_path / "bench"
    shutil.copytree(ROOT / "docs" / "bench", root, ignore=shutil.ignore_patterns("*.png"))
    path = root / "speed_1gpu" / "results.json"
    data = json.loads(path.read_text())
    data["scenes"]["fox"]["dist"]["loop_s"] += 10.0
    path.write_text(json.dumps(data))
    assert bench_tables.missing(BENCHMARKS.read_text(), bench_tables.generate(root)) == ["speed_1gpu"]


def test_raw_results_name_their_command_machine_and_commit() -> None:
    for name in ("memory", "capacity"):
        data = json.loads((ROOT / "docs" / "bench" / name / "results.json").read_text())
        assert data["commands"] and data["machine"] and data["commit"]
        for run in data["runs"]:
            assert (ROOT / "docs" / "bench" / run["raw"]).exists()
    speed = json.loads((ROOT / "docs" / "bench" / "speed_1gpu" / "results.json").read_text())
    assert speed["machine"]
    for scene in speed["scenes"].values():
        assert scene["commands"] and scene["commit"]
        for job in ("stock", "dist"):
            assert (ROOT / "docs" / "bench" / scene[job]["raw"]).exists()
