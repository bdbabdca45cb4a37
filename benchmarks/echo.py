"""The control-plane baseline: a consumer that does the least a reply can cost.

XREADGROUP a batch → one pipeline of an XADD reply per entry and one XACK → repeat. No
validation, no idempotency record, no status lookup: the physical limit of a stream consumer on
this Redis, for ``status`` commands to be compared with. Run as ``python -m benchmarks.echo
STREAM`` with ``BENCH_REDIS_URL`` in the environment (the password stays out of ``ps``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys

from redis.asyncio import Redis
from redis.exceptions import ResponseError

GROUP = "echo"


async def serve(url: str, stream: str) -> None:
    redis = Redis.from_url(url, decode_responses=True)
    with contextlib.suppress(ResponseError):  # BUSYGROUP: it exists
        await redis.xgroup_create(stream, GROUP, id="$", mkstream=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        response = await redis.xreadgroup(GROUP, "echo", {stream: ">"}, count=256, block=500)
        for _stream, entries in response or []:
            pipe = redis.pipeline(transaction=False)
            for entry_id, fields in entries:
                pipe.xadd(
                    fields.get("reply_to", f"{stream}:replies"),
                    {
                        "request_id": fields.get("request_id", entry_id),
                        "command": fields.get("command", ""),
                        "ok": "true",
                    },
                )
            pipe.xack(stream, GROUP, *(entry_id for entry_id, _ in entries))
            await pipe.execute()
    await redis.aclose()


def main() -> None:
    asyncio.run(serve(os.environ["BENCH_REDIS_URL"], sys.argv[1]))


if __name__ == "__main__":
    main()
