"""The README and docs/ stay true: every ``worker-manager`` command in their shell blocks parses
with today's CLI, every ``make`` target exists, every relative link (and its anchor) leads
somewhere inside the repository (a fresh clone has nothing beside it), and every module or
attribute they name (``workers.transitions.lifecycle.outcome_of``, ``egress/proxy.py``) exists.
(The README's Python examples run for real: tests/support/readme.py.)"""

from __future__ import annotations

import importlib
import importlib.util
import re
import shlex
from pathlib import Path

import pytest

from worker_manager.cli.parser import build_parser

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"```(?:sh|bash|console)\n(.*?)```", re.S)
_LINK = re.compile(r"\]\(([^)\s]+)\)")


def commands(page: Path) -> list[str]:
    """The shell commands of a page's blocks: continuation lines joined, comments dropped."""
    found: list[str] = []
    for block in _BLOCK.findall(page.read_text()):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def slug(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.lstrip("#").strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    return {slug(line) for line in page.read_text().splitlines() if line.startswith("#")}


CLI_LINES = [
    pytest.param(page, line, id=f"{page.name}: {line[:60]}")
    for page in PAGES
    for line in commands(page)
    if re.match(r"(\S+=\S+ )*(\.venv/bin/)?worker-manager ", line)
]


@pytest.mark.parametrize(("page", "line"), CLI_LINES)
def test_every_cli_command_in_the_docs_parses(page: Path, line: str) -> None:
    argv = shlex.split(line.split(" | ")[0])
    argv = argv[next(i for i, a in enumerate(argv) if a.endswith("worker-manager")) + 1 :]
    argv = [re.sub(r"<[^>]+>", "00000000-0000-0000-0000-000000000000", a) for a in argv]
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse's way of refusing
        pytest.fail(f"{page.name}: `{line}` does not parse ({exc})")


def test_every_make_target_in_the_docs_exists() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    used = set()
    for page in PAGES:
        for line in commands(page):
            words = shlex.split(line.replace("$(", "(")) if "make " in line else []
            if "make" in words:
                rest = words[words.index("make") + 1 :]
                used |= {w for w in rest if "=" not in w and not w.startswith("-")}
    assert used, "no make target found: the pattern is broken"
    assert used <= targets, f"make targets the docs name that the Makefile lacks: {used - targets}"


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_relative_link_leads_somewhere(page: Path) -> None:
    for target in _LINK.findall(page.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        path_text, _, anchor = target.partition("#")
        path = (page.parent / path_text).resolve() if path_text else page
        assert path.is_relative_to(ROOT), f"{page.name}: {target} leaves the repository"
        assert path.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: no heading #{anchor} in {path.name}"


#: A code span naming a module or something in one: ``egress.proxy``, ``worker_base.config.X``.
_DOTTED = re.compile(r"`((?:worker_manager|worker_base|[a-z_]+)(?:\.\w+)+)`")
#: A code span naming a source file: ``workers/state/records.py``.
_SOURCE = re.compile(r"`([\w/]+\.py)`")
_PACKAGES = {p.name for p in (ROOT / "worker_manager").iterdir() if (p / "__init__.py").is_file()}


def names_something(dotted: str) -> bool:
    """Whether ``dotted`` is a module of ours, or an attribute (or an attribute's attribute)
    of one: ``workers.state.records``, ``contract.record.WorkerRecord.public``."""
    parts = dotted.split(".")
    root = parts[0] if parts[0] in ("worker_manager", "worker_base") else "worker_manager"
    parts = parts[1:] if parts[0] == root else parts
    for cut in range(len(parts), -1, -1):
        module = ".".join([root, *parts[:cut]])
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        if cut == len(parts):
            return True  # a module: found, not run (``worker_manager.__main__`` would run)
        found: object = importlib.import_module(module)
        for attribute in parts[cut:]:
            if not hasattr(found, attribute):
                return False
            found = getattr(found, attribute)
        return True
    return False


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_every_module_the_docs_name_exists(page: Path) -> None:
    text = page.read_text()
    dotted = {
        name
        for name in _DOTTED.findall(text)
        if name.split(".")[0] in (_PACKAGES | {"worker_manager", "worker_base"})
    }
    stale = sorted(name for name in dotted if not names_something(name))
    sources = {name for name in _SOURCE.findall(text) if "/" in name}
    stale += sorted(
        name
        for name in sources
        if not any((base / name).exists() for base in (ROOT, ROOT / "worker_manager"))
    )
    assert not stale, f"{page.name} names what does not exist: {stale}"


def test_make_help_names_only_targets_that_exist_and_the_inner_loop() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-z][\w-]*):", makefile, re.M))
    helped = set(re.findall(r'^\t@echo "make ([a-z][\w-]*)', makefile, re.M))
    assert helped <= targets, f"make help names targets the Makefile lacks: {helped - targets}"
    assert {"check", "test-fast", "test", "lint"} <= helped
