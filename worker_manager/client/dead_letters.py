"""Dead letters (``<prefix>:dead``): listed, and sent again once their cause is fixed.

A dead letter holds the command whole when it was within the command limits
(``dead_complete=true``, SPEC §1); :func:`replay_fields` takes the dead letter's own fields
(``dead_*``) off and says on which stream the command came. Sending it again is safe: a command
is idempotent by its ``request_id``, so a create replayed twice (or replayed after a producer
re-sent it) makes one worker; a dead-lettered command was never answered with a remembered
reply, so the replay is handled afresh.
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis

from worker_manager.contract.reply import DEAD_FIELD_PREFIX
from worker_manager.core.keys import Keys


class NotReplayable(ValueError):
    """The dead letter cannot be sent again as it is (cut, or not a command)."""


@dataclass(frozen=True, slots=True)
class DeadLetterEntry:
    entry_id: str
    fields: dict[str, str]

    @property
    def reason(self) -> str:
        return self.fields.get("dead_reason", "")

    @property
    def complete(self) -> bool:
        return self.fields.get("dead_complete") == "true"


def replay_fields(fields: dict[str, str], default_stream: str) -> tuple[str, dict[str, str]]:
    """The stream to send the command on and the command's own fields."""
    if fields.get("dead_complete") != "true":
        raise NotReplayable(
            "this dead letter holds a cut copy of its command (it was beyond the command "
            "limits, or written before dead letters kept commands whole): send it again from "
            "its producer"
        )
    command = {k: v for k, v in fields.items() if not k.startswith(DEAD_FIELD_PREFIX)}
    if not command.get("command"):
        raise NotReplayable("this dead letter holds no command (a reply kept as a dead letter)")
    return fields.get("dead_stream") or default_stream, command


async def newest(redis: Redis, keys: Keys, limit: int = 20) -> list[DeadLetterEntry]:
    entries = await redis.xrevrange(keys.dead, count=limit)
    return [DeadLetterEntry(entry_id, dict(fields)) for entry_id, fields in entries]


async def replay(redis: Redis, keys: Keys, entry_id: str) -> tuple[str, str]:
    """Send dead letter ``entry_id``'s command again: (the stream, the new entry's id)."""
    found = await redis.xrange(keys.dead, entry_id, entry_id)
    if not found:
        raise NotReplayable(f"no dead letter {entry_id} (it may have aged out)")
    stream, command = replay_fields(dict(found[0][1]), keys.commands)
    new_id: str = await redis.xadd(stream, command)  # type: ignore[arg-type,unused-ignore]
    return stream, new_id
