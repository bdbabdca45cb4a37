"""The client commands: they speak only the contract (SPEC §1-§4), through Redis."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from dataclasses import asdict

from redis.asyncio import Redis
from rich.table import Table

from worker_base.events import EventType
from worker_manager.cli.common import (
    command,
    console,
    err_console,
    print_evidence,
    print_reply,
    with_api,
    with_client,
)
from worker_manager.client.api import Client
from worker_manager.client.requests import CommandClient
from worker_manager.contract.reply import Reply
from worker_manager.settings import Settings
from worker_manager.tenants.registry import TenantRegistry


@command("create")
async def _create(args: argparse.Namespace, settings: Settings) -> int:
    instructions = args.instructions
    if args.instructions_file is not None:
        instructions = args.instructions_file.read_text()
    env: dict[str, str] = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            err_console.print(f"[red]--env wants NAME=VALUE, got {item!r}[/red]")
            return 2
        env[name] = value
    repository: dict[str, object] | None = None
    if args.repository:
        repository = {"url": args.repository, "ref": args.ref, "branch": args.branch}
        if args.depth:
            repository["depth"] = args.depth
    metadata: dict[str, str] = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            err_console.print(f"[red]--metadata wants KEY=VALUE, got {item!r}[/red]")
            return 2
        metadata[key] = value
    services: list[object] = []
    for text in args.services:
        try:
            services.append(json.loads(text))
        except ValueError as exc:
            err_console.print(f"[red]--service wants a JSON object: {exc}[/red]", markup=True)
            return 2
    fields: dict[str, object] = {
        "agent_type": args.agent_type,
        "worker_id": args.worker_id,
        "instructions": instructions,
        "allowed_commands": args.allowed_commands,
        "egress": args.egress,
        "modules": args.modules,
        "prompt": args.prompt,
        "agent_command": json.loads(args.agent_command) if args.agent_command else None,
        "metadata": metadata or None,
        "request_id": args.request_id,
        "input_timeout_seconds": args.input_timeout,
        "max_turns": args.max_turns,
        "max_cost_usd": args.max_cost_usd,
        "repository": repository,
        "env": env or None,
        "environment": args.environment or None,
        "services": services or None,
        "from_snapshot": args.from_snapshot or None,
        "team": args.team or None,
    }

    async def body(client: CommandClient, redis: Redis) -> int:
        reply = await client.create(timeout=args.timeout, **fields)
        code = print_reply(reply, args.json)
        if code or not args.wait or not reply.worker_id:
            return code
        settled = await _wait_settled(client, reply.worker_id, args.timeout * 20, quiet=args.json)
        status = settled.status if settled is not None else "STARTING"
        reason = (settled.details or {}).get("reason") if settled is not None else None
        if args.json:
            if settled is not None:
                print(json.dumps(settled.model_dump(exclude_none=True)))
        elif status == "RUNNING" or not reason:
            console.print(f"worker {reply.worker_id} is {status}")
        else:
            err_console.print(f"worker {reply.worker_id} is {status}: {reason}", markup=False)
        return 0 if status == "RUNNING" else 1

    return await with_client(settings, body)


async def _wait_settled(
    client: CommandClient, worker_id: str, timeout: float, *, quiet: bool = False
) -> Reply | None:
    """The first status reply that is not STARTING (the last one seen if time runs out),
    showing what the worker is doing meanwhile (``building 3/9``): a spinner on a terminal,
    one line per change elsewhere."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    reply: Reply | None = None
    shown = ""
    spinner = None if quiet or not err_console.is_terminal else err_console.status("STARTING")
    with spinner or contextlib.nullcontext():
        while loop.time() < deadline:
            reply = await client.request("status", worker_id=worker_id)
            if reply.status not in (None, "STARTING"):
                return reply
            progress = (reply.details or {}).get("progress", "")
            if progress and progress != shown:
                shown = progress
                if spinner is not None:
                    spinner.update(f"STARTING: {progress}")
                elif not quiet:
                    err_console.print(f"STARTING: {progress}", markup=False)
            await asyncio.sleep(0.5)
    return reply


@command("status")
async def _status(args: argparse.Namespace, settings: Settings) -> int:
    if not args.evidence:
        return await _simple(args, settings, "status")

    async def body(client: CommandClient, redis: Redis) -> int:
        reply = await client.request("status", timeout=args.timeout, worker_id=args.worker_id)
        evidence: dict[str, str] = await redis.hgetall(settings.keys.evidence(args.worker_id))
        if args.json:
            print(json.dumps({**reply.model_dump(exclude_none=True), "evidence": evidence}))
            return 0 if reply.ok else 1
        code = print_reply(reply, False)
        if reply.ok:
            print_evidence(evidence)
        return code

    return await with_client(settings, body)


@command("delete")
async def _delete(args: argparse.Namespace, settings: Settings) -> int:
    if args.all_workers or args.selector:
        if args.worker_id:
            err_console.print("[red]give a worker id, or --all/--selector, not both[/red]")
            return 2
        return await _delete_many(args, settings)
    if not args.worker_id:
        err_console.print("[red]delete needs a worker id, --all or --selector KEY=VALUE[/red]")
        return 2
    return await _simple(args, settings, "delete")


@command("suspend")
async def _suspend(args: argparse.Namespace, settings: Settings) -> int:
    return await _simple(args, settings, "suspend")


@command("fork")
async def _fork(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        extra = {"request_id": args.request_id} if args.request_id else {}
        reply = await client.request(
            "fork", timeout=args.timeout, worker_id=args.worker_id, count=str(args.count), **extra
        )
        if args.json or not reply.ok:
            return print_reply(reply, args.json)
        for worker_id in reply.worker_ids or []:
            console.print(worker_id)
        return 0

    return await with_client(settings, body)


@command("snapshot")
async def _snapshot(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        extra = {"request_id": args.request_id} if args.request_id else {}
        reply = await client.request(
            "snapshot", timeout=args.timeout, worker_id=args.worker_id, name=args.name, **extra
        )
        if args.json or not reply.ok:
            return print_reply(reply, args.json)
        snapshot = reply.snapshot or {}
        console.print(f"snapshot {snapshot.get('name')}: {snapshot.get('size_bytes')} bytes")
        return 0

    return await with_client(settings, body)


@command("snapshots")
async def _snapshots(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        reply = await client.request("list_snapshots", timeout=args.timeout)
        if args.json or not reply.ok:
            return print_reply(reply, args.json)
        table = Table("name", "worker", "agent", "created", "last used", "host", "bytes")
        for s in reply.snapshots or []:
            host = str(s.get("manager_id", "")) + ("" if s.get("host_live", True) else " (gone)")
            table.add_row(
                *(str(s.get(k, "")) for k in ("name", "worker_id", "agent_type", "created_at")),
                str(s.get("last_used_at", "")),
                host,
                str(s.get("size_bytes", "")),
            )
        console.print(table)
        return 0

    return await with_client(settings, body)


@command("delete-snapshot")
async def _delete_snapshot(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        reply = await client.request("delete_snapshot", timeout=args.timeout, name=args.name)
        return print_reply(reply, args.json)

    return await with_client(settings, body)


@command("resume")
async def _resume(args: argparse.Namespace, settings: Settings) -> int:
    return await _simple(args, settings, "resume")


async def _delete_many(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.client import bulk

    try:
        selector = bulk.parse_selector(args.selector)
    except bulk.SelectorError as exc:
        err_console.print(f"[red]{exc}[/red]")
        return 2

    async def body(client: CommandClient, _redis: Redis) -> int:
        listed = await client.list_all(timeout=args.timeout)
        if not listed.ok:
            return print_reply(listed, args.json)
        chosen = bulk.matching(listed.workers or [], selector)
        if args.confirm != len(chosen):
            err_console.print(
                f"{len(chosen)} live worker(s) match; nothing was deleted. To delete them, "
                f"repeat the command with --confirm {len(chosen)}"
            )
            return 2
        ids = [str(w["worker_id"]) for w in chosen]
        outcomes = await bulk.delete_each(client, ids, timeout=args.timeout)
        failed = [o for o in outcomes if o.reply is None or not o.reply.ok]
        if args.json:
            print(
                json.dumps(
                    [
                        {
                            "worker_id": o.worker_id,
                            "ok": bool(o.reply and o.reply.ok),
                            "status": o.reply.status if o.reply else None,
                            "error": (o.reply.error if o.reply else "timeout") or None,
                        }
                        for o in outcomes
                    ]
                )
            )
        else:
            table = Table("worker_id", "result")
            for o in outcomes:
                result = o.error or (
                    o.reply.status
                    if o.reply and o.reply.ok
                    else f"{o.reply.error}: {o.reply.message}"
                    if o.reply
                    else ""
                )
                table.add_row(o.worker_id, result or "")
            console.print(table)
            console.print(f"deleted {len(outcomes) - len(failed)} of {len(outcomes)}")
        return 1 if failed else 0

    return await with_client(settings, body)


async def _simple(args: argparse.Namespace, settings: Settings, name: str) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        extra = {"request_id": args.request_id} if args.request_id else {}
        reply = await client.request(name, timeout=args.timeout, worker_id=args.worker_id, **extra)
        return print_reply(reply, args.json)

    return await with_client(settings, body)


@command("list")
async def _list(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.cli import views as cli_views
    from worker_manager.client import bulk

    try:
        selector = bulk.parse_selector(args.selector)
    except bulk.SelectorError as exc:
        err_console.print(f"[red]{exc}[/red]")
        return 2

    async def body(client: Client) -> int:
        workers = cli_views.select(await client.list(), args.status, selector)
        if args.json:
            print(
                json.dumps({"command": "list", "ok": True, "workers": [asdict(w) for w in workers]})
            )
            return 0
        console.print(cli_views.workers_table(workers, wide=args.wide))
        console.print(f"{len(workers)} worker(s)", style="dim")
        return 0

    return await with_api(settings, args, body)


@command("events")
async def _events(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.cli import views as cli_views

    async def body(client: Client) -> int:
        async for change in client.lifecycle(after=args.after, follow=args.follow):
            if args.json:
                print(json.dumps(asdict(change)), flush=True)
            else:
                console.print(cli_views.lifecycle_line(change), soft_wrap=True)
        return 0

    return await with_api(settings, args, body)


@command("top")
async def _top(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.cli import views as cli_views

    async def body(client: Client) -> int:
        # The operator's top (no tenant of its own) also counts each tenant's workers.
        tenants = (
            [] if settings.tenant else list(await TenantRegistry(client.redis, settings).read())
        )
        await cli_views.top(client, console, once=args.once, tenants=tenants)
        return 0

    return await with_api(settings, args, body)


@command("send")
async def _send(args: argparse.Namespace, settings: Settings) -> int:
    content = sys.stdin.read() if args.content == "-" else args.content

    async def body(client: CommandClient, _redis: Redis) -> int:
        kind = "cancel" if args.cancel else "prompt"
        entry_id = await client.send_input(args.worker_id, content, kind)
        print(json.dumps({"input_id": entry_id}) if args.json else entry_id)
        return 0

    return await with_client(settings, body)


@command("tail")
async def _tail(args: argparse.Namespace, settings: Settings) -> int:
    """Follows through Redis restarts: the reader resumes after the last event it printed."""
    from worker_manager.cli import views as cli_views

    async def body(client: Client) -> int:
        follow = args.follow or args.until_done
        async for event in client.worker(args.worker_id).events(after=args.after, follow=follow):
            if args.json:
                print(json.dumps(asdict(event)), flush=True)
            else:
                console.print(cli_views.event_line(event), soft_wrap=True)
            if args.until_done and event.type == EventType.DONE:
                return 0
        return 0

    return await with_api(settings, args, body)
