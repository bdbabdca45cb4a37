"""The command line's grammar: every subcommand and option, and the settings they override.

Every option maps onto a ``WM_*`` setting (the environment and ``.env`` give the defaults).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from worker_manager import __version__
from worker_manager.settings import Settings

#: CLI option → Settings field, for options shared by several commands.
_SETTING_OPTIONS = {
    "redis_url": "--redis-url",
    "key_prefix": "--key-prefix",
    "tenant": "--tenant",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worker-manager",
        description="Control plane for coding-agent workers: Redis streams in, Docker out.",
    )
    parser.add_argument("--version", action="version", version=f"worker-manager {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--redis-url", help="Redis to use (WM_REDIS_URL)")
    common.add_argument("--key-prefix", help="key prefix instead of 'worker' (WM_KEY_PREFIX)")
    common.add_argument("--tenant", help="the tenant whose workers to act on (WM_TENANT)")
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
    create.add_argument(
        "--agent-type", required=True, choices=["CLAUDE", "CODEX", "FACTORY", "CUSTOM"]
    )
    create.add_argument("--worker-id", help="choose the worker's UUID")
    create.add_argument("--team", metavar="NAME", help="join that team's board (SPEC §12)")
    create.add_argument("--instructions", help="text for CLAUDE.md / AGENTS.md")
    create.add_argument("--instructions-file", type=Path, help="read the instructions from a file")
    create.add_argument(
        "--allowed-command",
        action="append",
        dest="allowed_commands",
        help="a command (prefix) the worker may run; repeat",
    )
    create.add_argument(
        "--egress",
        action="append",
        dest="egress",
        metavar="DEST",
        help="a destination the worker may reach (host[:port], *.domain[:port], IP or "
        "CIDR[:port], or '*' for any public one); repeat. None given: WM_EGRESS_DEFAULT",
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
        "--repository", metavar="URL", help="check this repository out into the workspace first"
    )
    create.add_argument("--ref", default="", help="with --repository: a branch, tag or commit")
    create.add_argument("--branch", default="", help="with --repository: a new branch for the work")
    create.add_argument("--depth", type=int, help="with --repository: a shallow checkout")
    create.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="for the agent; repeat"
    )
    create.add_argument(
        "--environment",
        metavar="NAME|JSON",
        help="its toolchain: a name from WM_ENVIRONMENTS, or a JSON spec such as "
        '\'{"apt": ["jq"], "pip": ["pytest"]}\'',
    )
    create.add_argument(
        "--service",
        action="append",
        default=[],
        dest="services",
        metavar="JSON",
        help="a service beside it, reached on 127.0.0.1: a JSON object such as "
        '\'{"name": "db", "image": "pg16", "command": ["postgres"], "port": 5432}\'; repeat',
    )
    create.add_argument(
        "--from-snapshot",
        metavar="NAME",
        help="start from a snapshot: its workspace and agent session (SPEC §10)",
    )
    create.add_argument(
        "--wait",
        action="store_true",
        help="after the reply, wait until the worker is RUNNING (or has failed)",
    )

    fork = sub.add_parser(
        "fork", parents=[common], help="copy a worker (workspace and session) into new ones"
    )
    fork.add_argument("worker_id")
    fork.add_argument("--count", type=int, default=1, help="how many copies (default 1)")
    fork.add_argument("--request-id", help="idempotency key")
    snapshot = sub.add_parser(
        "snapshot", parents=[common], help="keep a worker's state under a name"
    )
    snapshot.add_argument("worker_id")
    snapshot.add_argument("name")
    snapshot.add_argument("--request-id", help="idempotency key")
    sub.add_parser("snapshots", parents=[common], help="list the snapshots")
    forget = sub.add_parser("delete-snapshot", parents=[common], help="delete a snapshot")
    forget.add_argument("name")

    for name, text in (
        ("status", "show a worker's status"),
        ("delete", "stop and remove a worker (or, with --all/--selector, many)"),
        ("suspend", "stop a worker's container, keeping its workspace and session"),
        ("resume", "start a suspended worker again"),
    ):
        p = sub.add_parser(name, parents=[common], help=text)
        p.add_argument("worker_id", nargs="?" if name == "delete" else None)
        p.add_argument("--request-id", help="idempotency key")
        if name == "status":
            p.add_argument(
                "--evidence",
                action="store_true",
                help="also how it ended: exit code, OOM, who ended it, its container's last lines",
            )
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

    diff = sub.add_parser("diff", parents=[common], help="a worker's patch (SPEC §8)")
    diff.add_argument("worker_id")
    cp = sub.add_parser(
        "cp", parents=[common], help="copy a file out of or into a workspace (ID:PATH, or -)"
    )
    cp.add_argument("source")
    cp.add_argument("target")
    ls = sub.add_parser("ls", parents=[common], help="list a directory of a workspace")
    ls.add_argument("worker_id")
    ls.add_argument("path", nargs="?", default=".")
    run = sub.add_parser(
        "exec", parents=[common], help="run a command in a workspace: exec ID -- ARGV..."
    )
    run.add_argument("worker_id")
    run.add_argument(
        "--exec-timeout",
        type=float,
        metavar="SECONDS",
        help="stop it after this (default: the worker's input timeout)",
    )
    run.add_argument("argv", nargs=argparse.REMAINDER)

    build = sub.add_parser(
        "build",
        parents=[common],
        help="build the image of a worker shape now, with progress (run on the Docker host)",
    )
    build.add_argument(
        "--agent-type", required=True, choices=["CLAUDE", "CODEX", "FACTORY", "CUSTOM"]
    )
    build.add_argument(
        "--module",
        action="append",
        dest="modules",
        default=[],
        choices=["GIT", "GITHUB_CLI", "COPIER", "CURL", "DOCKER"],
    )
    build.add_argument("--environment", metavar="NAME", help="an environment of WM_ENVIRONMENTS")

    sub.add_parser(
        "environments",
        parents=[common],
        help="list the catalogue (WM_ENVIRONMENTS): each entry's base, images and last use",
    )

    grant = sub.add_parser(
        "grant",
        parents=[common],
        help="a Redis credential for one worker only: read its output, or also drive it",
    )
    grant.add_argument("worker_id")
    grant.add_argument("--access", choices=["read", "drive"], default="read")
    grant.add_argument("--ttl", type=int, default=3600, metavar="SECONDS", dest="ttl_seconds")

    team = sub.add_parser(
        "team",
        parents=[common],
        help="a team's board and members: 'team NAME [--follow]', or 'team post NAME TEXT'",
    )
    team.add_argument("words", nargs="+", metavar="NAME | post NAME TEXT")
    team.add_argument("--follow", "-f", action="store_true", help="keep printing new entries")

    access = sub.add_parser("access", help="Redis users for people and programs (SPEC §11)")
    access_sub = access.add_subparsers(dest="access_command", required=True)
    add = access_sub.add_parser(
        "add", parents=[common], help="create one; its password is printed once"
    )
    add.add_argument("name")
    add.add_argument("--role", choices=["producer", "viewer"], required=True)
    add.add_argument(
        "--password-file", type=Path, help="write the password here (mode 0600), not to stdout"
    )
    access_sub.add_parser("list", parents=[common], help="the access users and their roles")
    remove = access_sub.add_parser(
        "remove", parents=[common], help="delete one (its connections are closed)"
    )
    remove.add_argument("name")

    tenants = sub.add_parser("tenants", help="the tenants the managers serve (SPEC §11)")
    tenants_sub = tenants.add_subparsers(dest="tenants_command", required=True)
    tenant_add = tenants_sub.add_parser(
        "add", parents=[common], help="add a tenant (or change its quotas)"
    )
    tenant_add.add_argument("name")
    tenant_add.add_argument(
        "--max-workers",
        dest="quota_max_workers",
        type=int,
        help="its live workers, across managers",
    )
    tenant_add.add_argument(
        "--max-cost-usd-per-day",
        dest="quota_max_cost_usd_per_day",
        type=float,
        help="what its workers may spend a UTC day",
    )
    tenants_sub.add_parser("list", parents=[common], help="the tenants and their quotas")
    tenant_remove = tenants_sub.add_parser(
        "remove", parents=[common], help="take one out of the registry"
    )
    tenant_remove.add_argument("name")
    tenant_remove.add_argument(
        "--force", action="store_true", help="even while it has live or suspended workers"
    )

    audit = sub.add_parser("audit", parents=[common], help="print the audit trail (SPEC §11)")
    audit.add_argument("--follow", action="store_true", help="keep printing new entries")
    audit.add_argument("--count", type=int, default=50, help="how many of the latest to print")

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

    egress = sub.add_parser(
        "egress",
        parents=[common],
        help="run this host's egress service (serve starts it when WM_EGRESS_SPAWN is on)",
    )
    egress.add_argument(
        "--stop", action="store_true", help="stop the service of WM_EGRESS_RUN_DIR and exit"
    )

    dead = sub.add_parser(
        "dead-letters",
        parents=[common],
        help="list the newest dead letters (commands never handled), or send one again",
    )
    dead.add_argument("--limit", type=int, default=20, help="how many to list (newest first)")
    dead.add_argument(
        "--replay",
        metavar="ID",
        help="send this dead letter's command again, on the stream it came on (fix the cause "
        "first; its request id keeps it from being handled twice)",
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
        "tenant",
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
