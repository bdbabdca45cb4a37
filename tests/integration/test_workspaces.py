"""Workspaces (SPEC §8): a repository served from the host over plain HTTP is checked out at a
tag before the worker runs, through the egress proxy, from a mirror every worker of that URL
shares; a failing checkout ends the worker FAILED ``workspace_failed`` with git's own words."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import docker.errors
import pytest

from tests.support.cli import run_cli
from tests.support.flows import Harness
from tests.support.git_server import GitServer, git
from tests.support.readme import run_example
from worker_manager import Client, Worker, WorkspaceRequestError

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: Runs the prompt as a shell script, in the workspace.
SHELL_AGENT = ["sh", "-c", 'cd /workspace && eval "$(cat)"']


def source_of(server: GitServer) -> str:
    """The WM_WORKSPACE_SOURCES entry that lets creates name this (private) host."""
    return f"http://{server.host}:{server.port}"


async def run(harness: Harness, worker_id: str, script: str) -> list[dict[str, str]]:
    input_id = await harness.client.send_input(worker_id, script)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=120)
    return [e for e in events if e.get("input_id") == input_id]


T = TypeVar("T")


async def wait_for(get: Callable[[], Awaitable[T]], good: Callable[[T], bool]) -> T:
    """Poll ``get`` until ``good`` (30 s at most): the record is copied on the next round."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not good(value := await get()):
        assert loop.time() < deadline, value
        await asyncio.sleep(0.2)
    return value


async def wait_for_event(worker: Worker, input_id: str, status: str) -> None:
    async with asyncio.timeout(30):
        async for event in worker.events():
            if event.input_id == input_id and event.content == status:
                return


def stdout(events: list[dict[str, str]]) -> list[str]:
    return [e["content"] for e in events if e["type"] == "stdout"]


async def test_a_repository_is_checked_out_at_its_tag_before_the_worker_runs(
    harness: Harness, http_git: GitServer
) -> None:
    tagged = http_git.create("demo", {"README.md": "v1\n", "src/app.py": "print(1)\n"}, tag="v1")
    # A later commit on main: the tag, not main's head, must be what the worker gets.
    work = http_git.root / "later"
    git("clone", "-q", str(http_git.root / "demo.git"), str(work))
    (work / "README.md").write_text("v2\n")
    git("commit", "-qam", "second", cwd=work)
    git("push", "-q", "origin", "main", cwd=work)
    assert http_git.head("demo") != tagged

    await harness.start(workspace_sources=[source_of(http_git)])
    reply = await harness.client.request(
        "create",
        agent_type="CUSTOM",
        agent_command=json.dumps(SHELL_AGENT),
        repository=json.dumps({"url": http_git.url("demo"), "ref": "v1", "branch": "work"}),
        env=json.dumps({"GREETING": "hello"}),
    )
    assert reply.ok, reply
    worker_id = str(reply.worker_id)
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=180) == "RUNNING"

    # The checkout said so while it ran.
    lifecycle = await harness.redis.xrange(harness.keys.output(worker_id))
    progress = [f["content"] for _i, f in lifecycle if f["type"] == "status"]
    assert any('"cloning"' in p for p in progress), progress

    events = await run(
        harness,
        worker_id,
        "git rev-parse HEAD; git branch --show-current; cat README.md; echo $GREETING;"
        " git remote get-url origin",
    )
    assert stdout(events) == [tagged, "work", "v1", "hello", http_git.url("demo")], events
    record = await harness.redis.hgetall(harness.keys.worker(worker_id))
    assert record["workspace_base"] == tagged


async def test_the_tenth_worker_of_a_repository_does_not_fetch_it_again(
    harness: Harness, http_git: GitServer
) -> None:
    # Incompressible content, so the fetch of it is unmistakable.
    http_git.create("shared", {"f": "x\n", "blob": secrets.token_hex(256 * 1024)})
    await harness.start(workspace_sources=[source_of(http_git)])
    repository = json.dumps({"url": http_git.url("shared")})
    workers = []
    served: list[int] = []
    for _ in range(2):
        before = len(http_git.answered)
        reply = await harness.client.request(
            "create",
            agent_type="CUSTOM",
            agent_command=json.dumps(SHELL_AGENT),
            repository=repository,
        )
        assert reply.ok, reply
        worker_id = str(reply.worker_id)
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=180) == "RUNNING"
        workers.append(worker_id)
        served.append(sum(http_git.answered[before:]))
    # The first checkout fetched the repository (its 256 KiB blob); the second only asked
    # whether anything is new.
    assert served[0] > 256 * 1024 > 100 * served[1], served
    # Its objects are the mirror's, borrowed: the workspace holds none of its own.
    events = await run(harness, workers[1], "cat .git/objects/info/alternates; git log --oneline")
    lines = stdout(events)
    assert lines[0] == "/var/lib/wm-mirror/repo.git/objects" and len(lines) == 2, events


async def test_a_checkout_that_fails_ends_the_worker_with_gits_words(
    harness: Harness, http_git: GitServer
) -> None:
    http_git.create("there", {"f": "x\n"})
    await harness.start(workspace_sources=[source_of(http_git)])
    for repository, words in (
        ({"url": http_git.url("missing")}, "not found"),
        ({"url": http_git.url("there"), "ref": "no-such-tag"}, "'no-such-tag' is not a branch"),
    ):
        reply = await harness.client.request(
            "create",
            agent_type="CUSTOM",
            agent_command=json.dumps(SHELL_AGENT),
            repository=json.dumps(repository),
        )
        assert reply.ok, reply
        worker_id = str(reply.worker_id)
        assert await harness.wait_status(worker_id, "FAILED", "RUNNING", timeout=180) == "FAILED"
        record = await harness.redis.hgetall(harness.keys.worker(worker_id))
        assert record["reason"].startswith("workspace_failed: "), record
        assert words in record["reason"], record


async def test_a_source_the_operator_does_not_allow_is_refused(harness: Harness) -> None:
    await harness.start()  # the defaults: https, http, ssh to public hosts only
    for url in ("http://127.0.0.1:8080/x.git", "http://169.254.169.254/x", "file:///etc"):
        reply = await harness.client.request(
            "create",
            agent_type="CUSTOM",
            agent_command=json.dumps(SHELL_AGENT),
            repository=json.dumps({"url": url}),
        )
        assert not reply.ok and reply.error == "invalid_command", reply
        assert "repository" in str(reply.message)


async def test_the_work_comes_out_without_asking_the_agent(
    harness: Harness, http_git: GitServer
) -> None:
    start = http_git.create("work", {"README.md": "one\ntwo\n", "keep.txt": "k\n"})
    await harness.start(workspace_sources=[source_of(http_git)])
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(
        agent_type="CUSTOM",
        agent_command=SHELL_AGENT,
        repository={"url": http_git.url("work")},
    )
    await worker.wait_running(timeout=180)

    # The agent edits a file and adds one: the summary says so, before the input's done.
    result = await worker.run("printf 'one\\n2\\nthree\\n' > README.md; echo new > new.txt")
    summaries = [e.json() for e in result.events if e.type == "workspace"]
    assert summaries and summaries[-1]["head"] == start
    assert summaries[-1]["changed"] == [{"path": "README.md", "added": 2, "removed": 1}]
    assert summaries[-1]["untracked"] == 1
    assert [e.type for e in result.events][-2:] == ["workspace", "done"]
    # ... and the record keeps it (copied by the manager from the worker's summary key).
    info = await wait_for(lambda: worker.status(), lambda i: bool(i.workspace))
    assert info.workspace is not None and info.workspace["changed"][0]["path"] == "README.md"

    # diff: against where it started, the new file included.
    diff = await worker.diff()
    assert diff.base == start and not diff.truncated
    assert "+three" in diff.patch and "-two" in diff.patch and "new.txt" in diff.patch

    # read, list, write, exec; exec's exit code is its done.
    assert await worker.read("README.md") == b"one\n2\nthree\n"
    names = {entry.name: entry.type for entry in await worker.list(".")}
    assert names["README.md"] == "file" and names[".git"] == "directory"
    await worker.write("docs/notes.md", b"from the orchestrator\n")
    assert await worker.read("docs/notes.md") == b"from the orchestrator\n"
    ran = await worker.exec(["sh", "-c", "cat docs/notes.md; id -u; exit 3"])
    assert ran.exit_code == 3
    assert [e.content for e in ran.events if e.type == "stdout"] == [
        "from the orchestrator",
        "1000",
    ]

    # Escapes are refused: '..', absolute paths, a symlink that leads out.
    await worker.exec(["ln", "-s", "/etc", "out"])
    for path in ("../etc/passwd", "/etc/passwd", "out/passwd"):
        with pytest.raises(WorkspaceRequestError, match="workspace"):
            await worker.read(path)
    with pytest.raises(WorkspaceRequestError):
        await worker.write("../escape.txt", b"x")

    # diff, read and list are answered while a prompt runs; write and exec wait their turn.
    busy = await worker.send("until [ -e /tmp/go ]; do sleep 0.05; done; echo released")
    await wait_for_event(worker, busy, "busy")
    assert await asyncio.wait_for(worker.read("keep.txt"), 20) == b"k\n"
    assert "+three" in (await asyncio.wait_for(worker.diff(), 20)).patch
    assert await asyncio.wait_for(worker.list("docs"), 20)
    harness.container(worker.id).exec_run(["touch", "/tmp/go"], user="1000")
    await worker.exec(["true"], timeout=60)  # after the prompt


async def test_workers_of_one_repository_changing_the_same_files_are_told(
    harness: Harness, http_git: GitServer
) -> None:
    http_git.create("both", {"shared.py": "x = 1\n", "a.py": "a\n", "b.py": "b\n"})
    await harness.start(workspace_sources=[source_of(http_git)])
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    workers = [
        await client.create(
            agent_type="CUSTOM",
            agent_command=SHELL_AGENT,
            repository={"url": http_git.url("both")},
        )
        for _ in range(2)
    ]
    for worker in workers:
        await worker.wait_running(timeout=180)
    first, second = workers
    await first.run("echo 'x = 2' > shared.py; echo a2 > a.py")
    await wait_for(first.status, lambda i: bool(i.workspace))
    await second.run("echo 'x = 3' > shared.py; echo b2 > b.py")

    # The second one's summary names the first, on the shared file alone ...
    info = await wait_for(second.status, lambda i: bool((i.workspace or {}).get("conflicts")))
    assert info.workspace is not None
    assert info.workspace["conflicts"] == [{"worker_id": first.id, "paths": ["shared.py"]}]
    # ... both are told on their outputs, and the lifecycle stream says so once for each.
    for me, other in ((first, second), (second, first)):
        notes = [
            e.json()
            for e in [e async for e in me.events(follow=False)]
            if e.type == "workspace" and "conflicts" in e.json()
        ]
        assert notes == [{"conflicts": [{"worker_id": other.id, "paths": ["shared.py"]}]}]
    entries = await harness.redis.xrange(harness.keys.lifecycle)
    said = [
        (f["worker_id"], f["with"], json.loads(f["paths"]))
        for _i, f in entries
        if f.get("event") == "conflict"
    ]
    assert sorted(said) == sorted(
        [(first.id, second.id, ["shared.py"]), (second.id, first.id, ["shared.py"])]
    )


async def test_the_cli_takes_the_work_out(
    harness: Harness, http_git: GitServer, tmp_path: Path
) -> None:
    http_git.create("cli", {"app.py": "print('v1')\n"})
    await harness.start(workspace_sources=[source_of(http_git)])
    code, out = await run_cli(
        harness.settings,
        tmp_path,
        "create",
        "--agent-type",
        "CUSTOM",
        "--agent-command",
        json.dumps(SHELL_AGENT),
        "--repository",
        http_git.url("cli"),
        "--env",
        "STAGE=test",
        "--wait",
        "--json",
        timeout=240,
    )
    assert code == 0, out
    worker_id = json.loads(out.strip().splitlines()[-1])["worker_id"]
    await run(harness, worker_id, "echo \"print('v2', '$STAGE')\" > app.py")

    code, patch = await run_cli(harness.settings, tmp_path, "diff", worker_id)
    assert code == 0 and "+print('v2', 'test')" in patch, patch
    code, out = await run_cli(harness.settings, tmp_path, "cp", f"{worker_id}:app.py", "got.py")
    assert code == 0, out
    assert (tmp_path / "got.py").read_text() == "print('v2', 'test')\n"
    (tmp_path / "data.txt").write_text("from here\n")
    code, out = await run_cli(harness.settings, tmp_path, "cp", "data.txt", f"{worker_id}:in/d.txt")
    assert code == 0, out
    code, out = await run_cli(
        harness.settings, tmp_path, "exec", worker_id, "--", "sh", "-c", "cat in/d.txt; exit 4"
    )
    assert code == 4 and out.strip() == "from here", out
    code, out = await run_cli(harness.settings, tmp_path, "cp", f"{worker_id}:../x", "-")
    assert code == 1 and "leaves the workspace" in out, out


async def test_the_readme_workspace_example_runs_as_written(
    harness: Harness, http_git: GitServer, tmp_path: Path
) -> None:
    http_git.create("hello", {"README": "Hello World!\n"})
    await harness.start(workspace_sources=[source_of(http_git)])
    text = await run_example(
        "workspace-example",
        tmp_path,
        {
            "WM_REDIS_URL": harness.settings.redis_url,
            "WM_KEY_PREFIX": harness.settings.key_prefix,
            "REPO_URL": http_git.url("hello"),
        },
    )
    assert "branch fix-readme changed [{'path': 'README', 'added': 1, 'removed': 0}]" in text
    assert "+hello from the agent" in text
    assert "Hello World!\nhello from the agent" in text
    assert "['todo.md']" in text
    assert "exit 0 [' M README', '?? notes/']" in text


async def test_a_pooled_worker_gets_its_repository_at_hand_over(
    harness: Harness, http_git: GitServer
) -> None:
    commit = http_git.create("pooled", {"README.md": "from the pool\n"})
    manager = await harness.start(
        workspace_sources=[source_of(http_git)],
        warm_pool={"CUSTOM": 1},
        warm_pool_interval_seconds=0.3,
    )
    key = harness.keys.pool(manager.settings.manager_id, "CUSTOM")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not (pooled := await harness.redis.smembers(key)):
        assert loop.time() < deadline, "the pool never filled"
        await asyncio.sleep(0.1)
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(
        agent_type="CUSTOM",
        agent_command=SHELL_AGENT,
        repository={"url": http_git.url("pooled")},
        env={"WHO": "pooled"},
    )
    assert worker.id in pooled  # taken from the pool
    await worker.wait_running(timeout=120)
    result = await worker.run("git rev-parse HEAD; cat README.md; echo $WHO")
    assert result.text.splitlines() == [commit, "from the pool", "pooled"]
    # Its own copy of the objects: the pooled container has no mirror mounted.
    assert (await worker.exec(["test", "-e", ".git/objects/info/alternates"])).exit_code == 1


async def test_a_mirror_goes_once_no_worker_needs_it(harness: Harness, http_git: GitServer) -> None:
    http_git.create("gone", {"f": "x\n"})
    manager = await harness.start(
        workspace_sources=[source_of(http_git)], reconcile_interval_seconds=0.5
    )
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(
        agent_type="CUSTOM", agent_command=SHELL_AGENT, repository={"url": http_git.url("gone")}
    )
    await worker.wait_running(timeout=180)
    mirror = manager.containers.volumes.mirror_name(http_git.url("gone"))
    # Its last use long past (the key expires after WM_WORKSPACE_RETENTION_DAYS): while a
    # worker refers to it, it stays.
    await harness.redis.delete(harness.keys.mirror_used(mirror))
    runs = manager.reconciler.runs
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while manager.reconciler.runs < runs + 2:
        assert loop.time() < deadline
        await asyncio.sleep(0.1)
    harness.docker.volumes.get(mirror)
    await worker.delete()
    deadline = loop.time() + 30
    while True:
        try:
            harness.docker.volumes.get(mirror)
        except docker.errors.NotFound:
            break
        assert loop.time() < deadline, "the unused mirror stayed"
        await asyncio.sleep(0.2)
