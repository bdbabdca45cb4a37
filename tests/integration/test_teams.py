"""Teams (SPEC §12) through the real interfaces: workers in containers whose agents use
``wm-team``, the board in Redis, the manager's membership entries, and each worker's own Redis
user as the judge of who may read and write a board."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from redis.asyncio import Redis
from redis.exceptions import NoPermissionError

from tests.support.cli import run_cli
from tests.support.flows import Harness
from tests.support.git_server import GitServer
from worker_manager.client.api import Client
from worker_manager.contract.teams import BoardEntry

pytestmark = [pytest.mark.docker, pytest.mark.redis]

#: The agent prints its prompt (so the test sees what the wrapper put in front of it), then
#: runs each line of it that starts with ``RUN: `` as a shell command, as an agent would.
AGENT = [
    "sh",
    "-c",
    'cat "$WM_PROMPT_FILE"; echo; sed -n \'s/^RUN: //p\' "$WM_PROMPT_FILE" | sh 2>&1',
]


#: Where the agent finds its wrapper (``worker_base.team_socket``), unless told otherwise.
TEAM_SOCKET = "/home/.worker-manager/team/socket"


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await check():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.1)


async def worker(harness: Harness, team: str | None) -> str:
    fields: dict[str, Any] = {"agent_type": "CUSTOM", "agent_command": AGENT}
    if team:
        fields["team"] = team
    reply = await harness.client.create(**fields)
    assert reply.ok, reply
    assert reply.worker_id is not None
    return reply.worker_id


async def run(
    harness: Harness, worker_id: str, prompt: str
) -> tuple[list[str], list[dict[str, str]]]:
    """One input; the agent's stdout lines and every event up to its ``done``."""
    input_id = await harness.client.send_input(worker_id, prompt)
    events = await harness.events_until_done(worker_id, input_id=input_id, timeout=60)
    mine = [e for e in events if e.get("input_id") == input_id]
    assert mine[-1]["content"] == "0", json.dumps([(e["type"], e["content"]) for e in mine])
    return [e["content"] for e in mine if e["type"] == "stdout"], events


def as_worker(harness: Harness, worker_id: str) -> Redis:
    """The worker's own Redis user, as its container has it (straight at Redis)."""
    container = harness.container(worker_id)
    env = dict(item.partition("=")[::2] for item in container.attrs["Config"]["Env"])
    password = urlsplit(env["WM_REDIS_URL"]).password
    parts = urlsplit(harness.settings.redis_url)
    user = harness.keys.acl_user(worker_id)
    return Redis.from_url(
        f"redis://{user}:{password}@{parts.hostname}:{parts.port}/0", decode_responses=True
    )


async def test_a_team_shares_a_board_its_agents_use_and_no_one_else_reaches(
    harness: Harness,
) -> None:
    await harness.start()
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    a, b = await worker(harness, "alpha"), await worker(harness, "alpha")
    other, alone = await worker(harness, "beta"), await worker(harness, None)
    for worker_id in (a, b, other, alone):
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    alpha = client.team("alpha")

    # The manager says who joined (from the lifecycle stream).
    async def both_joined() -> bool:
        found = {m.worker_id: m.status for m in await alpha.members()}
        return found == {a: "joined", b: "joined"}

    await until(both_joined, "the board did not say that both joined")
    status = await harness.client.request("status", worker_id=a)
    assert (status.details or {}).get("team") == "alpha"

    # A posts through its wrapper; B reads it with A as the sender.
    await run(harness, a, "RUN: wm-team post 'the schema is in: use v2'")
    posts = [e for e in await alpha.board() if e.kind == "post"]
    assert [(e.sender, e.content) for e in posts] == [(a, "the schema is in: use v2")]
    lines, events = await run(harness, b, "what is new?\nRUN: wm-team read --json")
    # ... in front of B's next prompt, and as a ``team`` event on B's output.
    text = "\n".join(lines)
    assert "the schema is in: use v2" in text.split("what is new?")[0], text
    team_events = [json.loads(e["content"]) for e in events if e["type"] == "team"]
    assert any(e["sender"] == a and e["content"] == "the schema is in: use v2" for e in team_events)
    read = [e for line in lines if line.startswith("{") for e in json.loads(line)["entries"]]
    assert any(e["sender"] == a and "use v2" in e["content"] for e in read), lines

    # A forged sender is not believed, however it is tried.
    forge = (
        f"RUN: WM_WORKER_ID={b} wm-team post forged-by-env\n"
        "RUN: sed '1,/^PY$/d' \"$WM_PROMPT_FILE\" | python3\n"
        "PY\n"
        "import json, os, socket\n"
        f"path = os.environ.get('WM_TEAM_SOCKET') or {TEAM_SOCKET!r}\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "s.connect(path)\n"
        f"request = {{'op': 'post', 'text': 'forged-by-socket', 'sender': {b!r}}}\n"
        "s.sendall(json.dumps(request).encode() + b'\\n')\n"
        "print(s.recv(65536).decode())\n"
    )
    await run(harness, a, forge)
    forged = [e for e in await alpha.board() if e.content.startswith("forged-by")]
    assert forged and all(e.sender == a for e in forged), forged

    # Another team's agent and a worker of no team see nothing of it.
    lines, _ = await run(harness, other, "RUN: wm-team read")
    assert not any("use v2" in line for line in lines)
    lines, _ = await run(harness, alone, "RUN: wm-team post hello; echo exit=$?")
    assert "exit=0" not in lines, lines
    for outsider in (other, alone):
        redis = as_worker(harness, outsider)
        try:
            with pytest.raises(NoPermissionError):
                await redis.xrange(alpha.board_key)
            with pytest.raises(NoPermissionError):
                await redis.xadd(alpha.board_key, {"sender": a, "kind": "post", "content": "x"})
        finally:
            await redis.aclose()
    # A member's own user may append and read its board, and nothing else on it.
    redis = as_worker(harness, a)
    try:
        assert await redis.xrange(alpha.board_key, count=1)
        with pytest.raises(NoPermissionError):
            await redis.delete(alpha.board_key)
        with pytest.raises(NoPermissionError):
            await redis.xrange(client.team("beta").board_key)
    finally:
        await redis.aclose()

    # A person briefs the team; the next prompt of each member carries it.
    await alpha.post("brief: ship by Friday")
    lines, _ = await run(harness, a, "go on")
    assert any("ship by Friday" in line for line in lines), lines

    # A flood from one agent is bounded, and the others keep reading.
    before = len(await alpha.board())
    flood = "for i in $(seq 1 60); do wm-team post flood-$i >/dev/null 2>&1; done; true"
    await run(harness, a, f"RUN: {flood}")
    flooded = [e for e in await alpha.board() if e.content.startswith("flood-")]
    assert 0 < len(flooded) < 30, len(flooded)
    lines, _ = await run(harness, b, "RUN: wm-team read --json")
    assert len(await alpha.board()) >= before

    # A member that ends is said to have left.
    await harness.client.request("delete", worker_id=a)

    async def a_left() -> bool:
        return any(m.worker_id == a and m.status == "left" for m in await alpha.members())

    await until(a_left, "the board did not say that A left")


async def test_a_producer_post_needs_no_member_and_expires_with_the_team(
    harness: Harness,
) -> None:
    await harness.start(team_retention_seconds=60)
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    team = client.team("briefed-early")
    entry_id = await team.post("read the README first")
    entries: list[BoardEntry] = await team.board()
    assert [(e.entry_id, e.sender, e.content) for e in entries] == [
        (entry_id, "producer", "read the README first")
    ]
    ttl = await harness.redis.ttl(team.board_key)
    assert 0 < ttl <= 60  # no live member: the board goes once it has been unused a while
    worker_id = await worker(harness, "briefed-early")
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"

    async def kept() -> bool:
        return bool(await harness.redis.ttl(team.board_key) == -1)

    await until(kept, "a team with a live member kept its board expiring")
    lines, _ = await run(harness, worker_id, "hello")
    assert any("read the README first" in line for line in lines), lines
    await harness.client.request("delete", worker_id=worker_id)

    async def expiring() -> bool:
        return 0 < int(await harness.redis.ttl(team.board_key)) <= 60

    await until(expiring, "the board of a team with no live member does not expire")


async def test_teammates_changing_the_same_file_are_told_on_the_board(
    harness: Harness, http_git: GitServer, tmp_path: Path
) -> None:
    # Two repositories: the team, not the URL, is what makes them teammates here.
    for name in ("left", "right"):
        http_git.create(name, {"shared.py": "x = 1\n", f"{name}.py": "own\n"})
    await harness.start(workspace_sources=[f"http://{http_git.host}:{http_git.port}"])
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    ids = []
    for name in ("left", "right"):
        reply = await harness.client.create(
            agent_type="CUSTOM",
            agent_command=AGENT,
            team="gamma",
            repository={"url": http_git.url(name)},
        )
        assert reply.ok and reply.worker_id, reply
        ids.append(reply.worker_id)
    for worker_id in ids:
        assert await harness.wait_status(worker_id, "RUNNING", "FAILED", timeout=180) == "RUNNING"
    first, second = ids
    await run(harness, first, "RUN: cd /workspace && echo 'x = 2' > shared.py")
    await run(
        harness, second, "RUN: cd /workspace && echo 'x = 3' > shared.py && echo r > right.py"
    )

    async def found() -> bool:
        for worker_id in ids:
            status = await harness.client.request("status", worker_id=worker_id)
            if "conflicts" in (status.details or {}).get("workspace", ""):
                return True
        return False

    try:
        await until(found, "the conflict between teammates was not found")
    except AssertionError:
        for worker_id in ids:
            print(await harness.redis.hgetall(harness.keys.worker(worker_id)))
        raise

    async def said() -> bool:
        return any(e.sender == "manager" for e in await client.team("gamma").board())

    await until(said, "the conflict was not said on the team's board")
    notes = [e for e in await client.team("gamma").board() if e.sender == "manager"]
    assert len(notes) == 1, notes
    assert {first, second} <= set(notes[0].content.split()) and "shared.py" in notes[0].content
    assert "right.py" not in notes[0].content
    for worker_id in (first, second):
        lines, _ = await run(harness, worker_id, "anything new?")
        before = "\n".join(lines).split("anything new?")[0]
        assert "conflict:" in before and "shared.py" in before, lines
    # ``who`` shows what each member's workspace changed.
    lines, _ = await run(harness, first, "RUN: wm-team who --json")
    who = next(json.loads(line) for line in lines if line.startswith("{"))
    changed = {m["worker_id"]: m["changed"] for m in who["members"]}
    assert changed == {first: ["shared.py"], second: ["right.py", "shared.py"]}, who
    # ... and so do the client and the CLI (a post through the CLI, the board read back).
    members = {m.worker_id: m.changed for m in await client.team("gamma").members()}
    assert members == {first: ("shared.py",), second: ("right.py", "shared.py")}
    code, out = await run_cli(harness.settings, tmp_path, "team", "post", "gamma", "from", "CLI")
    assert code == 0, out
    code, out = await run_cli(harness.settings, tmp_path, "team", "gamma", "--json")
    assert code == 0, out
    shown = json.loads(out.strip().splitlines()[-1])
    assert shown["board"][-1]["content"] == "from CLI"
    assert shown["board"][-1]["sender"] == "producer"
    assert {m["worker_id"] for m in shown["members"]} == {first, second}
