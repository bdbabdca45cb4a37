"""``worker-manager``: the service (``serve``) and its clients, which speak only the contract.

Client commands wait for the reply and print it readably, or as JSON with ``--json``. The
subcommands live in ``cli.workers`` (the contract's clients), ``cli.workspace`` (a worker's
files: diff, cp, ls, exec), ``cli.access`` (grants, access users, the audit trail),
``cli.teams`` (a team's board), ``cli.tenants`` (the tenant registry) and ``cli.admin`` (the
operator's); importing them registers them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from pydantic import ValidationError
from rich.text import Text

from worker_manager.cli import access, admin, teams, tenants, workers, workspace
from worker_manager.cli.common import COMMANDS, err_console
from worker_manager.cli.parser import build_parser, settings_from
from worker_manager.client.api import WorkerManagerError
from worker_manager.client.requests import ReplyTimeout
from worker_manager.core import logs

__all__ = ["access", "admin", "main", "teams", "tenants", "workers", "workspace"]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        err_console.print(f"[red]configuration error:[/red] {exc}")
        return 2
    if args.command != "serve" and settings.tenant and settings.producer:
        err_console.print(
            "[red]WM_TENANT and WM_PRODUCER together:[/red] a registered producer sends in the "
            "default namespace, a tenant's producer on its tenant's command stream; set one"
        )
        return 2
    logs.configure(settings.log_level, settings.log_format)
    try:
        return asyncio.run(COMMANDS[args.command](args, settings))
    except ReplyTimeout as exc:
        err_console.print(f"[red]{exc}[/red]: is `worker-manager serve` running on this Redis?")
        return 3
    except WorkerManagerError as exc:
        err_console.print(Text.assemble((exc.code, "red"), ": ", exc.message))
        return 1
    except KeyboardInterrupt:
        return 130
