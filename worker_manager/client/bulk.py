"""Deleting many workers at once, guarded: the caller must repeat the exact count it is about to
delete, so a typo in a selector (or a forgotten one) cannot wipe a fleet.

Only the contract is used: ``list`` to find the live workers, one ``delete`` per worker.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from worker_manager.client.requests import CommandClient
from worker_manager.contract.kinds import LIVE_STATUSES
from worker_manager.contract.reply import Reply


class SelectorError(ValueError):
    pass


def parse_selector(items: list[str]) -> dict[str, str]:
    """``["team=a", "env=ci"]`` → ``{"team": "a", "env": "ci"}`` (all must match)."""
    selector: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SelectorError(f"--selector wants KEY=VALUE, got {item!r}")
        selector[key] = value
    return selector


def matching(workers: list[dict[str, Any]], selector: dict[str, str]) -> list[dict[str, Any]]:
    """Live workers whose metadata has every pair of ``selector`` (all live ones if empty)."""
    chosen = []
    for worker in workers:
        if worker.get("status") not in LIVE_STATUSES:
            continue
        metadata = worker.get("metadata") or {}
        if all(metadata.get(key) == value for key, value in selector.items()):
            chosen.append(worker)
    return chosen


@dataclass(frozen=True, slots=True)
class Outcome:
    worker_id: str
    reply: Reply | None
    error: str = ""


async def delete_each(
    client: CommandClient, worker_ids: list[str], *, timeout: float, concurrency: int = 16
) -> list[Outcome]:
    slots = asyncio.Semaphore(concurrency)

    async def one(worker_id: str) -> Outcome:
        async with slots:
            try:
                reply = await client.request("delete", timeout=timeout, worker_id=worker_id)
            except TimeoutError as exc:
                return Outcome(worker_id, None, str(exc))
            return Outcome(worker_id, reply)

    return list(await asyncio.gather(*(one(worker_id) for worker_id in worker_ids)))
