"""What the CLI shows people: worker tables, the lifecycle, the live fleet, a worker's output.

Rules that hold everywhere: a worker id is never cut (it is what people copy into the next
command), text that came from a worker or a producer is printed as text (never as markup), and
times are shown as ages ("3m12s ago") next to the ISO time only where there is room.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Iterable, Sequence

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from worker_base.events import EventType
from worker_manager.client.api import Client, Event, LifecycleEvent, WorkerInfo
from worker_manager.core.clock import iso_from_unix, unix_or_none
from worker_manager.environments.catalogue import CatalogueEntry
from worker_manager.service.metrics import TenantUsage, tenant_usage

STATUS_STYLE = {"STARTING": "yellow", "RUNNING": "green", "STOPPED": "dim", "FAILED": "red"}
EVENT_STYLE: dict[str, str] = {
    EventType.ERROR: "red",
    EventType.DONE: "bold",
    EventType.STATUS: "cyan",
    EventType.RESULT: "magenta",
}


def age(iso: str, now: float | None = None) -> str:
    """``3m12s``: how long ago ``iso`` was (empty when unknown)."""
    moment = unix_or_none(iso)
    if moment is None:
        return ""
    seconds = max(0, int((now or time.time()) - moment))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86_400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86_400}d{seconds % 86_400 // 3600:02d}h"


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


def cost(info: WorkerInfo) -> str:
    return "" if info.cost_usd is None else f"${info.cost_usd:.4f}"


def select(
    workers: Iterable[WorkerInfo], statuses: list[str], selector: dict[str, str]
) -> list[WorkerInfo]:
    wanted = {s.upper() for s in statuses}
    return [
        w
        for w in workers
        if (not wanted or w.status in wanted)
        and all(w.metadata.get(k) == v for k, v in selector.items())
    ]


def agent_of(info: WorkerInfo) -> str:
    """``CLAUDE``, ``CLAUDE@node20`` (its environment), ``CLAUDE@sha256:1f2e3d4c5b6a`` (an ad
    hoc spec, its digest cut)."""
    environment = info.environment
    if environment.startswith("sha256:"):
        environment = environment[:19]
    return f"{info.agent_type}@{environment}" if environment else info.agent_type


def workers_table(workers: list[WorkerInfo], *, wide: bool = False) -> Table:
    """Full ids always; ``wide`` adds times, cost, manager, image and metadata."""
    now = time.time()
    table = Table(box=None, pad_edge=False, header_style="bold")
    table.add_column("WORKER ID", no_wrap=True, min_width=36, overflow="fold")
    table.add_column("STATUS", no_wrap=True)
    table.add_column("AGENT", no_wrap=True)
    table.add_column("AGE", no_wrap=True, justify="right")
    if wide:
        table.add_column("CREATED", no_wrap=True)
        table.add_column("IDLE", no_wrap=True, justify="right")
        table.add_column("COST", no_wrap=True, justify="right")
        table.add_column("MANAGER", no_wrap=True)
        table.add_column("METADATA", overflow="fold")
    table.add_column("REASON / PROGRESS", overflow="fold")
    for w in workers:
        row: list[Text | str] = [
            Text(w.worker_id),
            status_text(w.status),
            Text(agent_of(w)),
            age(w.created_at, now),
        ]
        if wide:
            row += [
                Text(w.created_at),
                age(w.last_activity_at, now) if w.is_live else "",
                cost(w),
                Text(w.manager_id),
                Text(" ".join(f"{k}={v}" for k, v in sorted(w.metadata.items()))),
            ]
        row.append(Text(w.progress if w.status == "STARTING" and w.progress else w.reason))
        table.add_row(*row)
    return table


def environments_table(entries: Sequence[CatalogueEntry], now: float | None = None) -> Table:
    """``worker-manager environments``: one row per image of each entry (a row saying "not
    built yet" for an entry without one)."""
    moment = time.time() if now is None else now
    table = Table(box=None, pad_edge=False, header_style="bold")
    for name in ("ENVIRONMENT", "BASE", "IMAGE", "SHAPE", "LAST USED"):
        table.add_column(name, no_wrap=name != "IMAGE", overflow="fold")
    for entry in entries:
        if not entry.images:
            table.add_row(Text(entry.name), Text(entry.base), Text("(not built yet)"), "", "")
        for image in entry.images:
            last = image.last_used
            ago = age(iso_from_unix(last), moment) + " ago" if last is not None else ""
            table.add_row(Text(entry.name), Text(entry.base), Text(image.tag), image.shape, ago)
    return table


def lifecycle_line(change: LifecycleEvent) -> Text:
    line = Text()
    line.append(change.timestamp or "", style="dim")
    line.append(" ")
    line.append(change.worker_id)
    line.append(" ")
    line.append(change.from_status or "(new)", style=STATUS_STYLE.get(change.from_status, "dim"))
    line.append(" -> ")
    line.append(change.to_status, style=STATUS_STYLE.get(change.to_status, ""))
    if change.reason:
        line.append(f"  {change.reason}", style="dim")
    return line


def event_line(event: Event) -> Text:
    line = Text()
    line.append(event.timestamp, style="dim")
    line.append(" ")
    line.append(f"{event.type:<11}", style=EVENT_STYLE.get(event.type, "bold"))
    line.append(" ")
    line.append(event.content)
    return line


class Fleet:
    """The fleet as ``top`` shows it: one full listing, then lifecycle changes as they come.

    A change updates the counts at once and re-reads that one worker; ages tick locally. Idle
    times and costs move without lifecycle events, so the whole list is read again now and then
    (``refresh_seconds``), one paged command, never one status per worker."""

    def __init__(
        self, client: Client, refresh_seconds: float = 15.0, tenants: Sequence[str] = ()
    ) -> None:
        """``tenants``: the tenants whose workers and day's spend the operator's ``top`` counts
        (SPEC §11), read with each full listing."""
        self._client = client
        self._refresh = refresh_seconds
        self._tenants = tenants
        self.workers: dict[str, WorkerInfo] = {}
        self.changes = 0
        self.tenant_rows: list[TenantUsage] = []

    async def load(self) -> None:
        self.workers = {w.worker_id: w for w in await self._client.list()}
        if self._tenants:
            client = self._client
            self.tenant_rows = await tenant_usage(client.redis, client.keys, self._tenants)

    async def follow(self) -> None:
        async for change in self._client.lifecycle():
            self.changes += 1
            with contextlib.suppress(Exception):
                info = await self._client.worker(change.worker_id).status()
                self.workers[info.worker_id] = info

    async def reload_now_and_then(self) -> None:
        while True:
            await asyncio.sleep(self._refresh)
            with contextlib.suppress(Exception):
                await self.load()

    def render(self) -> Group:
        counts = Counter(w.status for w in self.workers.values())
        header = Text()
        header.append("worker-manager top", style="bold")
        header.append(f"   {len(self.workers)} workers: ")
        for status in ("STARTING", "RUNNING", "STOPPED", "FAILED"):
            header.append(f"{status} {counts.get(status, 0)}  ", style=STATUS_STYLE[status])
        header.append("(Ctrl-C to quit)", style="dim")
        now = time.time()
        table = Table(box=None, pad_edge=False, header_style="bold")
        table.add_column("WORKER ID", no_wrap=True, min_width=36, overflow="fold")
        table.add_column("STATUS", no_wrap=True)
        table.add_column("AGENT", no_wrap=True)
        table.add_column("AGE", justify="right", no_wrap=True)
        table.add_column("IDLE", justify="right", no_wrap=True)
        table.add_column("COST", justify="right", no_wrap=True)
        table.add_column("REASON / PROGRESS", overflow="fold")
        live_first = sorted(
            self.workers.values(), key=lambda w: (not w.is_live, w.created_at), reverse=False
        )
        for w in live_first:
            table.add_row(
                Text(w.worker_id),
                status_text(w.status),
                Text(w.agent_type),
                age(w.created_at, now),
                age(w.last_activity_at, now) if w.is_live else "",
                cost(w),
                Text(w.progress if w.status == "STARTING" and w.progress else w.reason),
            )
        if not self.tenant_rows:
            return Group(header, table)
        tenants = Table(box=None, pad_edge=False, header_style="bold")
        for column in ("TENANT", "STARTING", "RUNNING", "SUSPENDED", "ENDED", "SPENT TODAY"):
            tenants.add_column(column, justify="left" if column == "TENANT" else "right")
        for row in self.tenant_rows:
            ended = row.counts.get("STOPPED", 0) + row.counts.get("FAILED", 0)
            tenants.add_row(
                Text(row.tenant),
                *(str(row.counts.get(s, 0)) for s in ("STARTING", "RUNNING", "SUSPENDED")),
                str(ended),
                f"${row.spent_today_usd:.2f}",
            )
        return Group(header, table, Text(""), tenants)


async def top(
    client: Client, console: Console, *, once: bool = False, tenants: Sequence[str] = ()
) -> None:
    fleet = Fleet(client, tenants=tenants)
    await fleet.load()
    if once:
        console.print(fleet.render())
        return
    tasks = [
        asyncio.ensure_future(fleet.follow()),
        asyncio.ensure_future(fleet.reload_now_and_then()),
    ]
    try:
        with Live(fleet.render(), console=console, refresh_per_second=2, screen=False) as live:
            while True:
                await asyncio.sleep(0.5)
                live.update(fleet.render())
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
