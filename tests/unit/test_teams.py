"""Teams (SPEC §12) without Redis or Docker: the grammar of ``team`` and ``team_post``, what a
status change says on a board, who a board's members are, and the worker's Redis rights."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.offline import offline_settings
from worker_base.config import ConfigError, WrapperConfig
from worker_manager.contract.commands import CreateCommand, TeamPostCommand, parse_command
from worker_manager.contract.kinds import WorkerStatus
from worker_manager.contract.teams import (
    JOINED,
    LEFT,
    MAX_POST,
    SUSPENDED,
    BoardEntry,
    entry_fields,
    members,
    membership_word,
)
from worker_manager.core.errors import InvalidCommand
from worker_manager.workers.resources.acl import WorkerAcl, read_rules

WORKER = "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"


def parse(fields: dict[str, str]) -> Any:
    s = offline_settings()
    return parse_command(fields, "1-0", s, replies=s.keys.replies)


def test_a_create_joins_a_team_by_name() -> None:
    base = {"command": "create", "agent_type": "CUSTOM", "agent_command": '["cat"]'}
    create = parse({**base, "team": "backend.v2"})
    assert isinstance(create, CreateCommand) and create.team == "backend.v2"
    assert parse({**base, "team": ""}).team is None
    for bad in ("a b", "x" * 65, "team:board", "*"):
        with pytest.raises(InvalidCommand, match="field 'team'"):
            parse({**base, "team": bad})


def test_team_post_is_bounded_and_names_a_team() -> None:
    post = parse({"command": "team_post", "team": "alpha", "content": "brief: use the v2 API"})
    assert isinstance(post, TeamPostCommand) and post.team == "alpha"
    with pytest.raises(InvalidCommand, match="field 'content'"):
        parse({"command": "team_post", "team": "alpha", "content": "x" * (MAX_POST + 1)})
    with pytest.raises(InvalidCommand, match="field 'content'"):
        parse({"command": "team_post", "team": "alpha", "content": "  "})
    with pytest.raises(InvalidCommand, match="field 'team'"):
        parse({"command": "team_post", "team": "a/b", "content": "hi"})
    with pytest.raises(InvalidCommand, match="'sender' is not part"):
        parse({"command": "team_post", "team": "a", "content": "hi", "sender": WORKER})


def test_status_changes_say_joined_suspended_left() -> None:
    assert membership_word(WorkerStatus.STARTING) is None
    assert membership_word(WorkerStatus.RUNNING) == JOINED
    assert membership_word(WorkerStatus.SUSPENDED) == SUSPENDED
    for ended in (WorkerStatus.STOPPED, WorkerStatus.FAILED):
        assert membership_word(ended) == LEFT


def test_members_are_told_by_the_board() -> None:
    other = "00000000-0000-4000-8000-000000000001"
    raw = [
        entry_fields(WORKER, "status", JOINED, "t1"),
        entry_fields("producer", "post", "brief", "t2"),
        entry_fields(other, "status", JOINED, "t3"),
        entry_fields(WORKER, "status", "blocked", "t4", note="waiting on the schema"),
        entry_fields(other, "post", "schema is in", "t5"),
    ]
    entries = [BoardEntry.of(f"{i}-0", fields) for i, fields in enumerate(raw, 1)]
    found = {m.worker_id: m for m in members(entries)}
    assert set(found) == {WORKER, other}  # the producer is no member
    assert (found[WORKER].status, found[WORKER].note) == ("blocked", "waiting on the schema")
    assert (found[other].status, found[other].last_seen) == (JOINED, "t5")
    assert "is blocked: waiting on the schema" in entries[3].line()
    assert "posted: brief" in entries[1].line()


def test_a_team_worker_may_append_to_and_read_its_board_only() -> None:
    s = offline_settings()
    acl = WorkerAcl(None, s)
    board = s.keys.team_board("alpha")
    with_team = acl.rules(WORKER, "alpha")
    selector = f"(~{board} +xadd +xrange +xrevrange +xread)"
    assert with_team[-2:] == [selector, f"(%R~{s.keys.team_changes('alpha')} +hgetall)"]
    assert not any("team" in rule for rule in acl.rules(WORKER))
    assert f"%R~{s.keys.team_board('*')}" in read_rules(s.keys)


def test_the_wrapper_is_told_its_team() -> None:
    env = {"WM_WORKER_ID": WORKER, "WM_REDIS_URL": "redis://h:1/0", "WM_AGENT_COMMAND": '["cat"]'}
    config = WrapperConfig.from_env({**env, "WM_TEAM": "alpha"})
    assert config.team_board_key == "worker:team:alpha:board"
    assert WrapperConfig.from_env(config.to_env()).team == "alpha"
    assert WrapperConfig.from_env(env).team == ""
    with pytest.raises(ConfigError, match="WM_TEAM"):
        WrapperConfig.from_env({**env, "WM_TEAM": "no spaces"})
