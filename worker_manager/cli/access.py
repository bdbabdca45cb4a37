"""Who may do what (SPEC §11): ``grant`` (a credential for one worker, through the command
stream like any producer's command), ``access add|list|remove`` (Redis users for people and
programs, made by the operator with the manager's own Redis user) and ``audit`` (the trail).

A password is shown once, or written to a file of mode 0600; the registry in Redis
(``<prefix>:access``) keeps each name's role and creation time, never a password.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shlex
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

from redis.asyncio import Redis

from worker_manager.cli.common import command, console, err_console, print_reply, with_client
from worker_manager.client.requests import CommandClient
from worker_manager.core.clock import iso_now
from worker_manager.core.connections import connect
from worker_manager.settings import Settings
from worker_manager.settings.commands import PRODUCER_RE
from worker_manager.tenants.registry import TenantRegistry
from worker_manager.workers.resources.acl import (
    producer_rules,
    tenant_producer_rules,
    viewer_rules,
)


def access_user(settings: Settings, name: str) -> str:
    """An access user's Redis name: ``<prefix>-access-<name>`` (``Keys.access_user``)."""
    return settings.keys.access_user(name)


def url_with(settings: Settings, username: str, password: str) -> str:
    """The manager's Redis URL with these credentials in place of its own."""
    parts = urlsplit(settings.redis_url)
    host = parts.hostname or "localhost"
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{quote(username, safe='')}:{quote(password, safe='')}@{host}" + (
        f":{parts.port}" if parts.port else ""
    )
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


@command("grant")
async def _grant(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        reply = await client.request(
            "grant",
            timeout=args.timeout,
            worker_id=args.worker_id,
            access=args.access,
            ttl_seconds=str(args.ttl_seconds),
        )
        if args.json or not reply.ok:
            return print_reply(reply, args.json)
        url = url_with(settings, reply.username or "", reply.password or "")
        console.print(f"user {reply.username} ({args.access}) until {reply.expires_at}")
        tenant = f"WM_TENANT={shlex.quote(settings.tenant)} " if settings.tenant else ""
        tail = (
            f"WM_REDIS_URL={shlex.quote(url)} WM_KEY_PREFIX={shlex.quote(settings.key_prefix)} "
            f"{tenant}worker-manager tail {args.worker_id} --follow"
        )
        print(tail, flush=True)
        return 0

    return await with_client(settings, body)


@command("access")
async def _access(args: argparse.Namespace, settings: Settings) -> int:
    redis = connect(settings, name="cli")
    try:
        if args.access_command == "add":
            return await _add(args, settings, redis)
        if args.access_command == "remove":
            user = access_user(settings, args.name)
            removed = await redis.execute_command("ACL", "DELUSER", user)
            await redis.hdel(settings.keys.access, args.name)
            console.print(f"{user} removed" if removed else f"{user} did not exist")
            return 0
        entries = await redis.hgetall(settings.keys.access)
        rows = [{"name": k, **json.loads(v)} for k, v in sorted(entries.items())]
        if args.json:
            print(json.dumps(rows))
        for row in rows if not args.json else []:
            tenant = row.get("tenant") or "-"
            console.print(f"{row['name']}\t{row.get('role')}\t{tenant}\t{row.get('created_at')}")
        return 0
    finally:
        await redis.aclose()


async def _add(args: argparse.Namespace, settings: Settings, redis: Redis) -> int:
    if not PRODUCER_RE.fullmatch(args.name):
        err_console.print("[red]a name is 1 to 64 of [A-Za-z0-9._-][/red]")
        return 2
    if settings.tenant and settings.tenant not in await TenantRegistry(redis, settings).read():
        err_console.print(
            f"[red]no tenant {settings.tenant!r} is served:[/red] add it first "
            f"(worker-manager tenants add {settings.tenant})"
        )
        return 2
    earlier = await redis.hget(settings.keys.access, args.name)
    if earlier:
        # Adding a user again rotates its password; it never moves it to another tenant or
        # role, which would widen what a holder of the old password's successor may reach.
        was = json.loads(earlier)
        if (was.get("role"), was.get("tenant") or "") != (args.role, settings.tenant or ""):
            where = f"tenant {was.get('tenant')}" if was.get("tenant") else "the default namespace"
            err_console.print(
                f"[red]{args.name} is already a {was.get('role')} of {where}:[/red] "
                f"remove it first (worker-manager access remove {args.name})"
            )
            return 2
    if args.role == "viewer":
        rules = viewer_rules(settings.keys)
    elif settings.tenant:  # a tenant's producer writes its tenant's command stream
        rules = tenant_producer_rules(settings.keys)
    else:  # the default namespace's writes a registered producer's stream of its own
        rules = producer_rules(settings.keys, args.name)
    password = secrets.token_urlsafe(24)
    user = access_user(settings, args.name)
    await redis.execute_command("ACL", "SETUSER", user, "reset", "on", f">{password}", *rules)
    await redis.hset(
        settings.keys.access,
        args.name,
        json.dumps(
            {
                "role": args.role,
                "user": user,
                "tenant": settings.tenant or "",
                "created_at": iso_now(),
            }
        ),
    )
    if args.role == "producer" and not settings.tenant and args.name not in settings.producers:
        err_console.print(
            f"note: add {args.name!r} to WM_PRODUCERS: the managers read its command stream "
            f"({settings.keys.producer_commands(args.name)}) only once it is listed"
        )
    if args.password_file is not None:
        path: Path = args.password_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(password + "\n")
        password_shown = f"(written to {path})"
    else:
        password_shown = password
    if args.json:
        shown = password if args.password_file is None else None
        print(
            json.dumps(
                {
                    "username": user,
                    "password": shown,
                    "tenant": settings.tenant or "",
                    "role": args.role,
                }
            )
        )
    else:
        of = f" of tenant {settings.tenant}" if settings.tenant else ""
        console.print(f"user {user} ({args.role}{of}); password {password_shown}")
        console.print(f"connect with: {url_with(settings, user, '<password>')}")
    return 0


@command("audit")
async def _audit(args: argparse.Namespace, settings: Settings) -> int:
    redis = connect(settings, name="cli")
    try:
        entries = await redis.xrevrange(settings.keys.audit, count=args.count)
        last = entries[0][0] if entries else "0-0"
        for _id, fields in reversed(entries):
            _print(fields, args.json)
        while args.follow:
            found = await redis.xread({settings.keys.audit: last}, block=1000, count=100)
            for _stream, batch in found or []:
                for entry_id, fields in batch:
                    last = entry_id
                    _print(fields, args.json)
            await asyncio.sleep(0)
        return 0
    finally:
        await redis.aclose()


def _print(fields: dict[str, str], as_json: bool) -> None:
    if as_json:
        print(json.dumps(fields), flush=True)
        return
    console.print(
        " ".join(
            f"{k}={fields.get(k, '')}"
            for k in ("time", "command", "worker_id", "request_id", "outcome", "sender")
        ),
        soft_wrap=True,
        markup=False,
    )
