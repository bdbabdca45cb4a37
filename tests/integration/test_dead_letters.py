"""Dead letters keep a command whole, so the operator can send it again once the cause is fixed
(``worker-manager dead-letters --replay ID``), and a replayed create makes its worker once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.flows import Harness
from worker_manager.contract.labels import LABEL_PREFIX

pytestmark = [pytest.mark.docker, pytest.mark.redis]

CAT = json.dumps(["cat"])


async def test_a_dead_lettered_create_is_replayed_once_the_cause_is_fixed(
    harness: Harness, tmp_path: Path
) -> None:
    # The cause: this deployment allowed only 4 KiB of instructions; these are 100 KiB.
    strict = await harness.start(max_instructions_bytes=4096)
    instructions = "Follow the house style.\n" * 4400  # ~103 KiB, far beyond 2 KiB
    reply_to = f"{harness.keys.replies}:dead-test"
    await harness.redis.xadd(
        harness.keys.commands,
        {
            "command": "create",
            "request_id": "replay-me",
            "reply_to": reply_to,
            "agent_type": "CUSTOM",
            "agent_command": CAT,
            "instructions": instructions,
        },
    )
    refused = await harness.client.wait_reply(reply_to, "replay-me", timeout=30)
    assert not refused.ok and refused.error == "invalid_command", refused
    code, out = await run_cli(harness.settings, tmp_path, "dead-letters", "--json")
    assert code == 0, out
    letters = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    letter = next(d for d in letters if d.get("request_id") == "replay-me")
    assert letter["dead_complete"] == "true"
    assert letter["instructions"] == instructions  # whole, not cut to 2 KiB
    assert letter["dead_stream"] == harness.keys.commands

    # The cause fixed: the default limits (256 KiB). Replayed twice: one worker.
    await harness.stop(strict)
    await harness.start()
    for _ in range(2):
        code, out = await run_cli(
            harness.settings, tmp_path, "dead-letters", "--replay", letter["id"]
        )
        assert code == 0 and "sent again" in out, out
    answers: list[dict[str, str]] = []
    for _ in range(100):
        answers = [f for _id, f in await harness.redis.xrange(reply_to)]
        if len(answers) == 3:
            break
        await harness.redis.xread({reply_to: "$"}, block=200)
    assert len(answers) == 3, answers  # the refusal, then one answer per replay
    created, again = answers[1], answers[2]
    assert created["ok"] == "true" and again == created  # the second is the first, replayed
    worker_id = created["worker_id"]
    assert await harness.wait_status(worker_id, "RUNNING", "FAILED") == "RUNNING"
    containers = harness.docker.containers.list(
        all=True, filters={"label": f"{LABEL_PREFIX}={harness.settings.key_prefix}"}
    )
    assert len(containers) == 1


async def test_a_command_beyond_the_limits_is_kept_cut_and_not_replayed(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.start()
    huge = "x" * (1200 * 1024)  # beyond the 1 MiB an entry may have
    await harness.redis.xadd(
        harness.keys.commands,
        {"command": "create", "request_id": "too-big", "agent_type": "CUSTOM", "pad": huge},
    )
    for _ in range(150):
        dead = await harness.redis.xrevrange(harness.keys.dead, count=5)
        found = [(i, f) for i, f in dead if f.get("request_id") == "too-big"]
        if found:
            break
        await harness.redis.xread({harness.keys.dead: "$"}, block=200)
    entry_id, fields = found[0]
    assert fields["dead_complete"] == "false"
    assert len(fields["pad"]) < 3000 and "more characters cut" in fields["pad"]
    code, out = await run_cli(harness.settings, tmp_path, "dead-letters", "--replay", entry_id)
    assert code == 1 and "cut copy" in out, out
    code, out = await run_cli(harness.settings, tmp_path, "dead-letters")
    assert code == 0 and entry_id in out and "not replayable" in out, out
