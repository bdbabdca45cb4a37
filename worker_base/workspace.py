"""The workspace, read and written by the wrapper itself, never by the agent (SPEC §8).

What an orchestrator asks of a worker's files (``diff``, ``read``, ``list``, ``write``) and the
summary the wrapper writes after each input are answered here, with the agent's rights (its
user: ``worker_base.identity``), so nothing the agent could not reach itself is ever read or
written for it, and a symlink it planted leads nowhere it could not go. Paths are relative to
the workspace and must stay in it: absolute paths, ``..`` and symlinks that resolve outside are
refused, as are sizes past the bounds below.

git runs by its absolute path, with configuration that could run an agent-chosen program
switched off (``core.fsmonitor``, hooks, external diff and text conversion drivers, the global
and system files), so an agent cannot make the wrapper's answers its own; the repository itself
(its objects, refs, index) is the agent's work and is reported as it is.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker_base.config import AGENT_HOME
from worker_base.identity import AgentIdentity

GIT = "/usr/bin/git"
#: A file read or written through the wrapper, and a diff, are at most this big by default.
MAX_FILE_BYTES = 8 * 1024 * 1024
#: A listing names at most this many entries; a summary at most this many changed files.
MAX_LISTING = 10_000
MAX_CHANGED = 500
#: git's own limits, so that a repository the agent made huge cannot stall the wrapper.
GIT_TIMEOUT_SECONDS = 60.0
#: Options that keep git from running anything the repository's configuration names.
SAFE_GIT = (
    "-c",
    "core.fsmonitor=",
    "-c",
    "core.hooksPath=/dev/null",
    "-c",
    "diff.external=",
    "-c",
    "core.pager=cat",
    "-c",
    "safe.directory=*",
)


class WorkspaceError(Exception):
    """A request the workspace cannot answer; the message is the ``error`` event's sentence."""


@dataclass(frozen=True, slots=True)
class Workspace:
    root: Path
    identity: AgentIdentity
    #: The commit the workspace started from (its ``repository``'s ``ref``), for ``diff``.
    base: str = ""
    max_file_bytes: int = MAX_FILE_BYTES
    #: The agent's ``HOME``, which git runs with (never the wrapper's: git runs as the agent).
    home: str = AGENT_HOME

    # --- paths ----------------------------------------------------------------------------
    def resolve(self, relative: str) -> Path:
        """The path ``relative`` names inside the workspace; WorkspaceError when it leaves it.

        Checked as the agent: the real path of every component (symlinks resolved) must stay
        under the workspace's own real path."""
        if not relative or "\x00" in relative:
            raise WorkspaceError("a path must be a non-empty text without NUL")
        if relative.startswith("/"):
            raise WorkspaceError(f"{relative!r} is absolute: paths are relative to the workspace")
        if ".." in Path(relative).parts:
            raise WorkspaceError(f"{relative!r} leaves the workspace ('..' is refused)")
        root = Path(os.path.realpath(self.root))
        with self.identity.acting_as_agent():
            real = Path(os.path.realpath(root / relative))
        if real != root and root not in real.parents:
            raise WorkspaceError(f"{relative!r} leads outside the workspace (a symlink)")
        return real

    # --- read, list, write ------------------------------------------------------------------
    def read(self, relative: str) -> dict[str, Any]:
        path = self.resolve(relative)
        with self.identity.acting_as_agent():
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            except FileNotFoundError:
                raise WorkspaceError(f"{relative!r} does not exist") from None
            except OSError as exc:
                raise WorkspaceError(f"{relative!r} cannot be read: {exc.strerror}") from None
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                os.close(fd)
                raise WorkspaceError(f"{relative!r} is not a file")
            with os.fdopen(fd, "rb") as handle:
                if info.st_size > self.max_file_bytes:
                    raise WorkspaceError(
                        f"{relative!r} is {info.st_size} bytes; at most {self.max_file_bytes} "
                        "are read through the wrapper"
                    )
                data = handle.read(self.max_file_bytes + 1)
        if len(data) > self.max_file_bytes:
            raise WorkspaceError(f"{relative!r} grew past {self.max_file_bytes} bytes")
        return {
            "path": relative,
            "size": len(data),
            "content": base64.b64encode(data).decode("ascii"),
        }

    def listing(self, relative: str = ".") -> list[dict[str, Any]]:
        path = self.resolve(relative or ".")
        entries: list[dict[str, Any]] = []
        with self.identity.acting_as_agent():
            try:
                with os.scandir(path) as found:
                    for entry in found:
                        if len(entries) >= MAX_LISTING:
                            break
                        try:
                            info = entry.stat(follow_symlinks=False)
                        except OSError:
                            continue
                        entries.append(
                            {"name": entry.name, "type": _kind(info.st_mode), "size": info.st_size}
                        )
            except FileNotFoundError:
                raise WorkspaceError(f"{relative!r} does not exist") from None
            except NotADirectoryError:
                raise WorkspaceError(f"{relative!r} is not a directory") from None
            except OSError as exc:
                raise WorkspaceError(f"{relative!r} cannot be listed: {exc.strerror}") from None
        return sorted(entries, key=lambda e: str(e["name"]))

    def write(self, relative: str, content_b64: str) -> dict[str, Any]:
        try:
            data = base64.b64decode(content_b64, validate=True)
        except ValueError:
            raise WorkspaceError("content must be base64") from None
        if len(data) > self.max_file_bytes:
            raise WorkspaceError(
                f"{len(data)} bytes; at most {self.max_file_bytes} are written through the wrapper"
            )
        path = self.resolve(relative)
        with self.identity.acting_as_agent():
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                # The parents were just made as the agent: check again that they stay inside.
                self.resolve(relative)
                scratch = Path(tempfile.mkstemp(prefix=".wm-write-", dir=path.parent)[1])
                try:
                    scratch.write_bytes(data)
                    os.chmod(scratch, 0o644)
                    os.replace(scratch, path)
                except BaseException:
                    scratch.unlink(missing_ok=True)
                    raise
            except OSError as exc:
                raise WorkspaceError(f"{relative!r} cannot be written: {exc.strerror}") from None
        return {"path": relative, "size": len(data)}

    # --- git ---------------------------------------------------------------------------------
    async def git(self, *args: str, env: Mapping[str, str] | None = None) -> tuple[int, bytes]:
        """git in the workspace, as the agent, safely configured; (exit code, stdout)."""
        process = await asyncio.create_subprocess_exec(
            GIT,
            *SAFE_GIT,
            *args,
            cwd=self.root,
            env={**git_env(self.home), **(env or {})},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            **self.identity.spawn_options(),
        )
        try:
            async with asyncio.timeout(GIT_TIMEOUT_SECONDS):
                out, _err = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise WorkspaceError(
                f"git {args[0]} took longer than {GIT_TIMEOUT_SECONDS:g} s"
            ) from None
        return process.returncode or 0, out

    async def is_repository(self) -> bool:
        code, out = await self.git("rev-parse", "--is-inside-work-tree")
        return code == 0 and out.strip() == b"true"

    async def summary(self) -> dict[str, Any]:
        """SPEC §8's ``workspace`` event: HEAD, branch, changed files (lines added and
        removed, against HEAD), how many files are untracked; bounded."""
        if not await self.is_repository():
            return {"head": None, "branch": None, "changed": [], "untracked": 0}
        _code, head = await self.git("rev-parse", "--verify", "-q", "HEAD")
        _code, branch = await self.git("symbolic-ref", "-q", "--short", "HEAD")
        _code, numstat = await self.git("diff", "HEAD", "--numstat", "-z", "--no-renames")
        _code, untracked = await self.git("ls-files", "--others", "--exclude-standard", "-z")
        changed = parse_numstat(numstat)
        result: dict[str, Any] = {
            "head": head.decode().strip() or None,
            "branch": branch.decode().strip() or None,
            "changed": changed[:MAX_CHANGED],
            "untracked": untracked.count(b"\x00"),
        }
        if len(changed) > MAX_CHANGED:
            result["changed_truncated"] = len(changed)
        return result

    async def diff(self) -> dict[str, Any]:
        """The patch of the workspace (untracked files included) against where it started."""
        if not await self.is_repository():
            raise WorkspaceError("the workspace is not a git repository: there is nothing to diff")
        base = self.base or "HEAD"
        _code, own = await self.git("rev-parse", "--git-path", "index")
        with self.identity.acting_as_agent():
            fd, index = tempfile.mkstemp(prefix=".wm-index-", dir="/tmp")
            os.close(fd)
            try:  # from the agent's index: its stat data spares hashing unchanged files
                shutil.copyfile(self.root / own.decode().strip(), index)
            except OSError:
                os.unlink(index)  # git makes a new one; an empty file is not an index
        scratch = {"GIT_INDEX_FILE": index}
        try:
            # A throwaway index of everything in the tree, the agent's own index untouched.
            code, _ = await self.git("add", "-A", "--", ".", env=scratch)
            if code != 0:
                raise WorkspaceError("git could not read the workspace's files")
            code, patch = await self.git(
                "diff", "--cached", "--binary", "--no-ext-diff", "--no-textconv", base, env=scratch
            )
            if code != 0:
                raise WorkspaceError(f"git could not diff against {base}")
        finally:
            with self.identity.acting_as_agent(), contextlib.suppress(FileNotFoundError):
                os.unlink(index)
        truncated = len(patch) > self.max_file_bytes
        return {
            "base": base,
            "patch": patch[: self.max_file_bytes].decode("utf-8", "replace"),
            "truncated": truncated,
            "size": len(patch),
        }


def git_env(home: str = AGENT_HOME) -> dict[str, str]:
    """The environment git runs with: nothing of the wrapper's (its Redis URL), no global or
    system configuration, no prompt for credentials; ``HOME`` the agent's, whose user runs it."""
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": home,
        "LANG": "C.UTF-8",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_OPTIONAL_LOCKS": "0",
    }


def parse_numstat(raw: bytes) -> list[dict[str, Any]]:
    """``git diff --numstat -z`` as ``[{"path", "added", "removed"}]`` (binary: None)."""
    changed: list[dict[str, Any]] = []
    for record in raw.split(b"\x00"):
        if not record:
            continue
        added, _, rest = record.partition(b"\t")
        removed, _, path = rest.partition(b"\t")
        if not path:
            continue
        changed.append(
            {
                "path": path.decode("utf-8", "replace"),
                "added": int(added) if added.isdigit() else None,
                "removed": int(removed) if removed.isdigit() else None,
            }
        )
    return changed


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def summary_digest(text: str) -> str:
    """What the heartbeat says of the published summary (``ws=…``): the manager fetches the
    summary only when this changes."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def dumps(value: object) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
