"""Command validation (SPEC §1): every rule, and messages that name the field."""

from __future__ import annotations

import json
import uuid

import pytest

from worker_manager.contract.commands import (
    CreateCommand,
    StatusCommand,
    parse_command,
    reply_of_request_id,
)
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.contract.reply import Reply
from worker_manager.core.errors import InvalidCommand
from worker_manager.settings import Settings

SETTINGS = Settings(_env_file=None, key_prefix="unit")  # type: ignore[call-arg]


def parse(fields: dict[str, str]) -> object:
    return parse_command(fields, "1700000000000-0", SETTINGS, replies=SETTINGS.keys.replies)


def test_defaults_come_from_the_entry() -> None:
    cmd = parse({"command": "list"})
    assert cmd.request_id == "1700000000000-0"  # type: ignore[attr-defined]
    assert cmd.reply_to == "unit:replies"  # type: ignore[attr-defined]


def test_create_is_normalised() -> None:
    cmd = parse(
        {
            "command": "create",
            "agent_type": "CLAUDE",
            "modules": '["GIT", "CURL", "GIT"]',
            "allowed_commands": '["git", " pytest ", "git"]',
            "metadata": '{"owner": "team-a"}',
            "worker_id": "3F2B8C1E-0D7A-4C55-9A51-2F0E6B1C9D42",
            "reply_to": "unit:replies:orchestrator-1",
        }
    )
    assert isinstance(cmd, CreateCommand)
    assert cmd.agent_type is AgentType.CLAUDE
    assert cmd.modules == [Module.CURL, Module.GIT]
    assert cmd.allowed_commands == ["git", "pytest"]
    assert cmd.metadata == {"owner": "team-a"}
    assert cmd.worker_id == "3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"command": "create", "agent_type": "CUSTOM"}, "agent_command"),
        ({"command": "create", "agent_type": "CLAUDE", "agent_command": '["x"]'}, "agent_command"),
        ({"command": "create", "agent_type": "CUSTOM", "agent_command": "[]"}, "agent_command"),
        ({"command": "create", "agent_type": "CUSTOM", "agent_command": '[""]'}, "agent_command"),
        ({"command": "create", "agent_type": "claude"}, "agent_type"),
        ({"command": "create", "agent_type": "CLAUDE", "modules": '["git"]'}, "modules"),
        (
            {"command": "create", "agent_type": "CLAUDE", "allowed_commands": '[""]'},
            "allowed_commands",
        ),
        (
            {"command": "create", "agent_type": "CLAUDE", "allowed_commands": '["a\\nb"]'},
            "allowed_commands",
        ),
        (
            {
                "command": "create",
                "agent_type": "CLAUDE",
                "allowed_commands": json.dumps(["x" * 257]),
            },
            "allowed_commands",
        ),
        ({"command": "create", "agent_type": "CLAUDE", "metadata": '{"a": 1}'}, "metadata"),
        ({"command": "create", "agent_type": "CLAUDE", "metadata": '{"bad key": "v"}'}, "metadata"),
        ({"command": "create", "agent_type": "CLAUDE", "prompt": "é" * (128 * 1024 + 1)}, "prompt"),
        ({"command": "delete"}, "worker_id"),
        (
            {"command": "status", "worker_id": str(uuid.uuid4()), "reply_to": "worker:replies"},
            "reply_to",
        ),
        (
            {"command": "status", "worker_id": str(uuid.uuid4()), "reply_to": "unit:abc:input"},
            "reply_to",
        ),
        ({"command": "list", "request_id": "x" * 129}, "request_id"),
        ({"command": "list", "extra": "1"}, "extra"),
        ({"command": "LIST"}, "command"),
        ({}, "command"),
    ],
)
def test_invalid_commands_name_the_field(fields: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidCommand) as caught:
        parse(fields)
    assert caught.value.field == field
    assert field in caught.value.message


def test_entry_size_limit() -> None:
    small = SETTINGS.model_copy(update={"max_entry_bytes": 100})
    with pytest.raises(InvalidCommand) as caught:
        parse_command({"command": "list", "pad": "x" * 200}, "1-0", small, replies="worker:replies")
    assert caught.value.field == "entry"


def test_prompt_limit_counts_bytes_not_characters() -> None:
    limit = SETTINGS.max_prompt_bytes
    ok = parse({"command": "create", "agent_type": "CLAUDE", "prompt": "é" * (limit // 2)})
    assert isinstance(ok, CreateCommand)


def test_request_id_of_an_unreadable_entry_falls_back_to_the_entry_id() -> None:
    assert reply_of_request_id({"request_id": "bad id"}, "5-0") == "5-0"
    assert reply_of_request_id({"request_id": "good.id:1"}, "5-0") == "good.id:1"


def test_reply_round_trips_through_flat_fields() -> None:
    reply = Reply(
        request_id="r1", command="list", ok=True, workers=[{"worker_id": "w", "status": "RUNNING"}]
    )
    fields = reply.to_fields()
    assert fields["ok"] == "true" and json.loads(fields["workers"])[0]["status"] == "RUNNING"
    assert "error" not in fields and "retry_after" not in fields
    assert Reply.from_fields(fields) == reply
    failed = Reply(
        request_id="r2",
        command="create",
        ok=False,
        error="capacity_exceeded",
        message="full",
        retry_after=5,
    )
    assert failed.to_fields()["retry_after"] == "5"
    assert Reply.from_fields(failed.to_fields()) == failed


def test_status_command_shape() -> None:
    worker_id = str(uuid.uuid4())
    cmd = parse({"command": "status", "worker_id": worker_id, "request_id": "abc"})
    assert isinstance(cmd, StatusCommand) and cmd.worker_id == worker_id
