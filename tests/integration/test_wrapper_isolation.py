"""The root wrapper reads nothing the agent or a repository wrote (issue 24 §2 a, l).

The wrapper runs as root holding the worker's Redis password. A repository checked out into
``/workspace`` and everything the agent writes (its home, ``~/.local``) are hostile: a top-level
``asyncio.py`` or ``json.py`` there, a ``.pth``, ``usercustomize.py`` or ``sitecustomize.py`` in
the agent's user site-packages must never run in the wrapper, at its first start nor when it
starts again after a suspend. And a create's ``env`` reaches the agent's processes only, never
the wrapper's own environment; names that hook into a loader, an interpreter, a shell, git or
TLS are refused outright.

Each planted file writes ``/tmp/hostile-<what>-<uid>`` when it runs; the agent's own Python may
run them (uid 1000: its own business), the wrapper (uid 0) must not.
"""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.flows import Harness
from tests.support.git_server import GitServer
from worker_manager import Client
from worker_manager.core.bridge import docker_bridge_gateway

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: Runs the prompt as a shell script, in the workspace.
SHELL_AGENT = ["sh", "-c", 'cd /workspace && eval "$(cat)"']


def marker(what: str) -> str:
    """Python that leaves ``/tmp/hostile-<what>-<uid>`` behind when it runs."""
    return (
        "import os\n"
        "try:\n"
        f"    open('/tmp/hostile-{what}-%d' % os.getuid(), 'w').write('ran')\n"
        "except OSError:\n"
        "    pass\n"
    )


def shadowing(what: str) -> str:
    """A module that shadows the standard library's ``what``: it leaves its marker, then puts
    the real module in its place, so a wrapper that imports it keeps working (and the test
    fails on the marker, not on a crash)."""
    return marker(what) + (
        "import importlib, sys\n"
        "here = os.path.dirname(os.path.abspath(__file__))\n"
        "sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]\n"
        "del sys.modules[__name__]\n"
        "sys.modules[__name__] = importlib.import_module(__name__)\n"
    )


#: The agent plants these in its user site-packages (Python's ``~/.local``), as any agent may.
PLANT = """
set -e
site=$(python3 -I -c 'import sys; print("%d.%d" % sys.version_info[:2])')
dir="$HOME/.local/lib/python$site/site-packages"
mkdir -p "$dir"
echo "import os; open('/tmp/hostile-pth-%d' % os.getuid(), 'w').write('ran')" > "$dir/x.pth"
printf '%s' "$USERCUSTOMIZE" > "$dir/usercustomize.py"
printf '%s' "$SITECUSTOMIZE" > "$dir/sitecustomize.py"
printf '%s' "$SHADOW_JSON" > /workspace/json.py
ls "$dir"
"""


@pytest.fixture
async def http_git(tmp_path: Path) -> AsyncIterator[GitServer]:
    root = tmp_path / "repos"
    root.mkdir()
    server = await GitServer(root, host=docker_bridge_gateway()).start()
    try:
        yield server
    finally:
        await server.close()


async def run(harness: Harness, worker_id: str, script: str) -> list[dict[str, str]]:
    input_id = await harness.client.send_input(worker_id, script)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=120)
    return [e for e in events if e.get("input_id") == input_id]


def stdout(events: list[dict[str, str]]) -> list[str]:
    return [e["content"] for e in events if e["type"] == "stdout"]


def ran_as_root(container: Any) -> list[str]:
    """The markers the wrapper (root) left in ``/tmp``."""
    code, out = container.exec_run(["ls", "/tmp"])
    assert code == 0, out
    return [name for name in out.decode().split() if name.startswith("hostile-")
            and name.endswith("-0")]  # fmt: skip


def wrapper_process(container: Any) -> tuple[int, dict[str, str]]:
    """The wrapper's host pid and its environment, read from the host's ``/proc``."""
    top = container.top(ps_args="-eo pid,uid,args")
    for row in top["Processes"]:
        pid, uid, args = row[0], row[1], " ".join(row[2:])
        if uid == "0" and "python3" in args and "worker_base" in args:
            raw = Path(f"/proc/{pid}/environ").read_bytes()
            pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
            return int(pid), {k.decode(): v.decode() for k, _, v in pairs}
    raise AssertionError(f"no wrapper among {top['Processes']}")


async def test_nothing_the_repository_or_the_agent_wrote_runs_in_the_wrapper(
    harness: Harness, http_git: GitServer
) -> None:
    http_git.create(
        "hostile",
        {
            "README.md": "a repository that shadows the standard library\n",
            "asyncio.py": shadowing("asyncio"),
            "json.py": shadowing("json"),
            "sitecustomize.py": marker("workspace-sitecustomize"),
        },
    )
    await harness.start(workspace_sources=[f"http://{http_git.host}:{http_git.port}"])
    greeting = f"hello-{secrets.token_hex(4)}"
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(SHELL_AGENT),
        repository=json.dumps({"url": http_git.url("hostile")}),
        env=json.dumps(
            {
                "GREETING": greeting,
                "USERCUSTOMIZE": marker("usercustomize"),
                "SITECUSTOMIZE": marker("user-sitecustomize"),
                "SHADOW_JSON": shadowing("json"),
            }
        ),
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=180) == "RUNNING"
    container = harness.container(worker_id)

    # First start: the repository's modules are in the workspace, and the wrapper ran none.
    events = await run(harness, worker_id, "ls; pwd; echo $HOME; echo $GREETING")
    listed = stdout(events)
    assert "asyncio.py" in listed and "json.py" in listed, events
    # The agent still works where it always did, with its own home and the create's env.
    assert listed[-3:] == ["/workspace", "/home/worker", greeting], events
    assert ran_as_root(container) == []
    # The wrapper's own environment holds no variable of the create's, and its home is root's.
    _pid, environ = wrapper_process(container)
    assert "GREETING" not in environ and "USERCUSTOMIZE" not in environ, sorted(environ)
    assert environ["HOME"] == "/root"
    assert not [name for name in environ if name.startswith("PYTHON")], sorted(environ)
    # Its code and vendored packages are root's and no one else may write them.
    code, out = container.exec_run(
        ["stat", "-c", "%u %a %n", "/opt/worker-base", "/opt/worker-base/worker_base",
         "/opt/worker-base/redis", "/opt/worker-base/worker_base/__main__.py"]
    )  # fmt: skip
    assert code == 0, out
    for line in out.decode().splitlines():
        uid, mode, _name = line.split(" ", 2)
        assert uid == "0" and int(mode, 8) & 0o022 == 0, line

    # The agent plants its user site-packages, then the worker sleeps and wakes: a new
    # container, the same home and workspace, a wrapper that starts again.
    planted = await run(harness, worker_id, PLANT)
    assert planted[-1]["content"] == "0", planted
    assert {"x.pth", "usercustomize.py", "sitecustomize.py"} <= set(stdout(planted))
    first_container = container.id
    worker = Client(harness.redis, key_prefix=harness.settings.key_prefix).worker(worker_id)
    await worker.suspend()
    assert (await worker.resume()).status == "STARTING"
    assert (await worker.wait_running(timeout=120)).status == "RUNNING"

    # The wrapper that started again is unharmed and still answers; nothing ran in it.
    again = await run(harness, worker_id, "echo alive; pwd; echo $HOME")
    assert stdout(again) == ["alive", "/workspace", "/home/worker"], again
    assert again[-1]["content"] == "0"
    container = harness.container(worker_id)
    assert container.id != first_container
    assert ran_as_root(container) == []
    logs = container.logs().decode("utf-8", "replace")
    assert "Traceback" not in logs, logs[-2000:]


async def test_a_create_env_that_hooks_into_what_runs_is_refused(harness: Harness) -> None:
    await harness.start()
    for name in ("LD_PRELOAD", "PYTHONPATH", "BASH_ENV", "GIT_SSH_COMMAND", "SSL_CERT_FILE"):
        reply = await harness.client.request(
            "create",
            agent_type="CUSTOM",
            agent_command=json.dumps(["cat"]),
            env=json.dumps({name: "/tmp/x"}),
        )
        assert not reply.ok and reply.error == "invalid_command", (name, reply)
        assert reply.message and "env" in reply.message and name in reply.message, reply
    # Nothing was recorded, nothing was started.
    assert await harness.redis.zcard(harness.keys.index) == 0


async def test_a_pooled_worker_gives_the_create_env_to_its_agent_alone(harness: Harness) -> None:
    """The warm pool's hand-over carries the create's env as data too: the pooled wrapper,
    started isolated before any create, gives it to the agent, with the agent's own home."""
    manager = await harness.start(warm_pool={"CUSTOM": 1}, warm_pool_interval_seconds=0.3)
    pool = harness.keys.pool(manager.settings.manager_id, "CUSTOM")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not (pooled := await harness.redis.smembers(pool)):
        assert loop.time() < deadline, "the pool never filled"
        await asyncio.sleep(0.1)
    greeting = f"hello-{secrets.token_hex(4)}"
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(SHELL_AGENT),
        env=json.dumps({"GREETING": greeting}),
    )
    assert reply.ok and reply.worker_id in pooled, (reply, pooled)
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=120) == "RUNNING"
    events = await run(harness, worker_id, "pwd; echo $HOME; echo $GREETING")
    assert stdout(events) == ["/workspace", "/home/worker", greeting], events
    _pid, environ = wrapper_process(harness.container(worker_id))
    assert "GREETING" not in environ and environ["HOME"] == "/root", sorted(environ)
