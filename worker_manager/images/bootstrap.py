"""The base image every worker image is built ``FROM``, made locally when it is not there.

A machine without a registry (or without network to one) still has to be able to build worker
images, so the default base, :data:`BOOTSTRAP_BASE_TAG`, is not pulled from anywhere: it is made
from Debian packages with ``debootstrap`` and ``docker import``. That tag is a local name only: it
is never pulled, because whoever owns that namespace on Docker Hub would otherwise decide what
every worker runs. Any other base image (``python:3.12-slim`` in production) is pulled as usual.

The CLI exposes both: ``worker-manager ensure-base`` (:func:`ensure_base_image`) and
``worker-manager bootstrap-base [--tag]`` (:func:`bootstrap_base_image`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import docker
import docker.errors
import requests
from docker.utils import parse_repository_tag
from structlog.typing import FilteringBoundLogger

from worker_manager.images.spec import LABEL_WORKER_USER, WORKER_UID, WORKER_USER_SCRIPT
from worker_manager.settings import BOOTSTRAP_BASE_TAG, Settings

#: Debian suite and mirror of the bootstrap image (bookworm ships python3 3.11).
DEFAULT_SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"

#: A pull that cannot even reach a registry fails fast; this bounds one that hangs.
PULL_TIMEOUT_SECONDS = 120
#: ``docker import`` of a ~250 MB rootfs; generous because fuse-overlayfs is slow.
IMPORT_TIMEOUT_SECONDS = 900
#: debootstrap downloads and unpacks ~100 packages; ~45 s with a close mirror.
DEBOOTSTRAP_TIMEOUT_SECONDS = 1800

#: What the bootstrapped base holds besides a minimal Debian: the wrapper's interpreter, TLS
#: roots, and git (a worker's repository is checked out, and its work read, with it).
BASE_PACKAGES = ("python3", "ca-certificates", "git")
#: Bumped when :data:`BASE_PACKAGES` or the user layout change: a local base without this label
#: value is bootstrapped again by ``ensure-base`` (the tag is local, so nothing else owns it).
BASE_LAYOUT = "3"
LABEL_BASE_LAYOUT = "worker-manager.base-layout"

#: Docker gives an imported image no environment at all; these make it behave like an image
#: built ``FROM debian``: a PATH for ``docker exec`` and RUN lines, and UTF-8 text for Python.
IMAGE_CHANGES = (
    'CMD ["python3"]',
    "LABEL worker-manager.base=1",
    f'LABEL {LABEL_BASE_LAYOUT}="{BASE_LAYOUT}"',
    # The worker's user is made here once, so no worker image spends a build step on it.
    f'LABEL {LABEL_WORKER_USER}="{WORKER_UID}:{WORKER_UID}"',
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
)

#: Removed from the rootfs before import: caches and documentation nobody reads in a worker.
PRUNE_GLOBS = (
    "var/cache/apt/archives/*.deb",
    "var/cache/apt/archives/partial/*",
    "var/cache/apt/*.bin",
    "var/lib/apt/lists/*",
    "var/cache/debconf/*-old",
    "var/log/*.log",
    "var/log/apt/*",
    "usr/share/doc/*",
    "usr/share/man/*",
    "usr/share/info/*",
    "usr/share/locale/*",
    "usr/share/lintian/*",
)


class BootstrapError(RuntimeError):
    """The base image is missing and cannot be made here; the message says what to do."""


def ensure_base_image(settings: Settings, *, log: FilteringBoundLogger) -> str:
    """Return the ID of ``settings.base_image``, pulling or bootstrapping it when missing.

    Called before ``serve`` and the test suite so that the first create does not fail (or wait a
    minute) on a missing base.
    """
    name = settings.base_image
    client = docker.from_env(timeout=PULL_TIMEOUT_SECONDS)
    try:
        image_id = _local_image_id(client, name)
        if image_id is not None and name == BOOTSTRAP_BASE_TAG and not _current(client, name):
            log.info("base_image.outdated", image=name, action="bootstrap", layout=BASE_LAYOUT)
            return bootstrap_base_image(name, log=log)
        if image_id is not None:
            log.debug("base_image.present", image=name, image_id=image_id)
            return image_id
        if name == BOOTSTRAP_BASE_TAG:
            log.info("base_image.missing", image=name, action="bootstrap")
            return bootstrap_base_image(name, log=log)
        pull_result = _try_pull(client, name, log=log)
        image_id = _local_image_id(client, name)
    finally:
        client.close()
    if image_id is not None:
        return image_id
    raise BootstrapError(
        f"base image {name!r} is not on this Docker Engine and could not be pulled "
        f"({pull_result}). Pull it (`docker pull {name}`), or build the Debian base with "
        f"`worker-manager bootstrap-base --tag {name}`, or set WM_BASE_IMAGE={BOOTSTRAP_BASE_TAG} "
        "to use the default local base."
    )


def bootstrap_base_image(
    tag: str,
    *,
    suite: str = DEFAULT_SUITE,
    mirror: str = DEFAULT_MIRROR,
    log: FilteringBoundLogger,
) -> str:
    """Build a minimal Debian + python3 image from packages and tag it ``tag``; return its ID."""
    if os.geteuid() != 0:
        raise BootstrapError(
            "building the base image runs debootstrap, which needs root: run "
            f"`sudo .venv/bin/worker-manager bootstrap-base --tag {tag}`, or pull a base image "
            "and set WM_BASE_IMAGE to it."
        )
    debootstrap = _ensure_debootstrap(log=log)
    started = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="wm-bootstrap-"))
    rootfs = workdir / "rootfs"
    try:
        log.info("bootstrap.debootstrap", suite=suite, mirror=mirror, rootfs=str(rootfs))
        _run(
            [
                debootstrap,
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                suite,
                str(rootfs),
                mirror,
            ],
            what="debootstrap",
            timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
        )
        _run(
            ["chroot", str(rootfs), "/bin/sh", "-c", WORKER_USER_SCRIPT],
            what="adding the worker's user",
            timeout=120,
        )
        _prune_rootfs(rootfs)
        tarball = workdir / "rootfs.tar"
        _run(
            ["tar", "--numeric-owner", "--xattrs", "-C", str(rootfs), "-cf", str(tarball), "."],
            what="tar",
            timeout=DEBOOTSTRAP_TIMEOUT_SECONDS,
        )
        log.info("bootstrap.import", tag=tag, size_bytes=tarball.stat().st_size)
        image_id = _import(tarball, tag)
    finally:
        _remove_tree(rootfs.parent)
    log.info(
        "bootstrap.done",
        tag=tag,
        image_id=image_id,
        seconds=round(time.monotonic() - started, 1),
    )
    return image_id


def _current(client: docker.DockerClient, name: str) -> bool:
    """Whether the local bootstrapped base is of this version's layout."""
    labels = client.images.get(name).labels or {}
    return labels.get(LABEL_BASE_LAYOUT) == BASE_LAYOUT


def _local_image_id(client: docker.DockerClient, name: str) -> str | None:
    try:
        image_id = client.images.get(name).id
    except docker.errors.ImageNotFound:
        return None
    return str(image_id)


def _try_pull(client: docker.DockerClient, name: str, *, log: FilteringBoundLogger) -> str:
    """Pull ``name``; on failure return why, because the caller's message must say it."""
    repository, tag = parse_repository_tag(name)
    log.info("base_image.pull", image=name)
    try:
        client.images.pull(repository, tag=tag or "latest")
    except (docker.errors.DockerException, requests.RequestException) as exc:
        reason = str(exc).strip() or type(exc).__name__
        log.warning("base_image.pull_failed", image=name, error=reason)
        return reason
    return "pulled"


def _ensure_debootstrap(*, log: FilteringBoundLogger) -> str:
    """The debootstrap binary, installed with apt-get when we may (root, Debian-like host)."""
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise BootstrapError(
            "debootstrap is not installed and this host has no apt-get: install debootstrap "
            "with the system package manager, or pull a base image and set WM_BASE_IMAGE to it."
        )
    log.info("bootstrap.install_debootstrap")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    _run(["apt-get", "update", "-q"], what="apt-get update", timeout=600, env=env)
    _run(
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", "debootstrap"],
        what="apt-get install debootstrap",
        timeout=600,
        env=env,
    )
    found = shutil.which("debootstrap") or shutil.which("debootstrap", path="/usr/sbin:/sbin")
    if not found:
        raise BootstrapError("apt-get installed debootstrap but it is not on PATH or in /usr/sbin")
    return found


def _prune_rootfs(rootfs: Path) -> None:
    for pattern in PRUNE_GLOBS:
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    # The host's identity must not be baked into the image; Docker supplies both at run time.
    for name in ("etc/hostname", "etc/resolv.conf"):
        target = rootfs / name
        if target.is_file() and not target.is_symlink():
            target.write_text("")


def _import(tarball: Path, tag: str) -> str:
    repository, image_tag = parse_repository_tag(tag)
    client = docker.from_env(timeout=IMPORT_TIMEOUT_SECONDS)
    try:
        client.api.import_image_from_file(
            str(tarball),
            repository=repository,
            tag=image_tag or "latest",
            changes=list(IMAGE_CHANGES),
        )
        return str(client.images.get(tag).id)
    except (docker.errors.DockerException, requests.RequestException) as exc:
        raise BootstrapError(f"docker import of the bootstrapped rootfs failed: {exc}") from exc
    finally:
        client.close()


def _run(argv: list[str], *, what: str, timeout: float, env: dict[str, str] | None = None) -> None:
    """Run a step, keeping its output for the error message rather than the terminal."""
    try:
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise BootstrapError(f"{what} did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-20:])
        raise BootstrapError(f"{what} failed with exit code {proc.returncode}:\n{tail}")


def _remove_tree(root: Path) -> None:
    """Delete the work dir, first detaching anything debootstrap left mounted inside it.

    A failed debootstrap can leave ``/proc`` or ``/sys`` mounted in the chroot; deleting through
    such a mount would try to delete the host's own files.
    """
    for target in sorted(_mounts_under(root), key=len, reverse=True):
        subprocess.run(["umount", "-l", target], check=False, capture_output=True)
    left = _mounts_under(root)
    if left:
        raise BootstrapError(
            f"cannot remove {root}: still mounted: {', '.join(left)}; unmount them and delete it"
        )
    shutil.rmtree(root, ignore_errors=True)


def _mounts_under(root: Path) -> list[str]:
    prefix = str(root.resolve()) + os.sep
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return []
    # /proc/self/mounts escapes spaces as \040; the work dir we create has none.
    return [
        fields[1] for fields in (line.split() for line in lines) if fields[1].startswith(prefix)
    ]
