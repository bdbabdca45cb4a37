"""The engine sidecar's plain parts: its seccomp profile (Docker's default plus exactly our two
rules), its container options, its image's spec and entry command, the host's refusals, and the
preload's bound (docker_engine)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from worker_manager.contract.environments import parse_spec
from worker_manager.docker_engine import profile
from worker_manager.docker_engine.preload import PreloadError, preload_images
from worker_manager.docker_engine.recipe import (
    DATA_ROOT,
    DOCKER_HOST,
    ENGINE_ENVIRONMENT,
    PROXY_URL,
    SOCKET_DIR,
    client_config,
    engine_command,
    engine_env,
)
from worker_manager.docker_engine.sidecar import (
    UNMASKED_PATHS,
    EngineVolumes,
    agent_docker_env,
    engine_container_options,
    socket_volume_options,
    worker_mounts,
)
from worker_manager.docker_engine.support import HostFacts, facts_from, rootless_problem
from worker_manager.egress.grants import PROXY_PORT
from worker_manager.settings import Settings

VOLUMES = EngineVolumes(data="w1-engine-data", socket="w1-engine-socket")


def settings() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def test_the_profile_is_dockers_default_plus_our_two_rules() -> None:
    loaded = profile.load_profile()
    *default_rules, added, enosys = loaded["syscalls"]
    default = {**loaded, "syscalls": default_rules}
    assert profile.digest(default) == profile.DOCKER_DEFAULT_SHA256
    assert profile.derive(default) == loaded
    assert added["action"] == "SCMP_ACT_ALLOW" and added["args"] == []
    assert tuple(added["names"]) == profile.ADDED
    assert enosys == {**enosys, "names": ["keyctl"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38}
    # What we add was refused to a container without capabilities, and nothing else changes.
    unconditional = set(default_rules[0]["names"])
    assert not set(profile.ADDED) & unconditional
    assert "keyctl" not in unconditional and loaded["defaultAction"] == "SCMP_ACT_ERRNO"
    for closed in ("bpf", "clone3", "fsopen", "open_tree", "add_key", "perf_event_open"):
        assert closed not in profile.ADDED


def test_the_profile_is_passed_as_json_content() -> None:
    option = profile.security_option()
    assert option.startswith("seccomp={")
    assert json.loads(option.removeprefix("seccomp=")) == profile.load_profile()


def test_the_sidecar_options() -> None:
    s = settings()
    labels = {"worker-manager.worker_id": "w1"}
    options = engine_container_options(
        s, "wm-w1", VOLUMES, image="worker:abc", name="wm-w1-engine", labels=labels
    )
    assert options["network_mode"] == "container:wm-w1"
    assert options["cap_drop"] == ["ALL"] and options["cap_add"] == ["SETUID", "SETGID"]
    security = options["security_opt"]
    assert len(security) == 1 and security[0] == profile.security_option()
    assert not [o for o in security if "no-new-privileges" in o]
    assert options["devices"] == ["/dev/fuse:/dev/fuse:rwm", "/dev/net/tun:/dev/net/tun:rwm"]
    assert options["read_only"] is True and options["init"] is True
    assert "privileged" not in options
    assert options["mem_limit"] == options["memswap_limit"] == s.container_memory
    assert options["nano_cpus"] == int(s.container_cpus * 1e9)
    assert options["pids_limit"] == s.container_pids_limit
    assert options["labels"] == labels and options["image"] == "worker:abc"
    mounts = {m["Target"]: m["Source"] for m in options["mounts"]}
    assert mounts == {DATA_ROOT: VOLUMES.data, SOCKET_DIR: VOLUMES.socket}
    assert options["entrypoint"] == engine_command()
    assert options["environment"]["HTTPS_PROXY"] == PROXY_URL
    assert UNMASKED_PATHS == {"MaskedPaths": [], "ReadonlyPaths": []}
    apparmor = engine_container_options(
        s, "wm-w1", VOLUMES, image="i", name="n", labels={}, apparmor=True, proxy=None
    )
    assert "apparmor=unconfined" in apparmor["security_opt"]
    assert not [k for k in apparmor["environment"] if k.lower().endswith("_proxy")]


def test_the_worker_side() -> None:
    (mount,) = worker_mounts(VOLUMES)
    assert (mount["Target"], mount["Source"], mount["Type"]) == (
        SOCKET_DIR,
        VOLUMES.socket,
        "volume",
    )
    assert agent_docker_env() == {
        "DOCKER_HOST": DOCKER_HOST,
        "DOCKER_CONFIG": f"{SOCKET_DIR}/config",
    }
    assert DOCKER_HOST == "unix:///run/wm-docker/docker.sock"
    created = socket_volume_options("v", {"a": "b"})
    options = created["driver_opts"]["o"].split(",")
    assert {"uid=1000", "gid=1000", "mode=0700", "nosuid", "nodev", "noexec"} <= set(options)
    assert created["driver_opts"]["type"] == "tmpfs" and created["labels"] == {"a": "b"}


def test_the_engine_image_is_a_valid_environment() -> None:
    again = parse_spec(ENGINE_ENVIRONMENT.canonical())
    assert again == ENGINE_ENVIRONMENT
    assert {"docker.io", "rootlesskit", "slirp4netns", "uidmap", "fuse-overlayfs"} <= set(
        ENGINE_ENVIRONMENT.apt
    )
    assert any("setcap cap_setuid+ep /usr/bin/newuidmap" in line for line in ENGINE_ENVIRONMENT.run)


def test_the_entry_command_reaches_the_workers_loopback() -> None:
    argv = engine_command()
    assert "--disable-host-loopback" not in argv
    assert "--net=slirp4netns" in argv and "--copy-up=/etc" in argv
    assert f"--host={DOCKER_HOST}" in argv and f"--data-root={DATA_ROOT}" in argv
    assert argv[argv.index("setpriv") + 1 : argv.index("setpriv") + 3] == [
        "--reuid=1000",
        "--regid=1000",
    ]
    assert f"http://10.0.2.2:{PROXY_PORT}" == PROXY_URL
    env = engine_env()
    assert json.loads(env["WM_DOCKER_CLIENT_CONFIG"]) == client_config()
    assert client_config()["proxies"] == {
        "default": {"httpProxy": PROXY_URL, "httpsProxy": PROXY_URL, "noProxy": env["NO_PROXY"]}
    }
    assert client_config(None) == {}


GOOD = HostFacts(
    security_options=("name=seccomp,profile=default",),
    runtimes=("runc",),
    kernel_version="6.1.0",
    devices={"/dev/fuse": True, "/dev/net/tun": True},
    max_user_namespaces=1000,
)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"container_runtime": "runsc"}, "WM_CONTAINER_RUNTIME=runsc"),
        ({"security_options": ("name=seccomp", "name=rootless")}, "itself rootless"),
        ({"security_options": ()}, "no seccomp support"),
        ({"runtimes": ("runsc",)}, "no runc runtime"),
        ({"kernel_version": "4.15.0-generic"}, "older than 4.18"),
        ({"max_user_namespaces": 0}, "max_user_namespaces is 0"),
        ({"unprivileged_userns_clone": 0}, "unprivileged_userns_clone=0"),
        ({"apparmor_restrict_unprivileged_userns": 1}, "AppArmor restricts"),
        ({"devices": {"/dev/fuse": True, "/dev/net/tun": False}}, "no /dev/net/tun"),
    ],
)
def test_refusals_say_why(change: dict[str, Any], words: str) -> None:
    assert rootless_problem(GOOD) is None
    problem = rootless_problem(HostFacts(**{**_fields(GOOD), **change}))
    assert problem is not None and words in problem


def _fields(facts: HostFacts) -> dict[str, Any]:
    return {name: getattr(facts, name) for name in HostFacts.__slots__}


def test_facts_from_docker_info_and_proc(tmp_path: Path) -> None:
    (tmp_path / "sys/user").mkdir(parents=True)
    (tmp_path / "sys/user/max_user_namespaces").write_text("96367\n")
    info = {
        "SecurityOptions": ["name=apparmor", "name=seccomp,profile=default"],
        "Runtimes": {"runc": {}, "runsc": {}},
        "KernelVersion": "6.18.44",
    }
    facts = facts_from(info, None, proc=tmp_path, devices=[tmp_path / "fuse"])
    assert facts.apparmor and facts.runtimes == ("runc", "runsc")
    assert facts.max_user_namespaces == 96367 and facts.unprivileged_userns_clone is None
    assert facts.devices == {str(tmp_path / "fuse"): False}


class FakeImage:
    attrs = {"Size": 200 * 1024 * 1024}


class FakeImages:
    def get(self, name: str) -> FakeImage:
        return FakeImage()


class FakeApi:
    def __init__(self) -> None:
        self.execs = 0

    def exec_create(self, *args: Any, **kwargs: Any) -> dict[str, str]:
        self.execs += 1
        raise AssertionError("nothing is sent past the bound")


class FakeClient:
    def __init__(self) -> None:
        self.api = FakeApi()
        self.images = FakeImages()


def test_the_preload_is_bounded_before_anything_is_sent() -> None:
    client: Any = FakeClient()
    with pytest.raises(PreloadError, match="WM_DOCKER_PRELOAD_MAX_BYTES allows 1000"):
        preload_images(client, "engine", ["base", "other"], max_bytes=1000)
    assert client.api.execs == 0
