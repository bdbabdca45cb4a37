"""The architecture as a test: each subpackage imports only the layers below it, and no module
imports itself back through another (no import cycles), in the service and the benchmarks."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Each package of worker_manager, and the packages it may import (its ``__init__`` says so).
ALLOWED = {
    "core": set(),
    "contract": {"core"},
    "settings": {"core", "contract"},
    "client": {"core", "contract"},
    "console": {"core", "contract", "settings", "client"},
    "images": {"core", "contract", "settings"},
    "egress": {"core", "contract", "settings"},
    "workspaces": {"core", "contract", "settings", "images", "egress"},
    "workers": {"core", "contract", "settings", "images", "egress", "workspaces"},
    "commands": {
        "core",
        "contract",
        "settings",
        "client",
        "images",
        "egress",
        "workspaces",
        "workers",
    },
    "service": {
        "core",
        "contract",
        "settings",
        "client",
        "images",
        "egress",
        "workspaces",
        "workers",
        "commands",
        "console",
    },
    "cli": {
        "core",
        "contract",
        "settings",
        "client",
        "images",
        "egress",
        "workspaces",
        "workers",
        "commands",
        "service",
        "console",
    },
}
#: Top-level modules of the package every layer may use (the public names and Protocols).
SHARED = {"typing"}

#: The groups inside ``workers``, each importing only the groups before it (its ``__init__``
#: says so): a worker's state, its resources, its transitions, the fleet, the watching loops.
WORKER_GROUPS = ("state", "resources", "transitions", "fleet", "watching")


def modules(package: str) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for path in (ROOT / package).rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def graph(*packages: str) -> dict[str, set[str]]:
    known: dict[str, Path] = {}
    for package in packages:
        known.update(modules(package))
    return {
        name: {target for target in imports(path) if target in known and target != name}
        for name, path in known.items()
    }


def cycle_from(graph_: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, if there is any (depth-first search)."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph_[node]):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph_):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("packages", [("worker_manager",), ("benchmarks", "worker_manager")])
def test_no_import_cycles(packages: tuple[str, ...]) -> None:
    assert cycle_from(graph(*packages)) is None


def test_each_layer_imports_only_the_layers_below_it() -> None:
    wrong = []
    for module, targets in graph("worker_manager").items():
        parts = module.split(".")
        if len(parts) < 3:
            continue  # the top package's own modules: the public API and the entry point
        layer = parts[1]
        for target in targets:
            other = target.split(".")
            if len(other) < 2 or other[1] in SHARED or other[1] == layer:
                continue
            if other[1] not in ALLOWED[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_the_worker_groups_import_only_the_groups_before_them() -> None:
    wrong = []
    for module, targets in graph("worker_manager").items():
        parts = module.split(".")
        if parts[1:2] != ["workers"] or len(parts) < 4:
            continue
        own = WORKER_GROUPS.index(parts[2])
        for target in targets:
            other = target.split(".")
            if other[1:2] != ["workers"] or len(other) < 3 or other[2] == parts[2]:
                continue
            if WORKER_GROUPS.index(other[2]) >= own:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_every_worker_module_is_in_a_group() -> None:
    root = ROOT / "worker_manager" / "workers"
    loose = {p.name for p in root.glob("*.py")} - {"__init__.py"}
    groups = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert not loose, f"modules outside a group: {sorted(loose)}"
    assert groups == set(WORKER_GROUPS)


def test_every_layer_is_named_in_the_rules() -> None:
    packages = {
        p.name for p in (ROOT / "worker_manager").iterdir() if (p / "__init__.py").is_file()
    }
    assert packages == set(ALLOWED)


def test_the_wrapper_imports_nothing_of_the_manager() -> None:
    """worker_base runs inside containers, where worker_manager is not installed."""
    for module, path in modules("worker_base").items():
        assert not [t for t in imports(path) if t.startswith("worker_manager")], module
