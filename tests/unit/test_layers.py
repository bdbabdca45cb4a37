"""The architecture as a test: each subpackage imports only the layers its ``__init__``
docstring allows, the groups inside ``workers`` only the groups before them, no module imports
itself back through another (no import cycles), and docs/architecture.md names every module.

The rules have one source, each package's docstring: ``May import: ``a``, ``b``.`` (or
``nothing``), and in the groups of ``workers`` ``May import, within ``workers``: …``. This test
reads them; nothing here repeats them."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARCHITECTURE = ROOT / "docs" / "architecture.md"

_RULE = re.compile(r"^May import(, within ``workers``)?:\s*(.*?)\.(?:\s|$)", re.M | re.S)
_NAME = re.compile(r"``(\w+)``")
_CODE = re.compile(r"`(\w+)`")


def subpackages(package: Path) -> list[str]:
    return sorted(p.name for p in package.iterdir() if (p / "__init__.py").is_file())


def import_rule(package: Path, *, within: bool = False) -> set[str]:
    """What a package's ``__init__`` docstring says it may import (its ``May import:`` line)."""
    doc = ast.get_docstring(ast.parse((package / "__init__.py").read_text())) or ""
    rules = [m for m in _RULE.finditer(doc) if bool(m.group(1)) == within]
    assert len(rules) == 1, f"{package.name}/__init__.py: no single 'May import' line"
    body = rules[0].group(2)
    names = set(_NAME.findall(body))
    assert names or body.strip() == "nothing", f"{package.name}: 'May import: {body}' names nothing"
    assert not (names and body.startswith("nothing")), f"{package.name}: 'nothing' and names"
    return names


@cache
def layer_rules() -> dict[str, set[str]]:
    """Each package of worker_manager and the packages it may import."""
    root = ROOT / "worker_manager"
    return {name: import_rule(root / name) for name in subpackages(root)}


@cache
def group_order() -> tuple[str, ...]:
    """The groups of ``workers`` in order: each may import exactly the groups before it."""
    root = ROOT / "worker_manager" / "workers"
    rules = {name: import_rule(root / name, within=True) for name in subpackages(root)}
    order = tuple(sorted(rules, key=lambda name: len(rules[name])))
    for i, name in enumerate(order):
        assert rules[name] == set(order[:i]), (
            f"workers.{name} may import {sorted(rules[name])}: not the groups before it "
            f"({list(order[:i])})"
        )
    return order


#: Top-level modules of the package every layer may use (the public names and Protocols).
SHARED = {"typing"}


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
    allowed = layer_rules()
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
            if other[1] not in allowed[layer]:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_the_worker_groups_import_only_the_groups_before_them() -> None:
    order = group_order()
    wrong = []
    for module, targets in graph("worker_manager").items():
        parts = module.split(".")
        if parts[1:2] != ["workers"] or len(parts) < 4:
            continue
        own = order.index(parts[2])
        for target in targets:
            other = target.split(".")
            if other[1:2] != ["workers"] or len(other) < 3 or other[2] == parts[2]:
                continue
            if order.index(other[2]) >= own:
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_every_worker_module_is_in_a_group() -> None:
    root = ROOT / "worker_manager" / "workers"
    loose = {p.name for p in root.glob("*.py")} - {"__init__.py"}
    groups = {p.name for p in root.iterdir() if (p / "__init__.py").is_file()}
    assert not loose, f"modules outside a group: {sorted(loose)}"
    assert groups == set(group_order())


def test_the_rules_name_only_packages_that_exist_and_order_them() -> None:
    """Every name in a rule is a package, and the rules order the layers (no two may import
    each other, directly or not): the layer table of docs/architecture.md is that order."""
    allowed = layer_rules()
    unknown = {f"{layer}: {name}" for layer, names in allowed.items() for name in names}
    unknown = {entry for entry in unknown if entry.split(": ")[1] not in allowed}
    assert not unknown, f"rules naming no package: {sorted(unknown)}"
    assert not [layer for layer, names in allowed.items() if layer in names]
    assert cycle_from(allowed) is None


def test_the_wrapper_imports_nothing_of_the_manager() -> None:
    """worker_base runs inside containers, where worker_manager is not installed."""
    for module, path in modules("worker_base").items():
        assert not [t for t in imports(path) if t.startswith("worker_manager")], module


def map_names() -> set[str]:
    """Every package and module as docs/architecture.md must name it: dotted, relative to
    ``worker_manager`` (``egress.proxy``, ``workers.state``), or in full for the package's
    own modules (``worker_manager.typing``) and for ``worker_base`` (``worker_base.wrapper``)."""
    names = set()
    for name in modules("worker_manager"):
        relative = name.removeprefix("worker_manager").lstrip(".")
        if relative and "." not in relative and not (ROOT / "worker_manager" / relative).is_dir():
            names.add(name)  # worker_manager.typing, worker_manager.__main__
        elif relative:
            names.add(relative)
    return names | {name for name in modules("worker_base") if name != "worker_base"}


def test_the_map_names_every_package_and_module() -> None:
    text = ARCHITECTURE.read_text()
    missing = sorted(name for name in map_names() if f"`{name}`" not in text)
    assert not missing, f"docs/architecture.md does not name: {missing}"


def test_the_maps_layer_table_is_the_docstrings_rules() -> None:
    """The table's "may import" column says what each package's docstring says, in an order
    where each package imports only the ones above it."""
    allowed = layer_rules()
    rows = re.findall(r"^\| `(\w+)` \| ([^|]*) \|", ARCHITECTURE.read_text(), re.M)
    table = {name: body.strip() for name, body in rows if name in allowed}
    assert list(table) == [name for name, _ in rows if name in allowed], "a package twice"
    assert set(table) == set(allowed), "the layer table lacks a package"
    wrong = {
        name: sorted(allowed[name])
        for name, body in table.items()
        if set(_CODE.findall(body)) != allowed[name] or (not allowed[name]) != (body == "nothing")
    }
    assert not wrong, f"the layer table says otherwise than the docstrings: {wrong}"
    order = list(table)
    assert not [name for name in order if not allowed[name] <= set(order[: order.index(name)])]


def test_the_maps_group_table_is_the_docstrings_order() -> None:
    order = group_order()
    rows = re.findall(r"^\| `workers\.(\w+)` \| ([^|]*) \|", ARCHITECTURE.read_text(), re.M)
    groups = [(name, body) for name, body in rows if name in order]
    assert tuple(name for name, _ in groups) == order
    for i, (name, body) in enumerate(groups):
        assert set(_CODE.findall(body)) == set(order[:i]), name
