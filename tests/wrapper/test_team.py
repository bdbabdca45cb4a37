"""Teams (SPEC §12), the wrapper's side: real wrappers of one team, each its own ACL user that may
touch the board only with XADD, XRANGE, XREVRANGE and XREAD; the agent's side through the
socket protocol and through the installed ``wm-team`` run as a separate process."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from tests.support.redis_server import RedisServer
from tests.wrapper.conftest import (
    WORKER_COMMANDS,
    Worker,
    WrapperProcess,
    is_event,
    with_credentials,
)
from worker_base.config import team_board_key
from worker_base.team_board import BoardEntry, TeamBoard, members_of
from worker_base.team_notices import MAX_BLOCK_BYTES, MAX_NOTICES, TeamNotices
from worker_manager.settings import Settings

pytestmark = pytest.mark.redis

REPO = Path(__file__).resolve().parents[2]
WM_TEAM = REPO / "worker_base" / "wm_team.py"
BOARD_COMMANDS = "+xadd +xrange +xrevrange +xread"

MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(
    redis_server: RedisServer, settings: Settings, redis: Redis, tmp_path: Path
) -> AsyncIterator[MakeWorker]:
    """Workers as the manager sets them up, with the board in their ACL when of a team."""
    made: list[tuple[Worker, str, bool]] = []

    async def make(team: str = "", *, board_acl: bool = True) -> Worker:
        worker_id = secrets.token_hex(8)
        prefix = settings.key_prefix
        username = f"{prefix}-{worker_id}"
        password = secrets.token_hex(16)
        keys = [f"~{prefix}:{worker_id}:{name}" for name in ("input", "output", "heartbeat")]
        rules = [*keys, "-@all", *WORKER_COMMANDS]
        if team and board_acl:
            rules.append(f"(~{team_board_key(prefix, team)} {BOARD_COMMANDS})")
        try:
            await redis.execute_command(
                "ACL", "SETUSER", username, "reset", "on", f">{password}", *rules
            )
        except ResponseError:  # Redis < 7.2 has no CLIENT SETINFO
            rules.remove("+client|setinfo")
            await redis.execute_command(
                "ACL", "SETUSER", username, "reset", "on", f">{password}", *rules
            )
        await redis.xgroup_create(f"{prefix}:{worker_id}:input", "wrapper", id="0", mkstream=True)
        root = tmp_path / worker_id
        (root / "workspace").mkdir(parents=True)
        worker = Worker(
            id=worker_id,
            prefix=prefix,
            admin=redis,
            url=with_credentials(redis_server.url, username, password),
            tmp=root,
            workdir=root / "workspace",
            state_dir=root / "state",
        )
        made.append((worker, username, board_acl))
        return worker

    yield make
    for worker, username, _ in made:
        for process in worker.processes:
            try:
                await process.stop(timeout=8)
            except TimeoutError:
                await process.kill()
        await redis.execute_command("ACL", "DELUSER", username)
    for worker, _, allowed in made:
        for process in worker.processes:
            assert "NOPERM" not in process.log or not allowed, process.log
            assert "Traceback" not in process.log, process.log


def team_dir(worker: Worker) -> Path:
    return worker.state_dir / "wrapper" / "team"


async def start_in_team(worker: Worker, team: str, command: list[str], **extra: str) -> None:
    tail = worker.tail()
    await worker.start(command, WM_TEAM=team, **extra)
    await tail.until(is_event("status", "ready", ""))
    async with asyncio.timeout(5):
        while not (team_dir(worker) / "socket").exists():
            await asyncio.sleep(0.02)


def ask(worker: Worker, request: dict[str, Any] | bytes) -> dict[str, Any]:
    """One request on the worker's team socket, as the agent's side would send it."""
    data = request if isinstance(request, bytes) else json.dumps(request).encode() + b"\n"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        path = team_dir(worker) / "socket"
        fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)  # the path may pass 107 bytes
        try:
            sock.connect(f"/proc/self/fd/{fd}/{path.name}")
        finally:
            os.close(fd)
        sock.sendall(data)
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            reply += chunk
    result: dict[str, Any] = json.loads(reply)
    return result


async def wm_team(
    worker: Worker, team: str | None, *args: str, command: Path | None = None
) -> tuple[int, str, str]:
    """The installed ``wm-team`` (or ``command``) run as a process of its own."""
    argv = (
        [sys.executable, str(command)] if command else [str(team_dir(worker) / "bin" / "wm-team")]
    )
    env = {"PATH": os.environ.get("PATH", "")}
    if team is not None:
        env.update(WM_TEAM=team, WM_TEAM_SOCKET=str(team_dir(worker) / "socket"))
    process = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def team_name() -> str:
    return f"team-{secrets.token_hex(3)}"


async def test_a_post_reaches_the_teammate_with_its_true_sender(make_worker: MakeWorker) -> None:
    team = team_name()
    alice, bob = await make_worker(team), await make_worker(team)
    await asyncio.gather(start_in_team(alice, team, ["cat"]), start_in_team(bob, team, ["cat"]))

    forged = ask(alice, {"op": "post", "text": "hello team", "sender": bob.id, "kind": "status"})
    assert forged["ok"] is True, forged
    code, out, err = await wm_team(alice, team, "post", "from", "the", "script")
    assert (code, err) == (0, ""), err
    assert out.startswith("posted ")
    code, _, err = await wm_team(alice, team, "status", "blocked", "waiting", "for", "bob")
    assert code == 0, err

    code, out, err = await wm_team(bob, team, "read", "--json")
    assert code == 0, err
    entries = json.loads(out)["entries"]
    mine = [e for e in entries if e["sender"] == alice.id]
    assert [(e["kind"], e["content"], e["note"]) for e in mine] == [
        ("post", "hello team", ""),
        ("post", "from the script", ""),
        ("status", "blocked", "waiting for bob"),
    ]
    assert all(e["sender"] != bob.id for e in entries)  # the forged sender was not believed
    assert all(e["timestamp"].endswith("Z") for e in mine)

    code, out, _ = await wm_team(bob, team, "read")
    assert f"{alice.id} post: hello team" in out
    assert f"{alice.id} status: blocked — waiting for bob" in out
    code, out, _ = await wm_team(bob, team, "read", "--since", mine[0]["id"])
    assert "hello team" not in out
    assert "from the script" in out

    who = ask(bob, {"op": "who"})
    members = {m["worker_id"]: m for m in who["members"]}
    assert members[alice.id]["status"] == "blocked"
    assert members[alice.id]["note"] == "waiting for bob"
    assert members[alice.id]["self"] is False
    assert members[bob.id]["self"] is True
    code, out, _ = await wm_team(bob, team, "who")
    assert f"{bob.id} (you)" in out
    assert f"{alice.id}: blocked — waiting for bob" in out


async def test_limits_refuse_oversize_and_floods_without_stalling_a_teammate(
    make_worker: MakeWorker,
) -> None:
    team = team_name()
    alice, bob = await make_worker(team), await make_worker(team)
    await asyncio.gather(start_in_team(alice, team, ["cat"]), start_in_team(bob, team, ["cat"]))

    too_long = ask(alice, {"op": "post", "text": "x" * 4001})
    assert too_long["ok"] is False
    assert "at most 4000 characters" in too_long["error"]
    long_note = ask(alice, {"op": "status", "status": "working", "note": "n" * 501})
    assert "at most 500 characters" in long_note["error"]
    assert ask(alice, {"op": "status", "status": "sleeping"})["ok"] is False
    assert ask(alice, {"op": "read", "since": "not-an-id"})["ok"] is False
    assert ask(alice, {"op": "launch"})["ok"] is False
    assert ask(alice, b"{not json\n")["ok"] is False
    huge = ask(alice, b'{"op": "post", "text": "' + b"y" * (70 * 1024) + b'"}\n')
    assert "longer than" in huge["error"]
    code, _, err = await wm_team(alice, team, "post", "z" * 4001)
    assert code == 1
    assert "at most 4000" in err

    answers = await asyncio.gather(
        *(asyncio.to_thread(ask, alice, {"op": "post", "text": f"flood {n}"}) for n in range(40))
    )
    accepted = [a for a in answers if a["ok"]]
    limited = [a for a in answers if not a["ok"]]
    assert 1 <= len(accepted) <= 10
    assert limited
    assert all(a["error"].startswith(("rate limited", "busy")) for a in limited), limited
    started = time.monotonic()
    read = ask(bob, {"op": "read", "since": None})
    assert read["ok"] is True
    assert time.monotonic() - started < 1.0
    floods = [e for e in read["entries"] if e["content"].startswith("flood")]
    assert len(floods) == len(accepted)
    assert len(await bob.admin.xrange(team_board_key(alice.prefix, team))) <= 12


async def test_a_teammates_post_is_told_before_the_next_prompt_once(
    make_worker: MakeWorker,
) -> None:
    team = team_name()
    alice, bob = await make_worker(team), await make_worker(team)
    await asyncio.gather(start_in_team(alice, team, ["cat"]), start_in_team(bob, team, ["cat"]))
    bob_tail, alice_tail = bob.tail(), alice.tail()
    posted = ask(alice, {"op": "post", "text": "I am changing api.py,\nhands off"})
    ask(alice, {"op": "status", "status": "blocked", "note": "need the schema"})
    # The board from outside: a producer's post and the manager's conflict are entries like any.
    await bob.admin.xadd(
        team_board_key(bob.prefix, team),
        {"sender": "manager", "kind": "post", "content": "conflict: api.py", "timestamp": "t"},
    )

    team_events = await bob_tail.until(lambda e: e["type"] == "team" and "conflict" in e["content"])
    told = [json.loads(e["content"]) for e in team_events if e["type"] == "team"]
    assert told[0] == {
        "id": posted["id"],
        "sender": alice.id,
        "kind": "post",
        "content": "I am changing api.py,\nhands off",
        "note": "",
        "timestamp": told[0]["timestamp"],
    }
    assert [t["kind"] for t in told] == ["post", "status", "post"]
    assert all(e["input_id"] == "" for e in team_events if e["type"] == "team")

    prompt = await bob.push("the prompt")
    events = await bob_tail.until(is_event("done", input_id=prompt))
    lines = [e["content"] for e in events if e["type"] == "stdout"]
    assert lines == [
        f'[Team board "{team}": 3 new entries since your last prompt]',
        f"- {alice.id} posted: I am changing api.py, hands off",
        f"- {alice.id} is blocked: need the schema",
        "- manager posted: conflict: api.py",
        "[End of team board. Reply on it with `wm-team post TEXT`.]",
        "",
        "the prompt",
    ]
    # Its own entries are not told to the poster: only the manager's.
    second = await alice.push("alone")
    events = await alice_tail.until(is_event("done", input_id=second))
    assert [e["content"] for e in events if e["type"] == "stdout"] == [
        f'[Team board "{team}": 1 new entry since your last prompt]',
        "- manager posted: conflict: api.py",
        "[End of team board. Reply on it with `wm-team post TEXT`.]",
        "",
        "alone",
    ]
    assert [json.loads(e["content"])["sender"] for e in events if e["type"] == "team"] == [
        "manager"
    ]

    # A restarted wrapper neither tells nor announces them again.
    first = bob.processes[-1]
    assert await first.stop() == 0
    await start_in_team(bob, team, ["cat"])
    again = await bob.push("after restart")
    events = await bob_tail.until(is_event("done", input_id=again))
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["after restart"]
    assert not [e for e in events if e["type"] == "team"]


async def test_a_late_joiner_and_an_agent_restricted_to_some_commands(
    make_worker: MakeWorker,
) -> None:
    team = team_name()
    alice, carol = await make_worker(team), await make_worker(team)
    await start_in_team(alice, team, ["cat"])
    ask(alice, {"op": "post", "text": "said before carol came"})
    # The agent speaks through wm-team on its PATH, although only `cat` is allowed.
    await start_in_team(
        carol,
        team,
        ["sh", "-c", "wm-team post carol here && wm-team read && cat"],
        WM_ALLOWED_COMMANDS='["cat"]',
    )
    tail = carol.tail()
    prompt = await carol.push("hi from carol")
    events = await tail.until(is_event("done", input_id=prompt))
    out = [e["content"] for e in events if e["type"] == "stdout"]
    assert events[-1]["content"] == "0", events
    assert out[0].startswith("posted ")
    assert any(f"{alice.id} post: said before carol came" in line for line in out)
    assert f"- {alice.id} posted: said before carol came" in out  # the notice, a late joiner's
    assert out[-1] == "hi from carol"
    board = await carol.admin.xrange(team_board_key(carol.prefix, team))
    assert (board[-1][1]["sender"], board[-1][1]["content"]) == (carol.id, "carol here")


async def test_without_a_team_nothing_changes(make_worker: MakeWorker) -> None:
    worker = await make_worker()
    tail = worker.tail()
    wrapper: WrapperProcess = await worker.start(["sh", "-c", "command -v wm-team || echo none"])
    await tail.until(is_event("status", "ready", ""))
    prompt = await worker.push("x")
    events = await tail.until(is_event("done", input_id=prompt))
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["none"]
    assert not team_dir(worker).exists()
    assert "team" not in wrapper.log
    code, _, err = await wm_team(worker, None, "who", command=WM_TEAM)
    assert code == 1
    assert "this worker is in no team" in err


async def test_usage_errors_exit_2() -> None:
    for args in ([], ["status", "sleeping"], ["post"], ["frobnicate"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(WM_TEAM),
            *args,
            env={"WM_TEAM": "t", "WM_TEAM_SOCKET": "/nonexistent"},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await process.communicate()
        assert process.returncode == 2, args


def entry(n: int, sender: str = "w2", kind: str = "post", content: str = "", note: str = "") -> Any:
    return BoardEntry.of(
        f"{n}-0",
        {
            "sender": sender,
            "kind": kind,
            "content": content or f"message {n}",
            "note": note,
            "timestamp": f"2026-01-01T00:00:{n:02d}.000Z",
        },
    )


async def test_notice_block_is_bounded_and_survives_a_restart(redis: Redis, tmp_path: Path) -> None:
    board = TeamBoard(redis, "unused", "w1")
    announced: list[BoardEntry] = []
    state = tmp_path / "notices.json"
    notices = TeamNotices(board, "T", state, announced.append, block_ms=100)
    notices.take_in([entry(n) for n in range(1, 26)] + [entry(26, sender="w1")])
    assert len(announced) == 25
    assert notices.cursor == "26-0"

    again = TeamNotices(board, "T", state, announced.append, block_ms=100)
    assert again.cursor == "26-0"
    taken = again.take()
    assert taken is not None
    lines = taken.text.splitlines()
    assert lines[0] == '[Team board "T": 25 new entries since your last prompt]'
    assert len(lines) == 1 + MAX_NOTICES + 1 + 1 + 1  # header, notices, "more", footer, blank
    assert lines[1] == "- w2 posted: message 6"
    assert lines[-3] == "- …and 5 more (earlier): run `wm-team read` to see them"
    assert again.take() is None
    again.give_back(taken)
    assert TeamNotices(board, "T", state, announced.append, block_ms=100).take() == taken

    big = TeamNotices(board, "T", tmp_path / "big.json", announced.append, block_ms=100)
    big.take_in([entry(n, content="é" * 900) for n in range(1, 21)])
    taken = big.take()
    assert taken is not None
    assert len(taken.text.encode()) <= MAX_BLOCK_BYTES
    assert all(len(line) <= 500 for line in taken.text.splitlines())
    assert "run `wm-team read`" in taken.text


def test_who_shows_the_latest_status_and_who_left() -> None:
    newest_first = [
        entry(6, sender="w3", kind="status", content="left"),
        entry(5, sender="w2", kind="post"),
        entry(4, sender="producer", kind="post"),
        entry(3, sender="w2", kind="status", content="blocked", note="on w3"),
        entry(2, sender="w2", kind="status", content="working"),
        entry(1, sender="w3", kind="status", content="joined"),
    ]
    members = members_of(newest_first, "w1")
    assert [(m["worker_id"], m["status"], m["note"], m["self"]) for m in members] == [
        ("w1", "", "", True),
        ("w3", "left", "", False),
        ("w2", "blocked", "on w3", False),
    ]
    assert members[2]["last_activity"] == "2026-01-01T00:00:05.000Z"


async def test_a_board_redis_refuses_is_an_answer_not_a_crash(make_worker: MakeWorker) -> None:
    team = team_name()
    worker = await make_worker(team, board_acl=False)  # its ACL lacks the board
    await start_in_team(worker, team, ["cat"])
    answer = ask(worker, {"op": "post", "text": "anyone?"})
    assert answer["ok"] is False
    assert "not reachable" in answer["error"]
    assert ask(worker, {"op": "who"})["ok"] is False
    tail = worker.tail()
    prompt = await worker.push("still works")
    events = await tail.until(is_event("done", input_id=prompt))
    assert [e["content"] for e in events if e["type"] == "stdout"] == ["still works"]
    assert events[-1]["content"] == "0"
