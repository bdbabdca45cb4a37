"""The egress grant through the real interfaces: a create's ``egress`` is validated (a bad entry
is an ``invalid_command`` naming it, and a dead letter), kept canonical on the record, and shown
by ``status``, ``list``, the Python client and the CLI; a create that names none gets the
deployment's default.

Whether the worker's container starts does not matter here (containment is tested elsewhere):
the grant is on the record from the create on, and a status reply shows the record whatever the
worker's status is.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from tests.support.cli import run_cli
from tests.support.flows import Harness
from worker_manager.client.api import Client
from worker_manager.contract.reply import Reply

pytestmark = [pytest.mark.redis]

CAT = {"agent_type": "CUSTOM", "agent_command": '["cat"]'}


async def _create(harness: Harness, egress: str | None = None) -> Reply:
    """A CUSTOM ``cat`` worker (``egress`` None: the field is not sent)."""
    return await harness.client.request(
        "create", agent_type="CUSTOM", agent_command='["cat"]', egress=egress
    )


async def _delete(harness: Harness, worker_id: str) -> None:
    assert (await harness.client.request("delete", worker_id=worker_id, timeout=60)).ok


async def test_a_grant_is_kept_canonical_and_shown_by_status_and_list(harness: Harness) -> None:
    await harness.start()
    created = await _create(harness, '["API.GitHub.com:443", "*.pypi.org", "api.github.com:443"]')
    assert created.ok, created
    worker_id = created.worker_id
    assert worker_id
    try:
        canonical = ["api.github.com:443", "*.pypi.org"]
        stored = await harness.redis.hget(harness.keys.worker(worker_id), "egress")
        assert stored is not None and json.loads(stored) == canonical

        status = await harness.client.request("status", worker_id=worker_id)
        assert status.ok and status.details is not None
        assert json.loads(status.details["egress"]) == canonical

        listed = await harness.client.request("list")
        (mine,) = [w for w in listed.workers or [] if w["worker_id"] == worker_id]
        assert mine["egress"] == canonical

        client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
        assert (await client.worker(worker_id).status()).egress == canonical
        assert [w.egress for w in await client.list() if w.worker_id == worker_id] == [canonical]
    finally:
        await _delete(harness, worker_id)
    # An ended worker's record still says what it was granted.
    status = await harness.client.request("status", worker_id=worker_id)
    assert status.details is not None and json.loads(status.details["egress"]) == canonical


@pytest.mark.parametrize(
    ("egress", "entry"),
    [
        ('["api.github.com:443", "https://evil.example.com"]', "'https://evil.example.com'"),
        ('["*.*.pypi.org"]', "'*.*.pypi.org'"),
        ('["10.0.0.1/8"]', "'10.0.0.1/8'"),
        ('["api.github.com:0"]', "'api.github.com:0'"),
    ],
)
async def test_a_malformed_entry_is_an_invalid_command_naming_it(
    harness: Harness, egress: str, entry: str
) -> None:
    await harness.start()
    reply_to = f"{harness.keys.replies}:egress"
    request_id = f"bad-egress-{uuid.uuid4().hex[:8]}"
    entry_id = await harness.client.push(
        {
            "command": "create",
            **CAT,
            "egress": egress,
            "request_id": request_id,
            "reply_to": reply_to,
        }
    )
    reply = await harness.client.wait_reply(reply_to, request_id, timeout=10)
    assert not reply.ok and reply.error == "invalid_command"
    assert reply.message and "egress" in reply.message and entry in reply.message, reply.message
    dead = [d for _id, d in await harness.redis.xrange(harness.keys.dead)]
    (letter,) = [d for d in dead if d["dead_entry_id"] == entry_id]
    assert entry in letter["dead_reason"], letter
    assert await harness.redis.zcard(harness.keys.index) == 0, "no worker for a refused create"


async def test_a_create_without_egress_gets_the_default_and_an_empty_one_nothing(
    harness: Harness,
) -> None:
    await harness.start(egress_default=["pypi.org:443", "*.pythonhosted.org"])
    defaulted = await _create(harness)
    nothing = await _create(harness, "[]")
    assert defaulted.ok and defaulted.worker_id and nothing.ok and nothing.worker_id
    try:
        status = await harness.client.request("status", worker_id=defaulted.worker_id)
        assert status.details is not None
        assert json.loads(status.details["egress"]) == ["pypi.org:443", "*.pythonhosted.org"]
        status = await harness.client.request("status", worker_id=nothing.worker_id)
        assert status.details is not None and json.loads(status.details["egress"]) == []
    finally:
        await _delete(harness, defaulted.worker_id)
        await _delete(harness, nothing.worker_id)


async def test_the_client_and_the_cli_send_and_show_the_grant(
    harness: Harness, tmp_path: Path
) -> None:
    await harness.start()
    client = Client(harness.redis, key_prefix=harness.settings.key_prefix)
    worker = await client.create(
        agent_type="CUSTOM",
        agent_command=["cat"],
        egress=["Files.PythonHosted.org:443", "10.0.0.0/8:5432"],
    )
    try:
        assert (await worker.status()).egress == ["files.pythonhosted.org:443", "10.0.0.0/8:5432"]
    finally:
        await worker.delete()

    wide = {"COLUMNS": "200", "TERM": "dumb"}
    code, out = await run_cli(
        harness.settings,
        tmp_path,
        "create",
        "--agent-type",
        "CUSTOM",
        "--agent-command",
        '["cat"]',
        "--egress",
        "api.github.com:443",
        "--egress",
        "*.PyPI.org",
        "--json",
        env=wide,
    )
    assert code == 0, out
    worker_id = json.loads(out)["worker_id"]
    try:
        code, out = await run_cli(harness.settings, tmp_path, "status", worker_id, env=wide)
        assert code == 0, out
        assert '["api.github.com:443","*.pypi.org"]' in out, out
        code, out = await run_cli(
            harness.settings,
            tmp_path,
            "create",
            "--agent-type",
            "CUSTOM",
            "--agent-command",
            '["cat"]',
            "--egress",
            "https://x.com",
            env=wide,
        )
        assert code == 1 and "invalid_command" in out and "'https://x.com'" in out, out
    finally:
        await _delete(harness, worker_id)
