"""The operator's commands: ``serve``, the base image, ``build``, ``environments``,
``producer-acl`` and ``gc``."""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
from typing import TYPE_CHECKING

from rich.text import Text

from worker_manager.cli.common import command, console, err_console
from worker_manager.core import logs
from worker_manager.core.connections import connect
from worker_manager.settings import Settings
from worker_manager.settings.commands import PRODUCER_RE

if TYPE_CHECKING:
    from docker import DockerClient

    from worker_manager.egress.control import EgressClient
    from worker_manager.environments.build_network import EgressBuildNetwork


@command("serve")
async def _serve(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.service.manager import serve

    await serve(settings, grace=args.grace)
    return 0


@command("egress")
async def _egress(args: argparse.Namespace, settings: Settings) -> int:
    """The per-host egress service (proxy, LLM gateway, Redis relay) in the foreground."""
    from worker_manager.egress.control import stop_service
    from worker_manager.egress.service import EgressService

    if args.stop:
        stopped = await asyncio.to_thread(stop_service, settings.egress_run_dir)
        console.print("stopped" if stopped else f"no egress service in {settings.egress_run_dir}")
        return 0
    await EgressService(settings).run()
    return 0


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

    from worker_manager.contract.kinds import Shape
    from worker_manager.core import docker_client
    from worker_manager.egress.control import EgressClient
    from worker_manager.images.build import BuildFailed
    from worker_manager.images.service import ImageService

    if args.environment is not None and args.environment not in settings.environments:
        known = ", ".join(sorted(settings.environments)) or "none"
        err_console.print(
            f"--environment: {args.environment!r} is not in WM_ENVIRONMENTS ({known})"
        )
        return 2
    parts = [args.agent_type, *sorted(set(args.modules))]
    text = "+".join(parts) + (f"@{args.environment}" if args.environment else "")
    shape = str(Shape.parse(text))
    redis = connect(settings, name="build")
    docker = docker_client.connect()
    egress = EgressClient(settings) if args.environment and settings.egress == "on" else None
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    try:
        with Progress(*columns, TimeElapsedColumn(), console=err_console) as bar:
            task = bar.add_task(f"{shape}: finding its image", total=None)

            def on_progress(step: int, steps: int) -> None:
                bar.update(task, description=f"{shape}: building", completed=step, total=steps)

            network = await _build_network(settings, docker, egress)
            ref = await ImageService(settings, redis, docker, build_network=network).ensure_shape(
                Shape.parse(shape), on_progress
            )
            done = bar.tasks[0].total or 1
            bar.update(task, description=f"{shape}: ready", completed=done, total=done)
    except BuildFailed as exc:
        err_console.print(Text.assemble(("build failed", "red"), ": ", exc.message))
        return 1
    finally:
        if egress is not None:
            await egress.close()
        await redis.aclose()
        docker.close()
    if args.json:
        print(json.dumps({"tag": ref.tag, "hash": ref.hash, "built": ref.built}))
    else:
        console.print(
            f"{ref.tag} ({'built now' if ref.built else 'already built'})", soft_wrap=True
        )
    return 0


async def _build_network(
    settings: Settings, docker: DockerClient, egress: EgressClient | None
) -> EgressBuildNetwork | None:
    """The network of a build that installs an environment's packages: through the egress
    service (started if none answers), as ``serve`` builds them; None uncontained."""
    from worker_manager.environments.build_network import EgressBuildNetwork

    if egress is None:
        return None
    await egress.ensure_running()
    return EgressBuildNetwork(settings, docker, egress)


@command("environments")
async def _environments(args: argparse.Namespace, settings: Settings) -> int:
    """The catalogue, each entry with the images built from it (from Redis alone: the image
    records' specs and ``<prefix>:images``), so it runs from any host."""
    from worker_manager.environments.catalogue import listing

    redis = connect(settings, name="cli")
    try:
        used = await redis.zrange(settings.keys.images, 0, -1, withscores=True)
        async with redis.pipeline(transaction=False) as pipe:
            for image_hash, _score in used:
                pipe.hget(settings.keys.image(image_hash), "spec")
            specs = await pipe.execute()
    finally:
        await redis.aclose()
    images = {
        str(image_hash): (str(spec or ""), float(score))
        for (image_hash, score), spec in zip(used, specs, strict=True)
    }
    entries = listing(settings, images)
    if args.json:
        print(
            json.dumps(
                [
                    {
                        "name": entry.name,
                        "base": entry.base,
                        "images": [
                            {"tag": i.tag, "shape": i.shape, "last_used": i.last_used}
                            for i in entry.images
                        ],
                    }
                    for entry in entries
                ]
            )
        )
        return 0
    if not entries:
        console.print("no environments (WM_ENVIRONMENTS is empty)")
        return 0
    from worker_manager.cli.views import environments_table

    console.print(environments_table(entries))
    return 0


@command("producer-acl")
async def _producer_acl(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.workers.resources.acl import producer_rules, tenant_producer_rules

    if not PRODUCER_RE.fullmatch(args.name):
        err_console.print("[red]a producer name is 1 to 64 of [A-Za-z0-9._-][/red]")
        return 2
    if settings.tenant:  # a tenant's producer writes its tenant's command stream (SPEC §11)
        # Quoted: the patterns' [0-9a-f] classes must reach redis-cli as they are, unglobbed.
        rules = " ".join(shlex.quote(rule) for rule in tenant_producer_rules(settings.keys))
        user = f"{settings.keys.docker_prefix}-producer-{args.name}"
        print(f"ACL SETUSER {user} on '>CHANGE-ME' {rules}")
        return 0
    rules = " ".join(shlex.quote(rule) for rule in producer_rules(settings.keys, args.name))
    print(f"ACL SETUSER {settings.key_prefix}-producer-{args.name} on '>CHANGE-ME' {rules}")
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


@command("dead-letters")
async def _dead_letters(args: argparse.Namespace, settings: Settings) -> int:
    from worker_manager.client import dead_letters

    redis = connect(settings, name="cli")
    try:
        if args.replay:
            try:
                stream, new_id = await dead_letters.replay(redis, settings.keys, args.replay)
            except dead_letters.NotReplayable as exc:
                err_console.print(f"[red]not replayed[/red]: {exc}")
                return 1
            if args.json:
                print(json.dumps({"stream": stream, "entry_id": new_id}))
            else:
                console.print(f"sent again on {stream} as {new_id}")
            return 0
        letters = await dead_letters.newest(redis, settings.keys, args.limit)
        if args.json:
            for letter in letters:
                print(json.dumps({"id": letter.entry_id, **letter.fields}))
            return 0
        if not letters:
            console.print("no dead letters")
        for letter in letters:
            f = letter.fields
            head = " ".join(
                f"{k}={f[k]}" for k in ("command", "request_id", "worker_id") if f.get(k)
            )
            flag = "" if letter.complete else " (cut: not replayable)"
            console.print(Text(f"{letter.entry_id}  {f.get('dead_at', '')}  {head}{flag}"))
            console.print(Text(f"    {letter.reason}"))  # hostile text: never markup
        return 0
    finally:
        await redis.aclose()
