"""The wrapper as the manager runs it: a real ``python -m worker_base`` process, its own ACL user.

Every test worker connects as a Redis user that may run only what SPEC §4 grants a worker
(XREADGROUP/XACK on its input, XADD on its output, SET on its heartbeat, plus the connection
handshake), so any other command the wrapper sends fails the test with NOPERM. The test itself
drives and observes the streams through the admin client, like an orchestrator would.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import signal
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tests.support.redis_server import RedisServer
from worker_manager.settings import Settings

REPO = Path(__file__).resolve().parents[2]
ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
WORKER_COMMANDS = (
    "+xreadgroup",
    "+xack",
    "+xadd",
    "+set",
    "+ping",
    "+auth",
    "+hello",
    "+client|setinfo",
)

Entry = dict[str, str]


class OutputTail:
    """Follows an output stream from its start, like ``worker-manager tail --follow``."""

    def __init__(self, redis: Redis, key: str) -> None:
        self._redis = redis
        self._key = key
        self._last = "0"
        self.seen: list[Entry] = []

    async def next(self, timeout: float = 10.0) -> Entry:
        async with asyncio.timeout(timeout):
            while True:
                reply = await self._redis.xread({self._key: self._last}, count=1, block=200)
                if reply:
                    entry_id, fields = reply[0][1][0]
                    self._last = entry_id
                    self.seen.append(fields)
                    return dict(fields)

    async def until(self, predicate: Callable[[Entry], bool], timeout: float = 10.0) -> list[Entry]:
        """Entries up to and including the first that matches (all within ``timeout``)."""
        got: list[Entry] = []
        async with asyncio.timeout(timeout):
            while True:
                entry = await self.next(timeout)
                got.append(entry)
                if predicate(entry):
                    return got

    def restart(self) -> None:
        """Read from the beginning again (the stream was recreated)."""
        self._last = "0"


def is_event(
    type_: str, content: str | None = None, input_id: str | None = None
) -> Callable[[Entry], bool]:
    def match(entry: Entry) -> bool:
        return (
            entry["type"] == type_
            and (content is None or entry["content"] == content)
            and (input_id is None or entry["input_id"] == input_id)
        )

    return match


@dataclass
class WrapperProcess:
    process: asyncio.subprocess.Process
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait(self, timeout: float = 10.0) -> int:
        async with asyncio.timeout(timeout):
            return await self.process.wait()

    async def stop(self, timeout: float = 10.0) -> int:
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        return await self.wait(timeout)

    async def kill(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()


@dataclass
class Worker:
    """One worker's keys, ACL user and directories; ``start()`` runs its wrapper."""

    id: str
    prefix: str
    admin: Redis
    url: str
    tmp: Path
    workdir: Path
    state_dir: Path
    processes: list[WrapperProcess] = field(default_factory=list)

    @property
    def input_key(self) -> str:
        return f"{self.prefix}:{self.id}:input"

    @property
    def output_key(self) -> str:
        return f"{self.prefix}:{self.id}:output"

    @property
    def heartbeat_key(self) -> str:
        return f"{self.prefix}:{self.id}:heartbeat"

    def env(self, command: list[str], **extra: str) -> dict[str, str]:
        env = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith("WM_") and name != "PYTHONPATH"
        }
        env.update(
            PYTHONPATH=str(REPO),
            WM_WORKER_ID=self.id,
            WM_REDIS_URL=self.url,
            WM_KEY_PREFIX=self.prefix,
            WM_AGENT_TYPE="CUSTOM",
            WM_AGENT_COMMAND=_json_list(command),
            WM_WORKDIR=str(self.workdir),
            WM_STATE_DIR=str(self.state_dir),
            WM_HEARTBEAT_INTERVAL="0.2",
            WM_HEARTBEAT_TTL="3",
            WM_OUTPUT_MAXLEN="10000",
            WM_CANCEL_GRACE_SECONDS="2",
            WM_WRAPPER_BLOCK_MS="500",
        )
        env.update(extra)
        return env

    async def start(self, command: list[str], **extra: str) -> WrapperProcess:
        log_path = self.tmp / f"wrapper-{len(self.processes)}.log"
        with log_path.open("wb") as log:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "worker_base",
                env=self.env(command, **extra),
                cwd=self.tmp,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        wrapper = WrapperProcess(process, log_path)
        self.processes.append(wrapper)
        return wrapper

    async def push(self, content: str = "", type_: str | None = None) -> str:
        fields = {"content": content}
        if type_ is not None:
            fields["type"] = type_
        return str(await self.admin.xadd(self.input_key, fields))

    async def pending_count(self) -> int:
        info = await self.admin.xpending(self.input_key, "wrapper")
        return int(info["pending"])

    async def wait_acked(self, timeout: float = 5.0) -> None:
        """Until the group has nothing pending (the wrapper acks right after ``done``)."""
        async with asyncio.timeout(timeout):
            while await self.pending_count():
                await asyncio.sleep(0.02)

    def tail(self) -> OutputTail:
        return OutputTail(self.admin, self.output_key)


def _json_list(items: list[str]) -> str:
    import json

    return json.dumps(items)


def with_credentials(url: str, username: str, password: str) -> str:
    parts = urlsplit(url)
    return f"redis://{username}:{password}@{parts.hostname}:{parts.port}/0"


@pytest.fixture
async def worker(
    redis_server: RedisServer, settings: Settings, redis: Redis, tmp_path: Path
) -> AsyncIterator[Worker]:
    """A worker as the manager sets it up: ACL user, consumer group, directories."""
    worker_id = secrets.token_hex(8)
    prefix = settings.key_prefix
    username = f"{prefix}-{worker_id}"
    password = secrets.token_hex(16)
    keys = [f"~{prefix}:{worker_id}:{name}" for name in ("input", "output", "heartbeat")]
    rules = [*keys, "-@all", *WORKER_COMMANDS]
    try:
        await redis.execute_command(
            "ACL", "SETUSER", username, "reset", "on", f">{password}", *rules
        )
    except ResponseError:  # Redis < 7.2 has no CLIENT SETINFO (and clients ignore its error)
        rules.remove("+client|setinfo")
        await redis.execute_command(
            "ACL", "SETUSER", username, "reset", "on", f">{password}", *rules
        )
    await redis.xgroup_create(f"{prefix}:{worker_id}:input", "wrapper", id="0", mkstream=True)
    workdir = tmp_path / "workspace"
    workdir.mkdir()
    state = Worker(
        id=worker_id,
        prefix=prefix,
        admin=redis,
        url=with_credentials(redis_server.url, username, password),
        tmp=tmp_path,
        workdir=workdir,
        state_dir=tmp_path / "state",
    )
    try:
        yield state
    finally:
        for process in state.processes:
            try:
                await process.stop(timeout=8)
            except TimeoutError:
                await process.kill()
        await redis.execute_command("ACL", "DELUSER", username)
    for process in state.processes:
        # The ACL user allows exactly what a worker may do; anything else would show here.
        assert "NOPERM" not in process.log, process.log
