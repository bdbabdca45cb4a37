"""The agent CLIs that go into worker images as files, fetched and checked on the manager's host.

A build never reaches the network for an agent: the binary is put into the build context.

- **Claude Code** is published as a native, self-contained binary inside the platform wheels of
  ``claude-agent-sdk`` on PyPI (``claude_agent_sdk/_bundled/claude``). The manager downloads the
  pinned wheel for the Docker host's architecture once (``pip download`` into
  ``WM_AGENT_CACHE_DIR``), extracts the binary, checks that it runs (``--version``) and keeps it
  with its digest and version beside it. ``WM_CLAUDE_SDK_VERSION`` bumps it; ``WM_CLAUDE_BINARY``
  names a binary the operator provides instead.
- **Factory's droid** has no such package: ``WM_FACTORY_BINARY`` names one the operator
  provides (or ``WM_FACTORY_NPM_VERSION`` installs it with npm inside the build).

Each binary's digest and version are part of the image hash, so a new binary means new images.
Everything here is synchronous and slow the first time (a download of ~165 MB); the image service
calls it in a worker thread, and the result is cached per process.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from worker_manager.settings import Settings

#: Inside the wheel, where the native CLI and its version file are.
WHEEL_BINARY = "claude_agent_sdk/_bundled/claude"
WHEEL_VERSION = "claude_agent_sdk/_bundled/claude.version"
#: Docker's architecture names -> the wheel's platform tag.
WHEEL_PLATFORMS = {
    "x86_64": "manylinux_2_17_x86_64",
    "amd64": "manylinux_2_17_x86_64",
    "aarch64": "manylinux_2_17_aarch64",
    "arm64": "manylinux_2_17_aarch64",
}
_VERSION = re.compile(r"(\d+\.\d+\.\d+[0-9A-Za-z.+-]*)")
_DOWNLOAD_TIMEOUT = 900
_CHECK_TIMEOUT = 60


class AgentBinaryError(Exception):
    """The agent's binary cannot be had; the message names the setting that fixes it."""


@dataclass(frozen=True, slots=True)
class AgentBinary:
    """One file for the build context: ``agent-bin/<name>`` in the context."""

    name: str
    path: Path
    version: str
    sha256: str

    def identity(self) -> dict[str, str]:
        """What the image hash covers."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


_cache: dict[tuple[str, ...], AgentBinary] = {}
_cache_lock = threading.Lock()


def claude_binary(settings: Settings, architecture: str) -> AgentBinary:
    """The Claude Code binary for workers on a Docker host of ``architecture``."""
    if settings.claude_binary is not None:
        return provided_binary("claude", settings.claude_binary, "WM_CLAUDE_BINARY")
    version = settings.claude_sdk_version
    platform = WHEEL_PLATFORMS.get(architecture)
    if platform is None:
        raise AgentBinaryError(
            f"no claude-agent-sdk wheel is known for the Docker host's architecture "
            f"{architecture!r}; set WM_CLAUDE_BINARY to a Claude Code binary built for it"
        )
    key = ("claude-wheel", version, platform, str(settings.agent_cache_dir))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        binary = _wheel_binary(settings.agent_cache_dir, version, platform, architecture)
        _cache[key] = binary
        return binary


def factory_binary(settings: Settings) -> AgentBinary | None:
    """The operator's droid, or None when the npm path (or nothing) is configured."""
    if settings.factory_binary is None:
        return None
    return provided_binary("droid", settings.factory_binary, "WM_FACTORY_BINARY")


def provided_binary(name: str, path: Path, setting: str) -> AgentBinary:
    """A binary the operator named: it must be an executable file; its digest is cached per
    (path, size, mtime) so a create does not hash hundreds of MB each time."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise AgentBinaryError(f"{setting}={path} cannot be read: {exc.strerror}") from None
    if not path.is_file() or not os.access(path, os.X_OK):
        raise AgentBinaryError(f"{setting}={path} is not an executable file")
    key = ("provided", name, str(path.resolve()), str(stat.st_size), str(stat.st_mtime_ns))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        version = _run_version(path) or "unknown"
        binary = AgentBinary(name, path, version, _sha256(path))
        _cache[key] = binary
        return binary


def _wheel_binary(cache_dir: Path, version: str, platform: str, architecture: str) -> AgentBinary:
    home = cache_dir / f"claude-agent-sdk-{version}-{platform}"
    binary = home / "claude"
    digest_file, version_file = home / "claude.sha256", home / "claude.version"
    if not digest_file.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(cache_dir / f".{home.name}.lock"):
            if not digest_file.is_file():  # another process may have finished it meanwhile
                _download_and_extract(home, version, platform, architecture)
    try:
        return AgentBinary(
            "claude",
            binary,
            version_file.read_text().strip(),
            digest_file.read_text().strip(),
        )
    except OSError as exc:
        raise AgentBinaryError(
            f"the cached Claude Code binary in {home} is incomplete ({exc}); remove that "
            "directory and try again"
        ) from None


def _download_and_extract(home: Path, version: str, platform: str, architecture: str) -> None:
    with tempfile.TemporaryDirectory(prefix=".claude-", dir=home.parent) as tmp:
        work = Path(tmp)
        wheel = _download_wheel(work, version, platform)
        staged = work / "out"
        staged.mkdir()
        try:
            with zipfile.ZipFile(wheel) as archive:
                with archive.open(WHEEL_BINARY) as src, (staged / "claude").open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                bundled_version = _first_version(archive.read(WHEEL_VERSION).decode())
        except (KeyError, zipfile.BadZipFile) as exc:
            raise AgentBinaryError(
                f"{wheel.name} has no bundled Claude Code binary ({exc}); pick a platform wheel "
                "version with WM_CLAUDE_SDK_VERSION or set WM_CLAUDE_BINARY"
            ) from None
        (staged / "claude").chmod(0o755)
        ran = _run_version(staged / "claude") if _host_runs(architecture) else None
        if _host_runs(architecture) and ran is None:
            raise AgentBinaryError(
                f"the Claude Code binary of claude-agent-sdk {version} does not run here "
                "(`claude --version` failed); set WM_CLAUDE_SDK_VERSION to another version "
                "or WM_CLAUDE_BINARY to a working binary"
            )
        cli_version = ran or bundled_version or "unknown"
        (staged / "claude.version").write_text(cli_version + "\n")
        (staged / "claude.sha256").write_text(_sha256(staged / "claude") + "\n")
        (staged / "wheel").write_text(wheel.name + "\n")
        if home.exists():
            shutil.rmtree(home)
        os.replace(staged, home)


def _download_wheel(work: Path, version: str, platform: str) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--platform",
        platform,
        "--python-version",
        "3.11",
        "--disable-pip-version-check",
        "--quiet",
        "--dest",
        str(work),
        f"claude-agent-sdk=={version}",
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentBinaryError(
            f"downloading claude-agent-sdk=={version} failed ({exc}); check that PyPI is "
            "reachable from the manager's host, or set WM_CLAUDE_BINARY to a Claude Code binary"
        ) from None
    wheels = sorted(work.glob("claude_agent_sdk-*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise AgentBinaryError(
            f"downloading claude-agent-sdk=={version} for {platform} failed ({detail[0][:300]}); "
            "fix WM_CLAUDE_SDK_VERSION, make PyPI reachable from the manager's host, or set "
            "WM_CLAUDE_BINARY to a Claude Code binary"
        )
    return wheels[0]


def _host_runs(architecture: str) -> bool:
    """Whether this host can execute a binary built for the Docker host's architecture."""
    return WHEEL_PLATFORMS.get(os.uname().machine) == WHEEL_PLATFORMS.get(architecture)


def _run_version(path: Path) -> str | None:
    try:
        done = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT,
            check=False,
            env={"PATH": os.defpath, "HOME": tempfile.gettempdir(), "DISABLE_AUTOUPDATER": "1"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return _first_version(done.stdout) if done.returncode == 0 else None


def _first_version(text: str) -> str | None:
    match = _VERSION.search(text)
    return match.group(1) if match else None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def place(binary: AgentBinary, context: Path) -> None:
    """Put the binary into a build context as ``agent-bin/<name>``: a hard link when the cache
    and the context share a file system (no copy of hundreds of MB), else a copy."""
    target = context / "agent-bin" / binary.name
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(binary.path, target)
    except OSError:
        shutil.copy2(binary.path, target)
    target.chmod(0o755)
