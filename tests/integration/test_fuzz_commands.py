"""Property: whatever a producer XADDs, it gets exactly one answer and the manager stays ready.

Hypothesis writes command entries field by field (known names and others; text, bytes that are
not UTF-8, JSON that is malformed or deeply nested, numbers out of range, huge values) to the real
command stream of a real manager. For every entry: it is acknowledged, it gets at most one reply,
at most one dead letter, and at least one of the two; afterwards no loop has failed and a plain
``list`` is still answered. Creates that happen to be valid fail their build at once (the base
image named does not exist), so the fuzzing never starts containers.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.flows import Harness
from worker_manager.contract.commands import REQUEST_ID_RE
from worker_manager.core.keys import MANAGER_GROUP

pytestmark = [pytest.mark.redis]

NAMES = [
    "command",
    "request_id",
    "reply_to",
    "worker_id",
    "agent_type",
    "instructions",
    "allowed_commands",
    "modules",
    "prompt",
    "agent_command",
    "metadata",
    "input_timeout_seconds",
    "max_turns",
    "max_cost_usd",
    "idle_timeout_seconds",
    "cursor",
    "limit",
]
COMMANDS = ["create", "delete", "status", "list", "", "explode", "CREATE"]

text = st.text(max_size=40)
junk_bytes = st.binary(min_size=1, max_size=40).filter(lambda b: not _utf8(b))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=10,
)
values = st.one_of(
    text,
    junk_bytes,
    json_values.map(lambda v: json.dumps(v)),
    st.sampled_from(["CUSTOM", "CLAUDE", "FACTORY", '["cat"]', '["GIT"]', "nan", "-1", "1e999"]),
    st.integers(min_value=1, max_value=60).map(lambda n: "[" * n * 1000 + "]" * n * 1000),
    st.integers(min_value=1, max_value=3).map(lambda n: "x" * (300_000 * n)),
    st.builds(lambda: str(uuid.uuid4())),
)


def _utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@st.composite
def entries(draw: st.DrawFn) -> dict[Any, Any]:
    fields: dict[Any, Any] = {}
    if draw(st.booleans()):
        fields["command"] = draw(st.sampled_from(COMMANDS) | junk_bytes)
    for name in draw(st.lists(st.sampled_from(NAMES), max_size=6, unique=True)):
        fields.setdefault(name, draw(values))
    for _ in range(draw(st.integers(min_value=0, max_value=2))):
        fields[draw(text | junk_bytes) or "x"] = draw(values)
    return fields or {"nothing": "here"}


def _id(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


async def _delivered(harness: Harness, entry_id: str) -> bool:
    groups = await harness.redis.xinfo_groups(harness.keys.commands)
    group = next(g for g in groups if g["name"] == MANAGER_GROUP)
    return _id(str(group["last-delivered-id"])) >= _id(entry_id)


async def _answers(harness: Harness, entry_id: str, fields: dict[Any, Any]) -> tuple[int, int]:
    """(replies, dead letters) for ``entry_id``, once the entry is acknowledged."""
    keys = harness.keys
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    # Acknowledged: delivered to the group (XPENDING lists only delivered entries, so an entry
    # not read yet would look acknowledged too) and no longer pending.
    while not await _delivered(harness, entry_id) or await harness.redis.xpending_range(
        keys.commands, MANAGER_GROUP, entry_id, entry_id, 1
    ):
        assert loop.time() < deadline, f"{entry_id} never acknowledged: {fields!r:.300}"
        await asyncio.sleep(0.01)
    request_id = fields.get("request_id")
    ids = {entry_id} | ({request_id} if isinstance(request_id, str) else set())
    replies = 0
    for stream in {keys.replies, f"{keys.replies}:fuzz"}:
        for _id, reply in await harness.redis.xrange(stream):
            if reply.get("request_id") in ids:
                replies += 1
    dead = sum(
        1
        for _id, letter in await harness.redis.xrange(keys.dead)
        if letter.get("dead_entry_id") == entry_id
    )
    return replies, dead


async def test_every_command_gets_exactly_one_answer(harness: Harness) -> None:
    manager = await harness.start(base_image="worker-manager/fuzz-missing:none")
    keys = harness.keys
    checked = 0
    runner = asyncio.get_running_loop()

    @settings(
        max_examples=120,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        database=None,
    )
    @given(fields=entries(), aimed=st.booleans())
    def check(fields: dict[Any, Any], aimed: bool) -> None:
        nonlocal checked
        if aimed:
            fields["reply_to"] = f"{keys.replies}:fuzz"
        drawn = fields.get("request_id")
        if drawn is None or (isinstance(drawn, str) and REQUEST_ID_RE.fullmatch(drawn)):
            # Unique, so a reply is never a replay of another example's (invalid ids stay).
            fields["request_id"] = f"fz-{uuid.uuid4().hex}"
        entry_id = asyncio.run_coroutine_threadsafe(
            harness.redis.xadd(keys.commands, fields), runner
        ).result(30)
        replies, dead = asyncio.run_coroutine_threadsafe(
            _answers(harness, entry_id, fields), runner
        ).result(60)
        assert replies <= 1 and dead <= 1 and replies + dead >= 1, (fields, replies, dead)
        checked += 1

    # Hypothesis drives a synchronous test: run it in a thread while the loop serves.
    await asyncio.to_thread(check)
    assert checked >= 100
    assert manager.supervisor.problems() == {}
    assert (await harness.client.request("list", timeout=10)).ok
