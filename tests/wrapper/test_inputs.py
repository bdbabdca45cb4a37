"""Inputs that run nothing (SPEC §4): no ``content`` for a prompt, or a ``type`` nobody answers.

Such an entry used to be run as an empty prompt (a producer's ``{"data": …}`` envelope cost an
agent run and answered nothing). Now the parsing judges each entry against the table of input
types, and the wrapper answers a bad one with an ``error`` naming what is wrong and ``done`` 2,
acks it, and goes on with the next input.
"""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from tests.wrapper.conftest import Entry, OutputTail, Worker, is_event
from worker_base.config import WRAPPER_GROUP
from worker_base.events import INVALID_INPUT
from worker_base.inputs import (
    INPUT_TYPES,
    SHOWN_TYPE_CHARS,
    InputEntry,
    InputReader,
    InputType,
    parse_entry,
)
from worker_manager.settings import Settings

KNOWN = "prompt, cancel, diff, read, list, write or exec"
ID = "1700000000000-0"


# --- parsing --------------------------------------------------------------------------------
def test_a_prompt_without_content_is_refused_naming_the_field() -> None:
    entry = parse_entry(ID, {"data": "x"})
    assert entry.type is InputType.PROMPT
    assert entry.problem == f"input {ID} has no content: a prompt needs one"


@pytest.mark.parametrize("fields", [{"type": "prompt", "content": ""}, {"content": ""}])
def test_an_empty_content_counts_as_none(fields: dict[str, str]) -> None:
    assert parse_entry(ID, fields).problem == f"input {ID} has no content: a prompt needs one"


def test_an_unknown_type_is_refused_naming_it_and_the_known_ones() -> None:
    entry = parse_entry(ID, {"type": "bogus", "content": "x"})
    assert entry.type is None
    assert entry.problem == f"input {ID} has an unknown type 'bogus': expected {KNOWN}"


@pytest.mark.parametrize(
    ("fields", "problem"),
    [
        ({"type": "read"}, "has no path: a read needs one"),
        ({"type": "write", "content": "eA=="}, "has no path: a write needs one"),
        ({"type": "exec"}, "has no argv: an exec needs one"),
    ],
)
def test_workspace_requests_need_their_fields(fields: dict[str, str], problem: str) -> None:
    entry = parse_entry(ID, fields)
    assert entry.problem == f"input {ID} {problem}"


@pytest.mark.parametrize(
    "fields",
    [
        {"type": "diff"},
        {"type": "list"},
        {"type": "read", "path": "a"},
        {"type": "write", "path": "a", "content": ""},
        {"type": "exec", "argv": '["true"]'},
    ],
)
def test_workspace_requests_are_known(fields: dict[str, str]) -> None:
    entry = parse_entry(ID, fields)
    assert entry.problem is None and entry.type == fields["type"]


def test_a_huge_unknown_type_is_quoted_cut_short() -> None:
    problem = parse_entry(ID, {"type": "x" * 100_000, "content": "x"}).problem
    assert problem is not None and len(problem) < 200
    assert "x" * SHOWN_TYPE_CHARS + "…" in problem


@pytest.mark.parametrize(
    ("fields", "type_"),
    [
        ({"content": "hi"}, InputType.PROMPT),  # no type: a prompt (SPEC §4)
        ({"type": "", "content": "hi"}, InputType.PROMPT),
        ({"type": " Prompt ", "content": "hi"}, InputType.PROMPT),
        ({"type": "cancel"}, InputType.CANCEL),  # a cancel needs no content
        ({"type": "CANCEL", "content": ""}, InputType.CANCEL),
    ],
)
def test_valid_entries_have_no_problem(fields: dict[str, str], type_: InputType) -> None:
    entry = parse_entry(ID, fields)
    assert (entry.type, entry.problem) == (type_, None)
    assert entry.content == fields.get("content", "") and entry.fields == fields


def test_an_entry_deleted_from_the_stream_is_marked_missing() -> None:
    assert parse_entry(ID, {}) == InputEntry(ID, None, missing=True)
    assert parse_entry(ID, None).missing


def test_every_input_type_says_what_it_needs() -> None:
    # A member without an entry would be refused as unknown: adding a type is both, together.
    assert set(INPUT_TYPES) == set(InputType)
    assert INPUT_TYPES[InputType.PROMPT].required == ("content",)
    assert INPUT_TYPES[InputType.CANCEL].required == ()


@pytest.mark.redis
async def test_the_reader_judges_entries_read_from_the_stream(
    redis: Redis, settings: Settings
) -> None:
    key = f"{settings.key_prefix}:w:input"
    await redis.xgroup_create(key, WRAPPER_GROUP, id="0", mkstream=True)
    ids = [
        await redis.xadd(key, fields)
        for fields in ({"data": "x"}, {"type": "bogus", "content": "x"}, {"content": "hi"})
    ]
    reader = InputReader(redis, key, block_ms=100)
    entries = await reader.read_new()
    assert [e.id for e in entries] == ids
    no_content, unknown, prompt = entries
    assert no_content.problem == f"input {ids[0]} has no content: a prompt needs one"
    assert unknown.problem is not None and "'bogus'" in unknown.problem
    assert (prompt.type, prompt.content, prompt.problem) == (InputType.PROMPT, "hi", None)


# --- the wrapper ----------------------------------------------------------------------------
def answers(events: list[Entry], input_id: str) -> list[tuple[str, str]]:
    return [(e["type"], e["content"]) for e in events if e["input_id"] == input_id]


async def test_bad_inputs_are_answered_acked_and_the_next_prompt_runs(worker: Worker) -> None:
    tail: OutputTail = worker.tail()
    # Says so whenever it runs: a bad input must not start the agent at all.
    await worker.start(["sh", "-c", 'echo "ran $WM_INPUT_ID"; cat'])
    await tail.until(is_event("status", "ready", ""))
    no_content = str(await worker.admin.xadd(worker.input_key, {"data": "x"}))
    unknown = str(await worker.admin.xadd(worker.input_key, {"type": "bogus", "content": "x"}))
    prompt = await worker.push("hello\n")
    events = await tail.until(is_event("status", "idle", prompt))

    code = str(INVALID_INPUT)
    assert code != "0"
    assert answers(events, no_content) == [
        ("error", f"input {no_content} has no content: a prompt needs one"),
        ("done", code),
        ("status", "idle"),
    ]
    assert answers(events, unknown) == [
        ("error", f"input {unknown} has an unknown type 'bogus': expected {KNOWN}"),
        ("done", code),
        ("status", "idle"),
    ]
    assert answers(events, prompt) == [
        ("status", "busy"),
        ("stdout", f"ran {prompt}"),
        ("stdout", "hello"),
        ("done", "0"),
        ("status", "idle"),
    ]
    # All three acknowledged: a restarted wrapper replays none of them.
    await worker.wait_acked()
