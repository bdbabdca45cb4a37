"""The workspace commands (SPEC §8): the work out of a worker without asking its agent.

``diff <id>`` prints the patch against where the worker's repository was checked out; ``cp``
copies one file out of (``cp <id>:<path> <local>``) or into (``cp <local> <id>:<path>``) the
workspace (``-`` is standard output or input); ``ls <id> [path]`` lists a directory; ``exec <id>
-- <argv>`` runs a command in the workspace as the agent's user and exits with its exit code.
All go through the worker's input stream and are answered by its wrapper.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from worker_manager.cli.common import command, console, err_console, with_api
from worker_manager.client.api import Client
from worker_manager.client.errors import WorkspaceRequestError
from worker_manager.settings import Settings


@command("diff")
async def _diff(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: Client) -> int:
        diff = await client.worker(args.worker_id).diff(timeout=args.timeout)
        if args.json:
            print(json.dumps(dataclasses.asdict(diff)))
        else:
            sys.stdout.write(diff.patch)
            if diff.truncated:
                err_console.print(f"[yellow]the patch was cut at its bound ({diff.size} bytes)")
        return 0

    return await _workspace(settings, args, body)


@command("cp")
async def _cp(args: argparse.Namespace, settings: Settings) -> int:
    source, target = _remote(args.source), _remote(args.target)
    if (source is None) == (target is None):
        err_console.print("[red]cp wants one side as WORKER_ID:PATH and the other local[/red]")
        return 2

    async def body(client: Client) -> int:
        if source is not None:
            data = await client.worker(source[0]).read(source[1], timeout=args.timeout)
            if args.target == "-":
                sys.stdout.buffer.write(data)
            else:
                await asyncio.to_thread(Path(args.target).write_bytes, data)
            return 0
        assert target is not None
        local = sys.stdin.buffer if args.source == "-" else None
        data = local.read() if local else await asyncio.to_thread(Path(args.source).read_bytes)
        await client.worker(target[0]).write(target[1], data, timeout=args.timeout)
        return 0

    return await _workspace(settings, args, body)


@command("ls")
async def _ls(args: argparse.Namespace, settings: Settings) -> int:
    async def body(client: Client) -> int:
        entries = await client.worker(args.worker_id).list(args.path, timeout=args.timeout)
        if args.json:
            print(json.dumps([dataclasses.asdict(e) for e in entries]))
            return 0
        for entry in entries:
            suffix = "/" if entry.type == "directory" else ""
            console.print(f"{entry.size:>12}  {entry.name}{suffix}", markup=False)
        return 0

    return await _workspace(settings, args, body)


@command("exec")
async def _exec(args: argparse.Namespace, settings: Settings) -> int:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        err_console.print("[red]exec wants a command: exec WORKER_ID -- ARGV...[/red]")
        return 2

    async def body(client: Client) -> int:
        result = await client.worker(args.worker_id).exec(
            argv, timeout_seconds=args.exec_timeout, timeout=None
        )
        for event in result.events:
            if event.type == "stdout":
                print(event.content, flush=True)
            elif event.type in ("stderr", "error"):
                print(event.content, file=sys.stderr, flush=True)
        return result.exit_code

    return await _workspace(settings, args, body)


async def _workspace(
    settings: Settings, args: argparse.Namespace, body: Callable[[Client], Awaitable[int]]
) -> int:
    try:
        return await with_api(settings, args, body)
    except WorkspaceRequestError as exc:
        err_console.print(f"[red]{exc}[/red]")
        return 1


def _remote(text: str) -> tuple[str, str] | None:
    """``WORKER_ID:PATH`` as (id, path); None for a local path (or ``-``)."""
    worker_id, sep, path = text.partition(":")
    if not sep or len(worker_id) != 36 or worker_id.count("-") != 4:
        return None
    return worker_id, path
