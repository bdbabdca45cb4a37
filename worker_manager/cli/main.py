"""``worker-manager``: the service (``serve``) and its clients, which speak only the contract.

Every option maps onto a ``WM_*`` setting (the environment and ``.env`` give the defaults);
client commands wait for the reply and print it readably, or as JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from rich.console import Console
from rich.table import Table
from rich.text import Text

from worker_manager import __version__
from worker_manager.client.api import Client, WorkerManagerError
from worker_manager.client.requests import CommandClient, ReplyTimeout
from worker_manager.contract.reply import Reply
from worker_manager.core import logs
from worker_manager.core.connections import connect
from worker_manager.settings import Settings
from worker_manager.settings.commands import PRODUCER_RE

console = Console()
err_console = Console(stderr=True)

#: CLI option → Settings field, for options shared by several commands.
_SETTING_OPTIONS = {
    "redis_url": "--redis-url",
    "key_prefix": "--key-prefix",
}

Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int]]
_COMMANDS: dict[str, Command] = {}


def command(name: str) -> Callable[[Command], Command]:
    def register(fn: Command) -> Command:
        _COMMANDS[name] = fn
        return fn

    return register


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-manager",
        description="Control plane for coding-agent workers: Redis streams in, Docker out.",
    )
    parser.add_argument("--version", action="version", version=f"worker-manager {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="Redis to use (WM_REDIS_URL)")
    common.add_argument("--key-prefix", help="key prefix instead of 'worker' (WM_KEY_PREFIX)")
    common.add_argument("--json", action="store_true", help="print machine-readable JSON")
    common.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for a reply")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", parents=[common], help="run the service")
    serve.add_argument("--http-addr", help="host:port for /livez /readyz /metrics")
    serve.add_argument("--max-workers", type=int, help="live workers this manager may run")
    serve.add_argument("--idle-timeout-seconds", type=float, help="stop workers idle this long")
    serve.add_argument("--base-image", help="image worker images are built FROM")
    serve.add_argument("--manager-id", help="this manager's stable id (default: hostname)")
    serve.add_argument(
        "--grace",
        type=float,
        default=10.0,
        help="seconds in-flight commands get to finish after SIGTERM (exit) or SIGUSR1 (drain: "
        "stop taking commands, keep watching workers); unfinished ones are left pending",
    )

    create = sub.add_parser("create", parents=[common], help="create a worker")
    create.add_argument("--agent-type", required=True, choices=["CLAUDE", "FACTORY", "CUSTOM"])
    create.add_argument("--worker-id", help="choose the worker's UUID")
    create.add_argument("--instructions", help="text for CLAUDE.md / AGENTS.md")
    create.add_argument("--instructions-file", type=Path, help="read the instructions from a file")
    create.add_argument(
        "--allowed-command",
        action="append",
        dest="allowed_commands",
        help="a command (prefix) the worker may run; repeat",
    )
    create.add_argument(
        "--module",
        action="append",
        dest="modules",
        choices=["GIT", "GITHUB_CLI", "COPIER", "CURL", "DOCKER"],
    )
    create.add_argument("--prompt", help="first input, delivered once the worker runs")
    create.add_argument("--agent-command", help="JSON argv of the agent program (CUSTOM)")
    create.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE")
    create.add_argument("--request-id", help="idempotency key")
    create.add_argument(
        "--input-timeout", type=float, metavar="SECONDS", help="kill a run of one input after this"
    )
    create.add_argument("--max-turns", type=int, help="per input: the most agent turns")
    create.add_argument(
        "--max-cost-usd", type=float, help="the worker's budget; it stops once spent"
    )
    create.add_argument(
        "--wait",
        action="store_true",
        help="after the reply, wait until the worker is RUNNING (or has failed)",
    )

    for name, text in (
        ("status", "show a worker's status"),
        ("delete", "stop and remove a worker (or, with --all/--selector, many)"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("worker_id", nargs="?" if name == "delete" else None)
        p.add_argument("--request-id", help="idempotency key")
        if name == "delete":
            p.add_argument(
                "--all",
                action="store_true",
                dest="all_workers",
                help="every live worker (needs --confirm)",
            )
            p.add_argument(
                "--selector",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="live workers whose metadata matches; repeat (needs --confirm)",
            )
            p.add_argument(
                "--confirm",
                type=int,
                metavar="N",
                help="the exact number of workers about to be deleted",
            )

    listing = sub.add_parser("list", parents=[common], help="list workers (full ids)")
    listing.add_argument("--wide", action="store_true", help="more columns")
    listing.add_argument(
        "--status", action="append", default=[], help="only workers in this status; repeat"
    )
    listing.add_argument(
        "--selector", action="append", default=[], metavar="KEY=VALUE", help="metadata match"
    )

    events = sub.add_parser("events", parents=[common], help="print the lifecycle stream")
    events.add_argument("--follow", "-f", action="store_true", help="keep printing new changes")
    events.add_argument(
        "--from", dest="after", default="0", help="entry id to start after (default: all kept)"
    )

    top = sub.add_parser("top", parents=[common], help="the fleet, live")
    top.add_argument("--once", action="store_true", help="print one screen and exit")

    send = sub.add_parser("send", parents=[common], help="push an input to a worker")
    send.add_argument("worker_id")
    send.add_argument("content", help="the prompt text, or - to read standard input")
    send.add_argument("--cancel", action="store_true", help="send a cancel instead of a prompt")

    tail = sub.add_parser("tail", parents=[common], help="print a worker's output")
    tail.add_argument("worker_id")
    tail.add_argument("--follow", "-f", action="store_true", help="keep printing new events")
    tail.add_argument("--until-done", action="store_true", help="stop after the next `done`")
    tail.add_argument("--from", dest="after", default="0-0", help="entry id to start after")

    build = sub.add_parser(
        "build",
        parents=[common],
        help="build the image of a worker shape now, with progress (run on the Docker host)",
    )
    build.add_argument("--agent-type", required=True, choices=["CLAUDE", "FACTORY", "CUSTOM"])
    build.add_argument(
        "--module",
        action="append",
        dest="modules",
        default=[],
        choices=["GIT", "GITHUB_CLI", "COPIER", "CURL", "DOCKER"],
    )

    producer = sub.add_parser(
        "producer-acl",
        parents=[common],
        help="print the Redis ACL rules for a registered producer (WM_PRODUCERS)",
    )
    producer.add_argument("name", help="the producer's name, as listed in WM_PRODUCERS")

    boot = sub.add_parser(
        "bootstrap-base",
        parents=[common],
        help="build the base image from a Debian root filesystem",
    )
    boot.add_argument("--tag", help="tag to give it (default: WM_BASE_IMAGE)")
    sub.add_parser(
        "ensure-base",
        parents=[common],
        help="make sure WM_BASE_IMAGE exists: inspect, pull, else bootstrap",
    )

    gc = sub.add_parser(
        "gc",
        parents=[common],
        help="remove worker images unused for too long (run on the Docker host)",
    )
    gc.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")
    gc.add_argument(
        "--max-age",
        help="e.g. 7d, 36h, 90m; a bare number is days (default: WM_IMAGE_MAX_AGE_DAYS)",
    )
    gc.add_argument(
        "--disk-budget-bytes",
        type=int,
        help="also remove least recently used images above this many bytes",
    )
    return parser


def settings_from(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {}
    for field in (
        "redis_url",
        "key_prefix",
        "http_addr",
        "max_workers",
        "idle_timeout_seconds",
        "base_image",
        "manager_id",
    ):
        value = getattr(args, field, None)
        if value is not None:
            overrides[field] = value
    return Settings(**overrides)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        return asyncio.run(_COMMANDS[args.command](args, settings))
    except ReplyTimeout as exc:
        err_console.print(f"[red]{exc}[/red]: is `worker-manager serve` running on this Redis?")
        return 3
    except WorkerManagerError as exc:
        err_console.print(Text.assemble((exc.code, "red"), ": ", exc.message))
        return 1
    except KeyboardInterrupt:
        return 130


async def _with_client(
    settings: Settings, body: Callable[[CommandClient, Redis], Awaitable[int]]
) -> int:
    redis = connect(settings, name="cli")
    try:
        return await body(CommandClient(redis, settings.keys, producer=settings.producer), redis)
    finally:
        await redis.aclose()


def _print_reply(reply: Reply, as_json: bool) -> int:
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


@command("serve")
async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.service.manager import serve

    await serve(settings, grace=args.grace)
    return 0


@command("create")
async def _create(args: argparse.Namespace, settings: Settings) -> int:
    instructions = args.instructions
    if args.instructions_file is not None:
        instructions = args.instructions_file.read_text()
    metadata: dict[str, str] = {}
    for item in args.metadata:
        key, sep, value = item.partition("=")
        if not sep:
            err_console.print(f"[red]--metadata wants KEY=VALUE, got {item!r}[/red]")
            return 2
        metadata[key] = value
    fields: dict[str, object] = {
        "agent_type": args.agent_type,
        "worker_id": args.worker_id,
        "instructions": instructions,
        "allowed_commands": args.allowed_commands,
        "modules": args.modules,
        "prompt": args.prompt,
        "agent_command": json.loads(args.agent_command) if args.agent_command else None,
        "metadata": metadata or None,
        "request_id": args.request_id,
        "input_timeout_seconds": args.input_timeout,
        "max_turns": args.max_turns,
        "max_cost_usd": args.max_cost_usd,
    }

    async def body(client: CommandClient, redis: Redis) -> int:
        reply = await client.create(timeout=args.timeout, **fields)
        code = _print_reply(reply, args.json)
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

    return await _with_client(settings, body)


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
    return await _simple(args, settings, "status")


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
            return _print_reply(listed, args.json)
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

    return await _with_client(settings, body)


async def _simple(args: argparse.Namespace, settings: Settings, name: str) -> int:
    async def body(client: CommandClient, _redis: Redis) -> int:
        extra = {"request_id": args.request_id} if args.request_id else {}
        reply = await client.request(name, timeout=args.timeout, worker_id=args.worker_id, **extra)
        return _print_reply(reply, args.json)

    return await _with_client(settings, body)


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

    return await _with_api(settings, args, body)


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

    return await _with_api(settings, args, body)


@command("top")
async def _top(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.cli import views as cli_views

    async def body(client: Client) -> int:
        await cli_views.top(client, console, once=args.once)
        return 0

    return await _with_api(settings, args, body)


async def _with_api(
    settings: Settings, args: argparse.Namespace, body: Callable[[Client], Awaitable[int]]
) -> int:
    redis = connect(settings, name="cli")
    client = Client(
        redis, key_prefix=settings.key_prefix, producer=settings.producer, timeout=args.timeout
    )
    try:
        return await body(client)
    finally:
        await redis.aclose()


@command("send")
async def _send(args: argparse.Namespace, settings: Settings) -> int:
    content = sys.stdin.read() if args.content == "-" else args.content

    async def body(client: CommandClient, _redis: Redis) -> int:
        kind = "cancel" if args.cancel else "prompt"
        entry_id = await client.send_input(args.worker_id, content, kind)
        print(json.dumps({"input_id": entry_id}) if args.json else entry_id)
        return 0

    return await _with_client(settings, body)


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
            if args.until_done and event.type == "done":
                return 0
        return 0

    return await _with_api(settings, args, body)


@command("bootstrap-base")
async def _bootstrap(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.images.bootstrap import bootstrap_base_image

    tag = args.tag or settings.base_image
    image_id = await asyncio.to_thread(bootstrap_base_image, tag, log=logs.get_logger("bootstrap"))
    console.print(f"built {tag} ({image_id[:19]})")
    return 0


@command("ensure-base")
async def _ensure_base(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.images.bootstrap import ensure_base_image

    image_id = await asyncio.to_thread(
        ensure_base_image, settings, log=logs.get_logger("bootstrap")
    )
    console.print(f"base image {settings.base_image} is ready ({image_id[:19]})")
    return 0


@command("build")
async def _build(args: argparse.Namespace, settings: Settings) -> int:
    """The same build a create would run (and joins), its steps as a progress bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from worker_manager.contract.kinds import AgentType, Module
    from worker_manager.core import docker_client
    from worker_manager.images.build import BuildFailed
    from worker_manager.images.service import ImageService

    shape = "+".join([args.agent_type, *sorted(set(args.modules))])
    redis = connect(settings, name="build")
    docker = docker_client.connect()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, TimeElapsedColumn(), console=err_console) as bar:
            task = bar.add_task(f"{shape}: finding its image", total=None)

            def on_progress(step: int, steps: int) -> None:
                bar.update(task, description=f"{shape}: building", completed=step, total=steps)

            ref = await ImageService(settings, redis, docker).ensure(
                AgentType(args.agent_type), [Module(m) for m in args.modules], on_progress
            )
            done = bar.tasks[0].total or 1
            bar.update(task, description=f"{shape}: ready", completed=done, total=done)
    except BuildFailed as exc:
        err_console.print(Text.assemble(("build failed", "red"), ": ", exc.message))
        return 1
    finally:
        await redis.aclose()
        docker.close()
    if args.json:
        print(json.dumps({"tag": ref.tag, "hash": ref.hash, "built": ref.built}))
    else:
        console.print(
            f"{ref.tag} ({'built now' if ref.built else 'already built'})", soft_wrap=True
        )
    return 0


@command("producer-acl")
async def _producer_acl(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.workers.acl import producer_rules

    if not PRODUCER_RE.fullmatch(args.name):
        err_console.print("[red]a producer name is 1 to 64 of [A-Za-z0-9._-][/red]")
        return 2
    rules = " ".join(producer_rules(settings.keys, args.name))
    print(f"ACL SETUSER {settings.key_prefix}-producer-{args.name} on >CHANGE-ME {rules}")
    if args.name not in settings.producers:
        err_console.print(
            f"note: {args.name!r} is not in WM_PRODUCERS here; the manager reads its stream "
            "only once it is"
        )
    return 0


@command("gc")
async def _gc(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.core import docker_client
    from worker_manager.images.gc_execute import Collector
    from worker_manager.images.gc_report import parse_duration, print_report

    try:
        max_age = parse_duration(args.max_age) if args.max_age else None
    except ValueError as exc:
        err_console.print(f"[red]--max-age: {exc}[/red]")
        return 2
    redis = connect(settings, name="gc")
    docker = docker_client.connect()
    try:
        report = await Collector(settings, redis, docker).run(
            dry_run=args.dry_run, max_age_seconds=max_age, budget_bytes=args.disk_budget_bytes
        )
    finally:
        await redis.aclose()
        docker.close()
    if args.json:
        print(json.dumps(report.as_json()))
    else:
        print_report(report, console)
    return 1 if report.errors or report.skipped else 0


if __name__ == "__main__":
    sys.exit(main())
