"""The README and docs/ stay true: every ``worker-manager`` command in their shell blocks parses
with today's CLI, every ``make`` target exists, and every relative link (and its anchor) leads
somewhere. (The README's Python examples run for real: tests/support/readme.py.)"""

from __future__ import annotations

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
        if not str(path).startswith(str(ROOT)):
            continue  # the shared SPEC beside the repository
        assert path.exists(), f"{page.name}: {target} leads nowhere"
        if anchor and path.suffix == ".md":
            assert anchor in anchors(path), f"{page.name}: no heading #{anchor} in {path.name}"
