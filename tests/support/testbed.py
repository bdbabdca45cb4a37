"""Separate Docker hosts on one machine: Docker-in-Docker containers, each with its own Engine
and its own ``worker-manager serve``, on a private network, sharing the session's Redis.

What makes a host (machine-notes, "A second Docker host"):

- an image ``FROM`` the bootstrapped base with Debian's ``docker.io``, ``containerd``, ``runc``,
  ``tini``, ``iptables`` and ``iproute2`` and the libraries the base lacks, fetched on this
  machine with ``apt-get download`` and installed with ``dpkg -i`` (nothing is pulled);
- ``--privileged`` is refused here, so: every capability but ``SYS_RESOURCE``, seccomp, AppArmor
  and the masked ``/proc`` paths off, ``/dev/fuse``, all devices allowed; the entrypoint makes
  ``/sys`` and the cgroup hierarchies writable and runs ``dockerd`` (overlay2 where the data
  volume's filesystem takes it, else vfs) with a
  bridge subnet of its own (``--bip``) and a cgroup parent of its own;
- a volume for ``/var/lib/docker``; the base and the CUSTOM worker image moved in with
  ``docker save | docker load``;
- the manager is this checkout (mounted read-only at ``/src``) run by the host's Python with
  this interpreter's site-packages (mounted at ``/site``): the same code as the tests, nothing
  installed in the image. It reaches Redis at the Docker bridge gateway of the outer Engine, as
  do its workers (through their host's NAT).

Cutting a host off is ``docker network disconnect`` (its manager and its workers lose Redis; the
Engine keeps running); killing it is ``docker kill`` (the Engine, the manager and every worker
go at once, as when a machine dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import docker.errors

import worker_manager

REPO_ROOT = Path(worker_manager.__file__).resolve().parents[1]
HOST_IMAGE_REPO = "worker-manager/testbed-host"
LABEL_TESTBED = "worker-manager.testbed"
PACKAGES = ("docker.io", "containerd", "runc", "tini", "iptables", "iproute2")
#: Alternatives ``apt-cache depends --recurse`` lists besides what the base already satisfies
#: (debconf, libsystemd0): installing them would replace the base's own.
SKIPPED = frozenset(
    {"cdebconf", "libelogind0", "libdebian-installer4", "libnewt0.52", "libslang2", "libtextwrap1"}
)
ENTRYPOINT = r"""#!/bin/sh
# A second Docker host: /sys and the cgroup hierarchies writable, then dockerd.
set -e
mount -o remount,rw /sys
mount | grep ' type cgroup ' | while read -r _ _ dir _ _ opts; do
    sub=$(echo "$opts" | tr -d '()' | tr , '\n' \
        | grep -vE '^(ro|rw|nosuid|nodev|noexec|relatime)$' | paste -sd,)
    umount "$dir"
    mount -t cgroup -o "rw,nosuid,nodev,noexec,$sub" cgroup "$dir"
done
# overlay2 where the data volume's filesystem takes an overlay mount (ext4, xfs), else vfs
# (it copies a whole image per container: slow, but it works on anything).
driver=vfs
probe=/var/lib/docker/.overlay-probe
mkdir -p "$probe/l" "$probe/u" "$probe/w" "$probe/m"
if mount -t overlay overlay -o "lowerdir=$probe/l,upperdir=$probe/u,workdir=$probe/w" "$probe/m"
then umount "$probe/m"; driver=overlay2; fi 2>/dev/null
rm -rf "$probe"
# A host booted again (after docker kill) finds the last boot's pid files: a live process may
# hold those pids now, and dockerd would refuse to start.
rm -f /var/run/docker.pid /var/run/docker/containerd/containerd.pid
exec dockerd --storage-driver="${WM_HOST_STORAGE:-$driver}" --bip "${WM_HOST_BIP:?}" \
    --cgroup-parent "${WM_HOST_CGROUP:?}" --host unix:///var/run/docker.sock --log-level=warn
"""
DOCKERFILE = """FROM {base}
COPY debs/ /tmp/debs/
RUN dpkg -i /tmp/debs/*.deb && rm -rf /tmp/debs
COPY entrypoint.sh /usr/local/bin/wm-host-entrypoint
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/wm-host-entrypoint"]
"""
HOST_OPTIONS = (
    "--cap-add",
    "ALL",
    "--cap-drop",
    "SYS_RESOURCE",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--security-opt",
    "systempaths=unconfined",
    "--device",
    "/dev/fuse",
    "--device-cgroup-rule",
    "a *:* rwm",
)
READY_TIMEOUT_SECONDS = 60.0
_STOP_MANAGER = """
import os, signal, sys, time
def managers():
    for pid in filter(str.isdigit, os.listdir('/proc')):
        try:
            argv = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')
        except OSError:
            continue
        if b'worker_manager' in argv and b'serve' in argv:
            yield int(pid)
for pid in managers():
    os.kill(pid, signal.SIGTERM)
deadline = time.monotonic() + float(sys.argv[1])
while any(True for _ in managers()):
    if time.monotonic() > deadline:
        sys.exit('the manager did not stop')
    time.sleep(0.1)
"""


class BedError(RuntimeError):
    """The test bed could not be built or started; the message says where it stopped."""


def host_image(client: docker.DockerClient, base_image: str) -> str:
    """The host image for this base, built once (its tag hashes the base and the recipe)."""
    base_id = str(client.images.get(base_image).id)
    recipe = "\n".join([base_id, ENTRYPOINT, DOCKERFILE, *PACKAGES, *sorted(SKIPPED)])
    tag = f"{HOST_IMAGE_REPO}:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"
    with contextlib.suppress(docker.errors.ImageNotFound):
        client.images.get(tag)
        return tag
    with tempfile.TemporaryDirectory(prefix="wm-testbed-") as scratch:
        context = Path(scratch)
        (context / "debs").mkdir()
        _download_debs(client, base_image, context / "debs")
        (context / "entrypoint.sh").write_text(ENTRYPOINT)
        (context / "entrypoint.sh").chmod(0o755)
        (context / "Dockerfile").write_text(DOCKERFILE.format(base=base_image))
        try:
            client.images.build(path=str(context), tag=tag, rm=True, forcerm=True, pull=False)
        except docker.errors.BuildError as exc:
            log = "".join(str(c.get("stream", "")) for c in exc.build_log)[-3000:]
            raise BedError(f"building {tag} failed: {exc}\n{log}") from exc
    return tag


def _download_debs(client: docker.DockerClient, base_image: str, target: Path) -> None:
    """The Debian packages the base lacks, fetched on this machine (the containers have no
    network; the host reaches Debian's mirrors)."""
    listed = client.containers.run(
        base_image, ["dpkg-query", "-W", "-f", "${Package}\n"], remove=True
    )
    installed = set(listed.decode().split())
    try:
        _fetch(installed, target)
    except BedError:  # no package lists on a fresh machine: fetch them once, then again
        _run(["apt-get", "update", "-q"])
        _fetch(installed, target)


def _fetch(installed: set[str], target: Path) -> None:
    depends = _run(
        [
            "apt-cache",
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
            *PACKAGES,
        ]
    )
    names = {
        line.strip() for line in depends.splitlines() if line and not line.startswith((" ", "<"))
    }
    if not set(PACKAGES) <= names:
        raise BedError(f"apt-cache knows none of {PACKAGES}: no package lists")
    _run(["apt-get", "download", *sorted(names - installed - SKIPPED)], cwd=target)


def _run(argv: list[str], cwd: Path | None = None) -> str:
    if shutil.which(argv[0]) is None:
        raise BedError(f"{argv[0]} is not installed: the test bed needs a Debian host")
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
        raise BedError(f"{' '.join(argv[:3])} … failed: {result.stderr[-2000:]}")
    return result.stdout


def python_matches(client: docker.DockerClient, base_image: str) -> str | None:
    """Why this interpreter's site-packages cannot run in the base's Python, or None."""
    out = client.containers.run(
        base_image, ["python3", "-c", "import sys; print(sys.version_info[:2])"], remove=True
    )
    theirs = out.decode().strip()
    ours = str(sys.version_info[:2])
    if theirs != ours:
        return f"the base has Python {theirs}, the tests run on {ours}: site-packages differ"
    return None


@dataclass
class Host:
    index: int
    name: str
    ip: str
    manager_id: str
    volume: str
    container: Any = None
    #: Whether its manager was started and not since stopped or killed with the host.
    manager_running: bool = False

    def exec(self, *argv: str, stdin: bytes | None = None, timeout: float = 120) -> str:
        """Run ``argv`` inside the host (``docker exec``); its stdout, or BedError."""
        command = ["docker", "exec", *(["-i"] if stdin is not None else []), self.name, *argv]
        result = subprocess.run(command, input=stdin, capture_output=True, timeout=timeout)
        if result.returncode != 0:
            raise BedError(
                f"{self.name}: {' '.join(argv[:4])} failed ({result.returncode}): "
                f"{result.stderr.decode(errors='replace')[-2000:]}"
            )
        return result.stdout.decode(errors="replace")

    def worker_containers(self, prefix: str) -> list[str]:
        """Names of the worker containers of ``prefix`` inside this host (running or not)."""
        out = self.exec(
            "docker",
            "ps",
            "-a",
            "--filter",
            f"label=worker-manager.key_prefix={prefix}",
            "--format",
            "{{.Names}}",
        )
        return out.split()

    def manager_log(self) -> str:
        with contextlib.suppress(BedError, subprocess.TimeoutExpired):
            return self.exec("tail", "-n", "40", "/tmp/manager.log", timeout=10)
        return "(no log)"


class Testbed:
    """``count`` hosts on a private network; :meth:`close` removes every trace."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    def __init__(
        self,
        client: docker.DockerClient,
        *,
        token: str,
        base_image: str,
        manager_env: dict[str, str],
        manager_id_prefix: str,
    ) -> None:
        self.client = client
        self.token = token
        self.base_image = base_image
        self.manager_env = manager_env
        self.manager_id_prefix = manager_id_prefix
        self.network_name = f"wm-testbed-{token}"
        self.network: Any = None
        self.subnet: ipaddress.IPv4Network | None = None
        self.hosts: list[Host] = []
        self.image = ""

    # --- set-up ------------------------------------------------------------------------------
    def start(self, count: int, images: list[str]) -> None:
        problem = python_matches(self.client, self.base_image)
        if problem:
            raise BedError(problem)
        self.image = host_image(self.client, self.base_image)
        self.subnet = _free_subnet(self.client)
        gateway = str(next(self.subnet.hosts()))
        self.network = self.client.networks.create(
            self.network_name,
            driver="bridge",
            ipam=docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=str(self.subnet), gateway=gateway)]
            ),
            labels={LABEL_TESTBED: self.token},
        )
        for index in range(1, count + 1):
            self.hosts.append(self._start_host(index))
        for host in self.hosts:
            self._wait_engine(host)
        for host in self.hosts:
            _move_images([self.base_image, *images], host)
        for host in self.hosts:
            self.start_manager(host)
        for host in self.hosts:
            self.wait_manager(host)

    def _start_host(self, index: int) -> Host:
        assert self.subnet is not None
        name = f"wm-testbed-{self.token}-h{index}"
        host = Host(
            index=index,
            name=name,
            ip=str(self.subnet.network_address + 10 + index),
            manager_id=f"{self.manager_id_prefix}-h{index}",
            volume=f"{name}-data",
        )
        site = sysconfig.get_paths()["purelib"]
        # The CLI, not docker-py: ``systempaths=unconfined`` (no masked /proc paths) has no
        # counterpart in the SDK.
        argv = [
            "docker",
            "run",
            "-d",
            "--name",
            name,
            "--hostname",
            name,
            "--network",
            self.network_name,
            "--ip",
            host.ip,
            "--label",
            f"{LABEL_TESTBED}={self.token}",
            "-e",
            f"WM_HOST_BIP=10.214.{index}.1/24",
            "-e",
            f"WM_HOST_CGROUP=/wm-testbed/{self.token}-h{index}",
            "-v",
            f"{host.volume}:/var/lib/docker",
            "-v",
            f"{REPO_ROOT}:/src:ro",
            "-v",
            f"{site}:/site:ro",
            *HOST_OPTIONS,
            self.image,
        ]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise BedError(f"starting {name} failed: {result.stderr[-2000:]}")
        host.container = self.client.containers.get(name)
        return host

    def _wait_engine(self, host: Host) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while True:
            with contextlib.suppress(BedError, subprocess.TimeoutExpired):
                host.exec("docker", "info", "--format", "{{.ServerVersion}}", timeout=10)
                return
            if time.monotonic() > deadline:
                logs = host.container.logs(tail=30).decode(errors="replace")
                raise BedError(f"{host.name}: dockerd did not answer: {logs}")
            time.sleep(0.2)

    def start_manager(self, host: Host, **extra: str) -> None:
        """``worker-manager serve`` inside the host (its log: /tmp/manager.log there)."""
        env = {
            **self.manager_env,
            "WM_MANAGER_ID": host.manager_id,
            "PYTHONPATH": "/src:/site",
            "WM_HTTP_ADDR": "0.0.0.0:8080",
            "WM_LOG_FORMAT": "json",
            **extra,
        }
        flags = [f"-e{k}={v}" for k, v in env.items()]
        subprocess.run(
            [
                "docker",
                "exec",
                "-d",
                "-w",
                "/tmp",
                *flags,
                host.name,
                "sh",
                "-c",
                "exec python3 -m worker_manager serve >>/tmp/manager.log 2>&1",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        host.manager_running = True

    def wait_manager(self, host: Host) -> None:
        """Until the manager's /readyz answers 200 inside the host."""
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        probe = (
            "import urllib.request,sys;"
            "sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/readyz',timeout=2)"
            ".status==200 else 1)"
        )
        while True:
            with contextlib.suppress(BedError, subprocess.TimeoutExpired):
                host.exec("python3", "-c", probe, timeout=10)
                return
            if time.monotonic() > deadline:
                raise BedError(f"{host.name}: the manager is not ready:\n{host.manager_log()}")
            time.sleep(0.3)

    # --- what happens to hosts ---------------------------------------------------------------
    def kill(self, host: Host) -> None:
        """The machine dies: its Engine, its manager and its workers at once."""
        host.container.kill()
        host.manager_running = False

    def revive(self, host: Host) -> None:
        """A killed host booted again: its Engine (with its images) and its manager."""
        host.container.start()
        self._wait_engine(host)
        self.start_manager(host)
        self.wait_manager(host)

    def stop_manager(self, host: Host, timeout: float = 60) -> None:
        """SIGTERM to the host's manager and wait for it to exit (a clean stop: it leaves the
        fleet, its workers stay). The base has no procps: /proc is read by Python."""
        host.exec("python3", "-c", _STOP_MANAGER, str(timeout), timeout=timeout + 10)
        host.manager_running = False

    def cut_off(self, host: Host) -> None:
        """Unplugged: no route to Redis (or anything) for its manager and its workers."""
        self.network.disconnect(host.container)

    def heal(self, host: Host) -> None:
        self.network.connect(host.container, ipv4_address=host.ip)

    # --- tear-down ---------------------------------------------------------------------------
    def close(self) -> None:
        for host in self.hosts:
            with contextlib.suppress(docker.errors.APIError):
                host.container.remove(force=True, v=True)
            with contextlib.suppress(docker.errors.APIError):
                self.client.volumes.get(host.volume).remove(force=True)
            _remove_cgroups(f"wm-testbed/{self.token}-h{host.index}")
        if self.network is not None:
            with contextlib.suppress(docker.errors.APIError):
                self.network.remove()
        _remove_cgroups("wm-testbed")  # the shared parent, once no session uses it


def remove_image(client: docker.DockerClient, tag: str) -> None:
    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(tag, force=True)


def _move_images(images: list[str], host: Host) -> None:
    """``docker save | docker exec -i <host> docker load``: the images as they are (same IDs,
    so the host's manager finds the CUSTOM image under the tag it computes itself)."""
    save = subprocess.Popen(["docker", "save", *images], stdout=subprocess.PIPE)
    try:
        load = subprocess.run(
            ["docker", "exec", "-i", host.name, "docker", "load", "-q"],
            stdin=save.stdout,
            capture_output=True,
            timeout=300,
        )
    finally:
        assert save.stdout is not None
        save.stdout.close()
        save.wait(timeout=60)
    if save.returncode != 0 or load.returncode != 0:
        raise BedError(
            f"{host.name}: loading {images} failed: {load.stderr.decode(errors='replace')}"
        )


def _free_subnet(client: docker.DockerClient) -> ipaddress.IPv4Network:
    taken = []
    for network in client.networks.list():
        for config in (network.attrs.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(KeyError, ValueError):
                taken.append(ipaddress.ip_network(config["Subnet"], strict=False))
    for third in range(200, 250):
        candidate = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise BedError("no free /24 in 10.213.200-249.0 for the test bed's network")


def _remove_cgroups(relative: str) -> None:
    """The cgroup directories the hosts' engines made under their parent (empty once the hosts
    are gone): deepest first, in every hierarchy."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        root = hierarchy / relative
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if path.is_dir():
                with contextlib.suppress(OSError):
                    path.rmdir()
        with contextlib.suppress(OSError):
            root.rmdir()
