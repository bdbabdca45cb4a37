"""The engine sidecar's image (an environment, SPEC §9) and how it starts: plain data.

**Image.** :data:`ENGINE_ENVIRONMENT` is an ordinary environment spec, built by the manager's
``ImageService.ensure(AgentType.CUSTOM, [], environment=...)`` like any other (through the
egress service, once per spec, collected like any image). It installs Debian's ``docker.io``
(dockerd, containerd, runc, the CLI), ``rootlesskit``, ``slirp4netns``, ``uidmap``,
``fuse-overlayfs`` and ``iptables``, then:

* ``newuidmap``/``newgidmap`` lose their setuid bit and get **file capabilities**
  (``cap_setuid``/``cap_setgid``) instead: a setuid-root helper lacks ``CAP_SYS_ADMIN`` in a
  container's bounding set and its ``uid_map`` write fails; file capabilities keep the
  caller's uid, which owns the new user namespace;
* uid 1000 gets one subordinate range (:data:`SUBID_START`, :data:`SUBID_COUNT`) in
  ``/etc/subuid`` and ``/etc/subgid``, unless it has one (the bootstrapped base's ``useradd``
  wrote it): a second line for the same user makes the map write fail with EINVAL;
* the engine's data root (:data:`DATA_ROOT`) exists, owned by uid 1000, mode 0700: a fresh
  volume mounted there takes that owner.

**Start.** :func:`engine_command` is the sidecar's whole argv: a short ``sh`` script that makes
its private runtime directories on ``/tmp`` (a tmpfs), writes the agent's Docker client
configuration (:data:`CLIENT_CONFIG_DIR`, in the shared socket volume) and ``exec``\\ s
RootlessKit with ``dockerd-rootless.sh``'s own flags **but** ``--disable-host-loopback``:
so in the engine's namespace ``10.0.2.2`` is the worker's loopback, where the worker's
egress-proxy relay listens (``127.0.0.1:3128``), and nothing else is reachable (the worker's
namespace has no other interface). dockerd listens on :data:`SOCKET` only.

**Proxy.** dockerd's own pulls use ``HTTP(S)_PROXY`` from its environment
(:func:`engine_env`); Docker 20.10 has no daemon-side default for its containers' proxy, so the
client's ``proxies.default`` (in the agent's ``DOCKER_CONFIG``) makes the CLI pass it to every
``docker run`` (as variables) and ``docker build`` (as build arguments).
"""

from __future__ import annotations

import json

from worker_manager.contract.environments import EnvironmentSpec
from worker_manager.egress.grants import PROXY_PORT

#: The engine's user (outside its user namespace; root inside it) and the agent's.
ENGINE_UID = 1000
#: uid 1000's subordinate ids: what root and every other user inside the engine map to.
SUBID_START = 100_000
SUBID_COUNT = 65_536
#: The socket volume: mounted here in the sidecar and, by the manager, in the worker.
SOCKET_DIR = "/run/wm-docker"
SOCKET = f"{SOCKET_DIR}/docker.sock"
DOCKER_HOST = f"unix://{SOCKET}"
#: The agent's Docker client configuration (``DOCKER_CONFIG``): the inner containers' proxy.
CLIENT_CONFIG_DIR = f"{SOCKET_DIR}/config"
#: The engine's data root (images, containers, build cache): a volume of its own.
DATA_ROOT = "/var/lib/wm-docker"
#: The sidecar's private runtime directory (XDG_RUNTIME_DIR, HOME, RootlessKit's state), on
#: its ``/tmp`` tmpfs: never in the volume the agent sees.
RUNTIME_DIR = "/tmp/wm-engine"
#: The worker's loopback as seen from the engine's namespace (slirp4netns' host address).
HOST_LOOPBACK = "10.0.2.2"
#: The worker's egress-proxy relay, as the engine and its containers reach it.
PROXY_URL = f"http://{HOST_LOOPBACK}:{PROXY_PORT}"
NO_PROXY = "localhost,127.0.0.1,::1"
#: What dockerd stores layers with: FUSE in a user namespace works on every kernel this runs on.
STORAGE_DRIVER = "fuse-overlayfs"
#: slirp4netns' MTU (dockerd-rootless.sh's default for it).
MTU = 65520

_SUBIDS = (
    f"u=$(getent passwd {ENGINE_UID} | cut -d: -f1); u=${{u:-{ENGINE_UID}}}; "
    "for f in /etc/subuid /etc/subgid; do "
    f'grep -q "^$u:" "$f" 2>/dev/null || grep -q "^{ENGINE_UID}:" "$f" 2>/dev/null '
    f'|| echo "$u:{SUBID_START}:{SUBID_COUNT}" >> "$f"; done'
)

#: The engine image: an environment like any other (built from the deployment's base).
ENGINE_ENVIRONMENT = EnvironmentSpec(
    apt=(
        "ca-certificates",
        "docker.io",
        "fuse-overlayfs",
        "iproute2",
        "iptables",
        "libcap2-bin",
        "rootlesskit",
        "slirp4netns",
        "uidmap",
    ),
    run=(
        "chmod u-s /usr/bin/newuidmap /usr/bin/newgidmap",
        "setcap cap_setuid+ep /usr/bin/newuidmap && setcap cap_setgid+ep /usr/bin/newgidmap",
        _SUBIDS,
        f"install -d -o {ENGINE_UID} -g {ENGINE_UID} -m 0700 {DATA_ROOT}",
        "dockerd --version && rootlesskit --version && slirp4netns --version | head -n1",
    ),
)
#: What the record and the image's labels call it.
ENGINE_ENVIRONMENT_LABEL = "wm-docker-engine"


def dockerd_args() -> list[str]:
    """dockerd's flags inside RootlessKit's namespaces."""
    return [
        f"--host={DOCKER_HOST}",
        f"--data-root={DATA_ROOT}",
        f"--storage-driver={STORAGE_DRIVER}",
    ]


def rootlesskit_args() -> list[str]:
    """``dockerd-rootless.sh``'s RootlessKit flags (Docker 20.10), less
    ``--disable-host-loopback``: ``10.0.2.2`` is the worker's loopback (its proxy relay)."""
    return [
        "--net=slirp4netns",
        f"--mtu={MTU}",
        "--slirp4netns-sandbox=auto",
        "--slirp4netns-seccomp=auto",
        "--port-driver=builtin",
        "--copy-up=/etc",
        "--copy-up=/run",
        "--propagation=rslave",
        f"--state-dir={RUNTIME_DIR}/rootlesskit",
    ]


def client_config(proxy: str | None = PROXY_URL) -> dict[str, object]:
    """The agent's ``config.json``: the proxy every inner ``docker run`` and ``docker build``
    gets (``proxies.default``); none when ``proxy`` is None."""
    if proxy is None:
        return {}
    return {
        "proxies": {
            "default": {"httpProxy": proxy, "httpsProxy": proxy, "noProxy": NO_PROXY},
        }
    }


#: The child's part (run by RootlessKit in the new namespaces): as dockerd-rootless.sh, remove
#: the parent's entries in the copied-up /run that dockerd must own, then start dockerd.
_CHILD = 'rm -f /run/docker /run/containerd /run/xtables.lock; exec dockerd "$@"'

#: The sidecar's entry script. ``$WM_DOCKER_CLIENT_CONFIG``: :func:`client_config` as JSON.
ENTRY_SCRIPT = "; ".join(
    [
        "set -eu",
        "umask 077",
        f'mkdir -p "{RUNTIME_DIR}/xdg" "{RUNTIME_DIR}/home" "{CLIENT_CONFIG_DIR}"',
        f'[ -e "{CLIENT_CONFIG_DIR}/config.json" ] || '
        f'printf "%s\\n" "$WM_DOCKER_CLIENT_CONFIG" > "{CLIENT_CONFIG_DIR}/config.json"',
        f'rm -f "{SOCKET}"',
        'exec rootlesskit "$@"',
    ]
)


#: Run as root, first and only: Docker's ``--device`` keeps the host node's mode, which is 0600
#: where no udev made it 0666 (as here); the copies in the sidecar's own ``/dev`` are made usable
#: by uid 1000 (the host's nodes are not touched), then the engine runs as uid 1000.
ROOT_PRELUDE = 'chmod 0666 /dev/net/tun /dev/fuse && exec "$@"'


def drop_to_engine_user() -> list[str]:
    """``setpriv``: from root to uid 1000, no supplementary group, nothing inheritable (a
    change of uid from 0 clears the permitted and effective sets; the bounding set keeps
    SETUID and SETGID, which only ``newuidmap``/``newgidmap``'s file capabilities use)."""
    return [
        "setpriv",
        f"--reuid={ENGINE_UID}",
        f"--regid={ENGINE_UID}",
        "--clear-groups",
        "--inh-caps=-all",
    ]


def engine_command() -> list[str]:
    """The sidecar's argv (its entrypoint; the image's own is not used)."""
    return [
        "sh",
        "-c",
        ROOT_PRELUDE,
        "wm-docker-engine-root",
        *drop_to_engine_user(),
        "sh",
        "-c",
        ENTRY_SCRIPT,
        "wm-docker-engine",
        *rootlesskit_args(),
        "sh",
        "-c",
        _CHILD,
        "dockerd",
        *dockerd_args(),
    ]


def engine_env(proxy: str | None = PROXY_URL) -> dict[str, str]:
    """The sidecar's environment: where rootless dockerd keeps its runtime files, its proxy for
    pulls (the worker's relay; none when ``proxy`` is None) and the agent's client config."""
    env = {
        "XDG_RUNTIME_DIR": f"{RUNTIME_DIR}/xdg",
        "HOME": f"{RUNTIME_DIR}/home",
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "WM_DOCKER_CLIENT_CONFIG": json.dumps(client_config(proxy), separators=(",", ":")),
    }
    if proxy is not None:
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
            env[name] = proxy
        env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    return env


def ready_command() -> list[str]:
    """Run in the sidecar (``docker exec``): exits 0 once the engine answers on its socket."""
    return ["docker", f"--host={DOCKER_HOST}", "version", "--format", "{{.Server.Version}}"]
