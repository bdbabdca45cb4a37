"""A stop of the egress service (a restart on a settings change or a key rotation) charges the
answers it cuts: the real service, spawned as a manager spawns it, with a scripted Messages API
that starts a stream and never ends it, and the session's Redis holding the worker's usage."""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from pathlib import Path

import aiohttp
import pytest
from pydantic import SecretStr
from redis.asyncio import Redis

from tests.support.fake_anthropic import FakeAnthropic
from worker_manager.egress.control import EgressClient, stop_service
from worker_manager.egress.grants import GATEWAY_SOCKET, Grant, RunDir
from worker_manager.settings import Settings

pytestmark = [pytest.mark.redis]


async def test_a_stop_charges_the_answers_it_cuts_before_the_service_ends(
    settings: Settings, private_egress_dir: Path, redis: Redis, fake_anthropic: FakeAnthropic
) -> None:
    settings = settings.model_copy(
        update={
            "egress_run_dir": private_egress_dir,
            "anthropic_base_url": fake_anthropic.url,
            "anthropic_api_key": SecretStr(f"sk-ant-{secrets.token_hex(12)}"),
        }
    )
    client = EgressClient(settings)
    worker_id, token = f"w-{secrets.token_hex(4)}", f"wm-gw-{secrets.token_urlsafe(24)}"
    try:
        await client.ensure_running()
        sockets = await client.grant(
            Grant(
                worker_id=worker_id,
                key_prefix=settings.key_prefix,
                gateway_token=token,
                uid=os.getuid(),
                gid=os.getgid(),
            )
        )
    finally:
        await client.close()
    body = {
        "model": "claude-sonnet-4-5-20250929",
        "max_tokens": 64,
        "stream": True,
        "messages": [{"role": "user", "content": "FAKE tokens 100000\nFAKE stall"}],
    }
    headers = {"anthropic-version": "2023-06-01", "x-api-key": token}
    connector = aiohttp.UnixConnector(path=str(Path(sockets) / GATEWAY_SOCKET))
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post("http://worker/v1/messages", json=body, headers=headers) as response,
    ):
        assert response.status == 200
        first = await asyncio.wait_for(response.content.readuntil(b"\n\n"), 20)
        assert b"message_start" in first  # the stream is under way (and never ends)
        pid = int(RunDir(private_egress_dir).pid_file.read_text())

        started = time.monotonic()
        assert await asyncio.to_thread(stop_service, private_egress_dir, pid=pid)
        took = time.monotonic() - started
    # The service ended by itself, well before it would have been killed...
    log = (private_egress_dir / "service.log").read_text()
    assert took < 15, (took, log[-3000:])
    # ...and charged the answer it cut (its input tokens were in the first event).
    usage = await redis.hgetall(settings.keys.usage(worker_id))
    assert usage.get("requests") == "1", usage
    assert int(usage.get("input_tokens", "0")) >= 100_000, usage
