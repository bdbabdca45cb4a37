"""``worker_base.isolation``: what the root wrapper's interpreter may read (issue 24 §2 a)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker_base.isolation import exposures

AGENT = 1000


def test_roots_own_directories_are_not_exposed(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "these checks make files of another user: they need root"
    safe = tmp_path / "opt" / "worker-base"
    safe.mkdir(parents=True, mode=0o755)
    for directory in (safe, safe.parent):
        directory.chmod(0o755)
    ancestors = [p for p in (tmp_path, *tmp_path.parents)]
    assert all(p.stat().st_uid == 0 for p in ancestors)
    # /tmp (sticky, world-writable) above it does not expose what root owns below it.
    assert exposures([str(safe), str(safe / "missing.zip")]) == []


def test_what_the_agent_owns_or_may_write_is_exposed(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    os.chown(workspace, AGENT, AGENT)
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    below = shared / "lib"
    below.mkdir(mode=0o755)
    below.chmod(0o755)
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    group = tmp_path / "group"
    group.mkdir()
    os.chown(group, 0, AGENT)
    group.chmod(0o775)
    found = exposures(
        [str(workspace), str(workspace / "x.py"), str(below), str(sticky), str(group)]
    )
    assert [entry.split(" (")[0] for entry in found] == [
        str(workspace),
        str(workspace / "x.py"),  # not there yet: the agent may make it
        str(below),  # root's, below a directory anyone may rename it out of
        str(sticky),  # anyone may add a module to it
        str(group),  # its group is the agent's
    ]
    assert "owned by uid 1000" in found[0] and "mode 777" in found[2]


def test_an_interpreter_started_as_the_manager_starts_it_finds_nothing(tmp_path: Path) -> None:
    """The check itself, from an isolated interpreter run from ``/`` (as in a container),
    against the same interpreter run from a directory the agent owns."""
    repo = str(Path(__file__).resolve().parents[2])
    code = (
        f"import sys; sys.path.insert(0, {repo!r}); "
        "from worker_base.isolation import wrapper_exposures; print(wrapper_exposures())"
    )
    home = tmp_path / "root-home"
    home.mkdir(mode=0o700)
    env = {"PATH": os.environ["PATH"], "HOME": str(home)}
    isolated = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd="/", env=env, capture_output=True, text=True
    )
    assert isolated.returncode == 0, isolated.stderr
    agents = tmp_path / "workspace"
    agents.mkdir()
    os.chown(agents, AGENT, AGENT)
    exposed = subprocess.run(
        [sys.executable, "-c", code], cwd=agents, env=env, capture_output=True, text=True
    )
    assert "not isolated" in exposed.stdout and str(agents) in exposed.stdout, exposed.stdout
    # Whatever the host's own interpreter lives in, the isolated run added nothing of ours.
    assert "not isolated" not in isolated.stdout and str(home) not in isolated.stdout
