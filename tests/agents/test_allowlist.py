"""The allowlist shims, exercised with real processes under the restricted PATH."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.agents.helpers import FakeConfig
from worker_base.allowlist import agent_env, parse_rules, resolve_program
from worker_base.refusals import refusals


def run(env: dict[str, str], script: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, "-c", script], env=env, cwd=cwd, capture_output=True, text=True, timeout=30
    )


async def next_refusal(stream: AsyncIterator[str]) -> str:
    return await asyncio.wait_for(anext(stream), timeout=10)


@pytest.fixture
def config(tmp_path: Path) -> FakeConfig:
    (tmp_path / "work").mkdir()
    return FakeConfig(
        tmp_path / "state", tmp_path / "work", allowed_commands=["echo", "git status"]
    )


def test_unrestricted_env_is_unchanged(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "state", tmp_path)
    env = {"PATH": "/usr/bin:/bin", "HOME": "/home/x"}
    result = agent_env(cfg, env)
    assert result == env
    assert result is not env
    assert not (tmp_path / "state").exists()


async def test_unrestricted_yields_no_refusals(tmp_path: Path) -> None:
    cfg = FakeConfig(tmp_path / "state", tmp_path)
    assert [s async for s in refusals(cfg)] == []


def test_restricted_path_is_the_shim_dir(config: FakeConfig) -> None:
    env = agent_env(config, dict(os.environ))
    assert env["PATH"] == str(config.wrapper_dir / "bin")
    assert (config.wrapper_dir / "bin" / "bash").resolve() == Path(
        shutil.which("bash") or ""
    ).resolve()
    assert env["HOME"] == os.environ["HOME"]


async def test_allowed_refused_and_reported(config: FakeConfig) -> None:
    env = agent_env(config, dict(os.environ))
    stream = refusals(config)

    done = run(env, "echo hi", config.workdir)
    assert (done.returncode, done.stdout) == (0, "hi\n")
    done = run(env, "/bin/echo via-path-is-not-checked; command echo shim", config.workdir)
    assert done.stdout == "via-path-is-not-checked\nshim\n"

    done = run(env, "ls -la", config.workdir)
    assert done.returncode == 126
    assert "refused: `ls -la` is not an allowed command" in done.stderr
    assert await next_refusal(stream) == (
        "refused: `ls -la` is not an allowed command (allowed: echo, git status)"
    )

    done = run(env, "rm -rf '/tmp/a b'", config.workdir)
    assert done.returncode == 126
    assert await next_refusal(stream) == (
        "refused: `rm -rf '/tmp/a b'` is not an allowed command (allowed: echo, git status)"
    )
    await stream.aclose()


async def test_git_status_allowed_git_push_refused(config: FakeConfig) -> None:
    git = shutil.which("git")
    assert git is not None
    subprocess.run([git, "init", "-q", str(config.workdir)], check=True)
    env = agent_env(config, dict(os.environ))
    stream = refusals(config)

    done = run(env, "git status --short --branch", config.workdir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("## ")

    done = run(env, "git push origin main", config.workdir)
    assert done.returncode == 126
    assert await next_refusal(stream) == (
        "refused: `git push origin main` is not an allowed command (allowed: echo, git status)"
    )
    done = run(env, "git -C . status", config.workdir)  # the prefix is matched word by word
    assert done.returncode == 126
    assert "git -C . status" in await next_refusal(stream)
    await stream.aclose()


def test_env_shebang_scripts_run_under_the_restricted_path(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    script = tools / "tool"
    script.write_text("#!/usr/bin/env python3\nimport sys\nprint('tool', *sys.argv[1:])\n")
    script.chmod(0o755)
    cfg = FakeConfig(tmp_path / "state", tmp_path, allowed_commands=["tool run test"])
    base = dict(os.environ, PATH=f"{tools}{os.pathsep}{os.environ['PATH']}")
    env = agent_env(cfg, base)

    done = run(env, "tool run test -v", tmp_path)
    assert (done.returncode, done.stdout) == (0, "tool run test -v\n"), done.stderr
    assert run(env, "tool run build", tmp_path).returncode == 126
    assert run(env, "tool", tmp_path).returncode == 126
    assert resolve_program("tool", base["PATH"])[1:] == [str(script)]
    assert Path(resolve_program("tool", base["PATH"])[0]).name.startswith("python3")


def test_unknown_command_is_not_found(config: FakeConfig) -> None:
    env = agent_env(config, dict(os.environ))
    assert run(env, "surely-not-installed-xyz", config.workdir).returncode == 127


def test_rebuilding_is_idempotent_and_drops_stale_names(tmp_path: Path) -> None:
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "old-tool").write_text("#!/bin/sh\n")
    (tools / "old-tool").chmod(0o755)
    cfg = FakeConfig(tmp_path / "state", tmp_path, allowed_commands=["echo"])
    agent_env(cfg, {"PATH": f"{tools}{os.pathsep}/usr/bin:/bin"})
    assert (tmp_path / "state" / "wrapper" / "bin" / "old-tool").is_symlink()
    # A second call with its own output as input must not make shims resolve to themselves.
    env = agent_env(cfg, {"PATH": f"{tmp_path / 'state' / 'bin'}{os.pathsep}/usr/bin:/bin"})
    assert not (tmp_path / "state" / "wrapper" / "bin" / "old-tool").exists()
    done = run(env, "command echo still-works", tmp_path)
    assert (done.returncode, done.stdout) == (0, "still-works\n")


async def test_refusals_resume_after_restart_and_wait_for_whole_lines(
    config: FakeConfig,
) -> None:
    env = agent_env(config, dict(os.environ))
    run(env, "ls one", config.workdir)  # refused before anyone follows the log
    stream = refusals(config)
    assert "`ls one`" in await next_refusal(stream)
    await stream.aclose()

    log = config.state_dir / "refusals.log"
    with log.open("a") as handle:
        handle.write('{"argv": ["half"')  # a shim still writing
    stream = refusals(config)  # a restarted wrapper: old refusals are not repeated
    pending = asyncio.ensure_future(next_refusal(stream))
    await asyncio.sleep(0.3)
    assert not pending.done()
    with log.open("a") as handle:
        handle.write(', "written"]}\n')
    assert await pending == (
        "refused: `half written` is not an allowed command (allowed: echo, git status)"
    )
    await stream.aclose()


def test_rules_parsing() -> None:
    assert parse_rules(["git", "npm test", "npm run 'build all'", "/usr/bin/x", "", "git log"]) == {
        "git": [[], ["log"]],
        "npm": [["test"], ["run", "build all"]],
    }
