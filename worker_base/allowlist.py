"""Enforcing ``allowed_commands`` below the agent, whatever the agent type.

The prompt (Claude's ``--allowedTools``, Droid's ``commandAllowlist``) asks the agent to behave;
this module makes a mistaken agent fail instead. The agent process gets a ``PATH`` made of one
directory of shims: one link per command name found on the wrapper's original ``PATH`` (and per
allowed name), all pointing at one generated script that decides by the link's name. It checks
the whole argv against the allowed prefixes (``npm test`` allows ``npm test --watch`` but not
``npm install``), then either execs the real program, looked up on the original ``PATH``, or
refuses: a sentence on stderr, a JSON line in ``<state_dir>/refusals.log`` and exit status 126
(the shell's "found but cannot be run"). A name that is installed nowhere stays "not found"
(127). :mod:`worker_base.refusals` follows the log so the wrapper can report each refusal.

The shims, the script and the gate live in the wrapper's directory (``worker_base.identity``):
the agent runs them and cannot change them. The refusal log is in the agent's state directory,
since the shims write it as the agent.

``sh`` and ``bash`` are always present in the shim directory as links to the real shells: an agent
runs commands through a shell (Claude Code's Bash tool, Droid's Execute tool), and a shell whose
own ``PATH`` is the shim directory resolves every command it runs to a shim.
``wm-team`` (a worker of a team, SPEC §12: ``worker_base.team``) is always there too, as a link
to the real one: it only talks to the agent's own wrapper, so the allowlist has nothing to guard.

For an agent that runs its commands through a shell it lets us prefix (Claude Code), the shims
apply to those commands only, through a gate script (:func:`build_shell_gate`): the agent process
keeps its own ``PATH``, so its internal helpers are never refused, and the gate pins ``PATH`` and
the CLI's shell functions so they cannot step around the shims.

Limits, on purpose and documented: this is a guardrail for an agent that means well, not a
sandbox (the container is the sandbox). A program started by absolute path (``/usr/bin/rm``)
bypasses ``PATH``; so does ``command -p``, and shell builtins (``echo``, ``cd``, ``printf``,
``test``) are not commands at all. For Claude Code, the CLI's own permission layer refuses those
first (see ``agents/claude.py``). Programs that an allowed command starts
through ``PATH`` are checked too, so an allowed ``npm test`` whose script calls ``node`` needs
``node`` in the list as well.
"""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

SHIM_DIR_NAME = "bin"
SHIM_SCRIPT_NAME = "allowlist-shim"
REFUSAL_LOG_NAME = "refusals.log"
_SHELLS = ("sh", "bash")
#: Linked to the real program whatever ``allowed_commands`` says (when it is on the ``PATH``).
ALWAYS_ALLOWED = ("wm-team",)


class AllowlistConfig(Protocol):
    """The part of the wrapper's configuration this module reads."""

    @property
    def allowed_commands(self) -> Sequence[str] | None: ...

    @property
    def state_dir(self) -> Path: ...

    @property
    def wrapper_dir(self) -> Path: ...

    @property
    def agent_user(self) -> tuple[int, int] | None: ...


def shim_dir(config: AllowlistConfig) -> Path:
    return config.wrapper_dir / SHIM_DIR_NAME


def refusal_log(config: AllowlistConfig) -> Path:
    return config.state_dir / REFUSAL_LOG_NAME


def parse_rules(allowed: Sequence[str]) -> dict[str, list[list[str]]]:
    """Command name -> allowed argument prefixes (``[]`` allows any arguments).

    Entries whose first word holds a ``/`` are skipped here: a program named by path is not
    looked up on ``PATH``, so no shim can stand in front of it.
    """
    rules: dict[str, list[list[str]]] = {}
    for entry in allowed:
        try:
            words = shlex.split(entry)
        except ValueError:
            words = entry.split()
        if not words or "/" in words[0] or words[0] in {".", ".."}:
            continue
        rules.setdefault(words[0], []).append(words[1:])
    return rules


def describe_allowed(allowed: Sequence[str]) -> str:
    return ", ".join(entry.strip() for entry in allowed if entry.strip()) or "none"


def refusal_sentence(argv: Sequence[str], allowed: Sequence[str]) -> str:
    command = shlex.join(argv) if argv else "(empty command)"
    if len(command) > 500:  # as the shim cuts it; a forged log line is bounded the same
        command = command[:500] + "..."
    return f"refused: `{command}` is not an allowed command (allowed: {describe_allowed(allowed)})"


def _search_path(env: dict[str, str], exclude: Path) -> str:
    """The original ``PATH``, minus the shim directory so a shim never resolves to itself."""
    raw = env.get("PATH") or os.defpath
    kept = [p for p in raw.split(os.pathsep) if p and Path(p) != exclude]
    return os.pathsep.join(kept)


def resolve_program(name: str, path: str | None = None) -> list[str]:
    """Absolute argv prefix that starts ``name`` without looking anything up on ``PATH``.

    The agent runs with the restricted ``PATH``, so its own launcher must not depend on it:
    ``claude`` and ``droid`` are ``#!/usr/bin/env node`` scripts, and ``env`` would search the
    shim directory for ``node``. For such scripts the interpreter is resolved here, on the
    original ``PATH``, and put in front. Returns ``[name]`` when ``name`` cannot be found, so the
    caller's spawn fails with the usual "not found" error.
    """
    found = shutil.which(name, path=path)
    if found is None:
        return [name]
    return [*_env_interpreter(found, path), found]


def _env_interpreter(program: str, path: str | None) -> list[str]:
    try:
        with open(program, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return []
    if not first.startswith(b"#!"):
        return []
    words = first[2:].decode("utf-8", "replace").split()
    if len(words) < 2 or Path(words[0]).name != "env":
        return []
    rest = words[1:]
    if rest[0] == "-S":
        rest = rest[1:]
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        return []
    interpreter = shutil.which(rest[0], path=path)
    return [interpreter, *rest[1:]] if interpreter else []


_SHIM_TEMPLATE = """\
#!{python} -I
# Generated by worker_base.allowlist for worker-manager; rewritten when the wrapper starts.
# Every entry of the agent's PATH is a link to this file; the link's name is the command.
import json, os, shlex, shutil, sys, time

RULES = {rules!r}
SEARCH_PATH = {search_path!r}
LOG = {log!r}
ALLOWED = {allowed!r}


def interpreter(program):
    # Same rule as worker_base.allowlist.resolve_program: env-shebang scripts get their
    # interpreter from the original PATH, since the restricted one has no node/python.
    try:
        with open(program, "rb") as handle:
            first = handle.readline(512)
    except OSError:
        return []
    if not first.startswith(b"#!"):
        return []
    words = first[2:].decode("utf-8", "replace").split()
    if len(words) < 2 or os.path.basename(words[0]) != "env":
        return []
    rest = words[1:]
    if rest[0] == "-S":
        rest = rest[1:]
    if not rest or rest[0].startswith("-") or "=" in rest[0]:
        return []
    found = shutil.which(rest[0], path=SEARCH_PATH)
    return [found, *rest[1:]] if found else []


name = os.path.basename(sys.argv[0])
args = sys.argv[1:]
if any(args[: len(prefix)] == prefix for prefix in RULES.get(name, [])):
    real = shutil.which(name, path=SEARCH_PATH)
    if real is None:
        sys.stderr.write(name + ": command not found\\n")
        sys.exit(127)
    prefix = interpreter(real)
    if prefix:
        os.execv(prefix[0], [*prefix, real, *args])
    os.execv(real, [name, *args])

argv = [name, *args]
shown = shlex.join(argv)
if len(shown) > 500:
    shown = shown[:500] + "..."
sentence = "refused: `" + shown + "` is not an allowed command (allowed: " + ALLOWED + ")"
sys.stderr.write("worker-manager: " + sentence + "\\n")
record = {{"argv": [a[:1000] for a in argv[:64]], "cwd": os.getcwd(), "time": time.time()}}
try:
    os.makedirs(os.path.dirname(LOG), exist_ok=True)
    # Readable by the wrapper, which reports each line (it holds no right to read 0600 files).
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(record) + "\\n").encode())
    finally:
        os.close(fd)
except OSError:
    pass
sys.exit(126)
"""


def _write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` in one rename, so a running agent never execs a half-written shim."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(mode)
    os.replace(tmp, path)


def _link(path: Path, target: str) -> None:
    """Point ``path`` at ``target``, replacing whatever is there in one rename."""
    try:
        if os.readlink(path) == target:
            return
    except FileNotFoundError:
        os.symlink(target, path)  # the common case: a fresh directory
        return
    except OSError:
        pass  # a regular file: replace it
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, path)


def _installed_names(search_path: str) -> set[str]:
    """Every command name the original ``PATH`` offers: each gets a shim, so that a command
    that is not allowed is refused (126, logged) rather than merely "not found" (127)."""
    names: set[str] = set()
    for directory in search_path.split(os.pathsep):
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or entry.name in names:
                continue
            try:
                if entry.is_file() and os.access(entry.path, os.X_OK):
                    names.add(entry.name)
            except OSError:
                continue
    return names


def build_shims(config: AllowlistConfig, env: dict[str, str]) -> Path:
    """(Re)write the shim directory for ``config.allowed_commands``; returns its path.

    The directory holds one link per command name found on the original ``PATH`` (and per
    allowed name), all to one generated script that allows or refuses by the link's name,
    plus the real ``sh`` and ``bash``. The first call creates a link per installed command
    (about 1,500 on a Debian image, a second or two on a slow disk); later calls, e.g. after a
    wrapper restart, only touch what changed, since ``state_dir`` lives as long as the worker.
    """
    allowed = list(config.allowed_commands or [])
    directory = shim_dir(config)
    directory.mkdir(parents=True, exist_ok=True)
    if any(ch.isspace() for ch in sys.executable):
        raise RuntimeError(f"cannot write shims: interpreter path {sys.executable!r} has a space")
    search_path = _search_path(env, directory)
    rules = parse_rules(allowed)
    script = config.wrapper_dir / SHIM_SCRIPT_NAME
    source = _SHIM_TEMPLATE.format(
        python=sys.executable,
        rules=rules,
        search_path=search_path,
        log=str(refusal_log(config)),
        allowed=describe_allowed(allowed),
    )
    _write_atomic(script, source, 0o755)
    wanted: dict[str, str] = {}
    for name in _installed_names(search_path) | set(rules):
        wanted[name] = str(script)
    # Always the real shell: agents need one to run anything at all; and the commands that
    # reach nothing but the wrapper.
    for name in (*_SHELLS, *ALWAYS_ALLOWED):
        real = shutil.which(name, path=search_path)
        if real is not None:
            wanted[name] = real
    for name, target in wanted.items():
        _link(directory / name, target)
    for stale in directory.iterdir():
        if stale.name not in wanted:
            stale.unlink()
    return directory


#: The shell functions Claude Code's snapshot defines to run its own embedded tools by absolute
#: path (``grep`` -> ugrep, ``find`` -> bfs, ``rg``): pinned to go through ``PATH`` instead.
GATED_FUNCTIONS = ("grep", "find", "rg", "ugrep", "bfs")
GATE_NAME = "agent-shell"

_GATE_TEMPLATE = """\
#!{bash}
# Generated by worker_base.allowlist for worker-manager; rewritten when the wrapper starts.
# The agent runs each shell command as `agent-shell '<script>'` (its shell-prefix setting). The
# script sources the CLI's shell snapshot, which exports its own PATH and defines grep/find/rg as
# functions that run the CLI's embedded tools by absolute path, then evals the command. The
# prologue below runs first: PATH is the shim directory and read-only, and those functions are
# read-only ones that go through PATH, so nothing in the snapshot can undo either.
prologue={prologue}
exec {bash} -c "$prologue$1" {name} "${{@:2}}"
"""


def _gate_prologue(directory: Path) -> str:
    functions = "\n".join(f'{name}() {{ command {name} "$@"; }}' for name in GATED_FUNCTIONS)
    return (
        f"PATH={shlex.quote(str(directory))}; export PATH; readonly PATH\n"
        f"{functions}\nreadonly -f {' '.join(GATED_FUNCTIONS)}\n"
    )


def build_shell_gate(config: AllowlistConfig, directory: Path) -> Path | None:
    """Write ``<wrapper_dir>/agent-shell`` in front of the shim ``directory``; None without
    bash."""
    bash = shutil.which("bash", path=os.defpath + os.pathsep + "/usr/bin:/bin")
    if bash is None:
        return None
    gate = config.wrapper_dir / GATE_NAME
    source = _GATE_TEMPLATE.format(
        bash=bash, prologue=shlex.quote(_gate_prologue(directory)), name=GATE_NAME
    )
    _write_atomic(gate, source, 0o755)
    return gate


def agent_env(
    config: AllowlistConfig,
    env: dict[str, str],
    shell_prefix_env: str | None = None,
    *,
    keep_path: bool = False,
) -> dict[str, str]:
    """The environment for the agent process. Unchanged (a copy) when unrestricted.

    By default ``PATH`` becomes the shim directory alone, so every program the agent starts is
    checked. An agent that takes a prefix for the commands of its shell tool (``shell_prefix_env``,
    Claude Code) keeps its own ``PATH``, and the prefix, a gate script, applies the shims to the
    commands that shell runs: the agent's own helpers are not the agent's commands. With
    ``keep_path`` (Codex), the shims are built and the agent keeps its ``PATH``: its driver gives
    :func:`shim_dir` to the agent's own configuration as the ``PATH`` of the commands it runs.
    """
    result = dict(env)
    if config.allowed_commands is None:
        return result
    directory = build_shims(config, env)
    if keep_path:
        return result
    if shell_prefix_env is not None:
        gate = build_shell_gate(config, directory)
        if gate is not None:
            result[shell_prefix_env] = str(gate)
            return result
    result["PATH"] = str(directory)
    bash = directory / "bash"
    if bash.exists():
        result["SHELL"] = str(bash.resolve())
    return result
