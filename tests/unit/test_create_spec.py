"""A create is validated once, where it enters; the spec saved of it loads back as it was, under
whatever settings the manager loading it has (``contract.create_spec``)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from worker_manager.contract.commands import CreateCommand, command_context, parse_command
from worker_manager.contract.create_spec import load_spec, spec_of
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.contract.limits import CommandLimits
from worker_manager.contract.workspace import Repository

REPLIES = "worker:replies"


def accepted(limits: CommandLimits | None = None, **fields: str) -> CreateCommand:
    """A create as the manager that accepted it validated it."""
    entry = {
        "command": "create",
        "request_id": "r1",
        "reply_to": f"{REPLIES}:me",
        "agent_type": "CUSTOM",
        "agent_command": '["cat"]',
        **fields,
    }
    command = parse_command(entry, "1-0", limits or CommandLimits(), replies=REPLIES)
    assert isinstance(command, CreateCommand)
    return command


def saved(command: CreateCommand, egress: list[str]) -> dict[str, object]:
    """Through JSON, as the store keeps it."""
    loaded: dict[str, object] = json.loads(json.dumps(spec_of(command, egress)))
    return loaded


def test_a_spec_loads_back_as_the_command_was_granted() -> None:
    command = accepted(
        instructions="Be brief.",
        prompt="first",
        modules='["GIT", "CURL"]',
        allowed_commands='["git", "pytest"]',
        metadata='{"team": "docs"}',
        repository='{"url": "https://example.com/r.git", "ref": "main", "depth": 1}',
        max_cost_usd="2",
        input_timeout_seconds="60",
    )
    loaded = load_spec(saved(command, ["example.com:443"]))
    assert loaded == command.model_copy(update={"prompt": None, "egress": ["example.com:443"]})
    assert loaded.agent_type is AgentType.CUSTOM
    assert loaded.modules == [Module.CURL, Module.GIT]
    assert isinstance(loaded.repository, Repository)
    assert loaded.repository.depth == 1


def test_the_prompt_is_not_saved_with_the_spec() -> None:
    spec = spec_of(accepted(prompt="a secret plan"), [])
    assert "prompt" not in spec
    assert load_spec(spec).prompt is None


def test_a_spec_accepted_under_wider_limits_still_loads() -> None:
    """The old loader validated again against today's limits: a worker accepted with 300 KiB
    of instructions by a manager that allowed it failed at its resume on one that does not."""
    wide = CommandLimits(max_instructions_bytes=1 << 20)
    command = accepted(wide, instructions="x" * 300 * 1024)
    spec = saved(command, [])
    with pytest.raises(ValidationError):  # what the provisioner used to do
        CreateCommand.model_validate(spec, context=command_context(CommandLimits(), REPLIES))
    assert load_spec(spec).instructions == command.instructions


def test_a_spec_whose_repository_source_was_removed_since_still_loads() -> None:
    sources = CommandLimits(workspace_sources=["https://git.example.com"])
    command = accepted(sources, repository='{"url": "https://git.example.com/a.git"}')
    spec = saved(command, [])
    today = CommandLimits(workspace_sources=["https://other.example.org"])
    with pytest.raises(ValidationError):
        CreateCommand.model_validate(spec, context=command_context(today, REPLIES))
    loaded = load_spec(spec)
    assert loaded.repository is not None
    assert loaded.repository.url == "https://git.example.com/a.git"


def test_a_spec_from_another_version_loads_what_it_knows() -> None:
    """Fields a newer manager saved are ignored; fields an older one lacked take defaults."""
    spec = saved(accepted(), [])
    spec["a_field_from_the_future"] = 1
    del spec["env"]
    loaded = load_spec(spec)
    assert loaded.env == {}
    assert loaded.agent_command == ["cat"]
