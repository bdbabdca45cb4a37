"""An audit entry (SPEC §11): what ``<prefix>:audit`` keeps of a command or a console action.

Only these fields, each cut to a bound: never a prompt, an ``env``, a secret or a grant's
password, whatever the command carried. One plain function, used by the command path
(``commands.audit``) and the console alike.
"""

from __future__ import annotations

from collections.abc import Mapping

from worker_manager.core.clock import iso_now

#: Each field of an entry is cut to this many characters (they are ids and names).
FIELD_CHARS = 128


def audit_entry(
    fields: Mapping[str, str], outcome: str, *, sender: str = "", tenant: str = ""
) -> dict[str, str]:
    """What is kept of one command: a plain function, so nothing else can slip in."""
    return {
        "time": iso_now(),
        "tenant": tenant[:FIELD_CHARS],
        "command": str(fields.get("command", ""))[:FIELD_CHARS],
        "request_id": str(fields.get("request_id", ""))[:FIELD_CHARS],
        "worker_id": str(fields.get("worker_id", ""))[:FIELD_CHARS],
        "outcome": outcome[:FIELD_CHARS],
        "sender": sender[:FIELD_CHARS],
    }
