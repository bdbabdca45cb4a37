"""What every CLI command shares: the consoles, the command registry, the client helpers and
the way a reply is printed."""

from __future__ import annotations

import argparse
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker_manager.client.api import Client
from worker_manager.client.requests import CommandClient
from worker_manager.contract.reply import Reply
from worker_manager.core.connections import connect
from worker_manager.settings import Settings

console = Console()
err_console = Console(stderr=True)

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        COMMANDS[name] = fn
        return fn

    return register


async def with_client(
    settings: Settings, body: Callable[[CommandClient, Redis], Awaitable[int]]
) -> int:
    redis = connect(settings, name="cli")
    try:
        return await body(CommandClient(redis, settings.keys, producer=settings.producer), redis)
    finally:
        await redis.aclose()


def print_reply(reply: Reply, as_json: bool) -> int:
    if as_json:
        print(json.dumps(reply.model_dump(exclude_none=True)))
        return 0 if reply.ok else 1
    if not reply.ok:
        err_console.print(f"[red]{reply.error}[/red]: {reply.message}")
        if reply.retry_after is not None:
            err_console.print(f"retry after {reply.retry_after:g}s")
        return 1
    if reply.workers is not None:
        from worker_manager.cli.views import workers_table
        from worker_manager.client.api import WorkerInfo

        console.print(workers_table([WorkerInfo.from_fields(w) for w in reply.workers]))
        return 0
    table = Table(show_header=False, box=None)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # ids and image tags are copied whole, never cut
    for key in ("worker_id", "status", "ip_address"):
        value = getattr(reply, key)
        if value:
            table.add_row(key, str(value))
    for key, value in (reply.details or {}).items():
        table.add_row(key, Text(value))
    console.print(table)
    return 0


def print_evidence(evidence: dict[str, str]) -> None:
    """A worker's evidence (``workers.state.evidence``): its fields, then its container's last
    lines."""
    if not evidence:
        console.print("evidence   none (the worker has not ended, or its evidence expired)")
        return
    table = Table(show_header=False, box=None, title="evidence", title_justify="left")
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for key in (
        "status",
        "reason",
        "exit_code",
        "oom",
        "ended_by",
        "ended_at",
        "manager_id",
        "last_output_id",
        "finished_at",
    ):
        if evidence.get(key):
            table.add_row(key, Text(evidence[key]))
    console.print(table)
    if evidence.get("log_tail"):
        console.print("the container's last lines:")
        console.print(Text(evidence["log_tail"]))  # hostile text: never markup


async def with_api(
    settings: Settings, args: argparse.Namespace, body: Callable[[Client], Awaitable[int]]
) -> int:
    redis = connect(settings, name="cli")
    client = Client(
        redis,
        key_prefix=settings.key_prefix,
        tenant=settings.tenant,
        producer=settings.producer,
        timeout=args.timeout,
    )
    try:
        return await body(client)
    finally:
        await redis.aclose()
