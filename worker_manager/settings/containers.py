"""What a worker container gets and how it is watched: limits, hardening, heartbeats, output."""

from __future__ import annotations

import secrets

from pydantic import BaseModel, Field, SecretStr

from worker_manager.contract.limits import MIB, parse_size


class ContainerSettings(BaseModel):
    output_maxlen: int = Field(default=10_000, ge=100)
    output_trim_interval_seconds: float = Field(
        default=2.0, gt=0, description="How often the manager trims live workers' output."
    )
    output_overflow_factor: int = Field(
        default=20,
        ge=2,
        description="A worker that writes more than this many times its output cap in one trim "
        "round is stopped (output_overflow).",
    )
    output_max_bytes: int = Field(
        default=256 * MIB,
        ge=MIB,
        description="A worker whose output stream holds more than this after a trim is stopped.",
    )
    heartbeat_interval_seconds: float = Field(default=2.0, gt=0)
    heartbeat_ttl_seconds: int = Field(default=10, ge=2)
    start_timeout_seconds: float = Field(default=120.0, gt=0)
    watch_interval_seconds: float = Field(default=1.0, gt=0)
    stop_timeout_seconds: int = Field(default=10, ge=0)
    worker_acl: bool = Field(
        default=True,
        description="One Redis ACL user per worker; false shares the worker URL (unsafe).",
    )
    worker_secret: SecretStr = Field(
        default_factory=lambda: SecretStr(secrets.token_hex(32)),
        description="Key the per-worker Redis passwords are derived from; random per process "
        "unless set.",
    )
    container_memory: str = "2g"
    container_cpus: float = Field(default=1.0, gt=0)
    container_pids_limit: int = Field(default=512, ge=16)
    container_network: str = "bridge"
    container_user: str = Field(
        default="1000:1000",
        pattern=r"^[1-9][0-9]{0,9}(:[0-9]{1,10})?$",
        description="The agent's user in a worker container (uid:gid, not root). The wrapper "
        "runs as root with only SETUID, SETGID and KILL, and starts the agent as this user.",
    )
    container_disk: str = Field(
        default="10g",
        pattern=r"^[0-9]+(\.[0-9]+)?[bkmgtBKMGT]?$",
        description="What a worker may keep in its volumes (its home and workspace), e.g. 10g; "
        "past it the worker is FAILED disk_exceeded (measured every disk_check_interval).",
    )
    disk_check_interval_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How often the manager measures its workers' volumes (one Docker df call).",
    )
    container_tmp_size: str = Field(
        default="512m",
        pattern=r"^[0-9]+[kmgKMG]?$",
        description="The size of a worker's /tmp (a tmpfs, counted against its memory limit).",
    )
    container_runtime: str | None = Field(
        default=None,
        description="A Docker runtime for worker containers (e.g. runsc, gVisor, registered in "
        "the Engine's daemon.json); unset: the Engine's default.",
    )
    docker_module_socket: str | None = Field(
        default=None,
        description="Host Docker socket given to workers with the DOCKER module. Root-equivalent "
        "on the host: unset by default, so DOCKER workers get a CLI and no daemon.",
    )

    @property
    def container_disk_bytes(self) -> int:
        return parse_size(self.container_disk)
