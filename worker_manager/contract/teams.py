"""A team's board as data (SPEC §12): what an entry holds, who may be its sender, and what the
members look like when the board is read.

The board is a stream written only by the manager and the team's wrappers. Its entries carry
``sender`` (a worker id; ``producer`` for a post from outside), ``kind`` (``post`` or
``status``), ``content`` (the text, or the status word), ``note`` (a status's, may be empty) and
``timestamp``. The wrapper sets the sender of what its agent writes; the manager writes the
membership words (``joined``, ``suspended``, ``left``) in a member's name when its status changes,
and the posts of producers. Plain functions here, no Redis: the CLI, the client, the console and
the manager read a board the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

from worker_base.config import TEAM_NAME

# The entry kinds, the membership words, the bounds of a post and of a board are the wrapper's
# (it writes most of a board), re-exported here for the manager's side.
from worker_base.team_board import BOARD_MAXLEN as BOARD_MAXLEN
from worker_base.team_board import JOINED as JOINED
from worker_base.team_board import LEFT as LEFT
from worker_base.team_board import MAX_POST as MAX_POST
from worker_base.team_board import POST as POST
from worker_base.team_board import STATUS as STATUS
from worker_base.team_board import changed_paths
from worker_manager.contract.kinds import WorkerStatus

#: The sender of a post from outside (a producer, a person, the console).
PRODUCER = "producer"
#: The sender of what the manager itself says to a team (a conflict between members' files).
MANAGER = "manager"
#: What the manager says of a member whose worker is suspended (besides joined and left).
SUSPENDED = "suspended"


def check_team_name(value: object) -> str:
    """A team name, or ValueError saying what one is."""
    if not isinstance(value, str) or TEAM_NAME.fullmatch(value) is None:
        raise ValueError("must be 1 to 64 characters of [A-Za-z0-9._-]")
    return value


def membership_word(to: WorkerStatus) -> str | None:
    """What the board says of a member whose worker moved to ``to`` (None: nothing)."""
    if to is WorkerStatus.RUNNING:
        return JOINED
    if to is WorkerStatus.SUSPENDED:
        return SUSPENDED
    if not to.is_live:
        return LEFT
    return None


#: At most this many paths are named in a conflict's post.
CONFLICT_PATHS_SHOWN = 20


def conflict_sentence(worker_id: str, other: str, paths: list[str]) -> str:
    """What the board says of two workers whose changed files overlap."""
    shown = ", ".join(paths[:CONFLICT_PATHS_SHOWN])
    more = (
        f" and {len(paths) - CONFLICT_PATHS_SHOWN} more"
        if len(paths) > CONFLICT_PATHS_SHOWN
        else ""
    )
    return f"conflict: {worker_id} and {other} both changed {shown}{more}"


@dataclass(frozen=True, slots=True)
class BoardEntry:
    entry_id: str
    sender: str
    kind: str
    content: str
    note: str
    timestamp: str

    @classmethod
    def of(cls, entry_id: str, fields: Mapping[str, str]) -> BoardEntry:
        return cls(
            entry_id=entry_id,
            sender=fields.get("sender", ""),
            kind=fields.get("kind", ""),
            content=fields.get("content", ""),
            note=fields.get("note", ""),
            timestamp=fields.get("timestamp", ""),
        )

    def as_dict(self) -> dict[str, str]:
        return {
            "id": self.entry_id,
            "sender": self.sender,
            "kind": self.kind,
            "content": self.content,
            "note": self.note,
            "timestamp": self.timestamp,
        }

    def line(self) -> str:
        """One readable line (``worker-manager team NAME``)."""
        if self.kind == STATUS:
            note = f": {self.note}" if self.note else ""
            said = f"is {self.content}{note}"
        else:
            said = f"posted: {self.content}"
        return f"{self.entry_id}  {self.timestamp}  {self.sender} {said}"


def entry_fields(
    sender: str, kind: str, content: str, timestamp: str, note: str = ""
) -> dict[str, str]:
    """A board entry as it is appended."""
    fields = {"sender": sender, "kind": kind, "content": content, "timestamp": timestamp}
    if note:
        fields["note"] = note
    return fields


@dataclass(frozen=True, slots=True)
class Member:
    """One member as the board tells of it: its latest status word and note, and when it last
    wrote (or was written of)."""

    worker_id: str
    status: str
    note: str
    last_seen: str
    #: What its workspace changed, as the manager last saw it (``Keys.team_changes``).
    changed: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "worker_id": self.worker_id,
            "status": self.status,
            "note": self.note,
            "last_seen": self.last_seen,
            "changed": list(self.changed),
        }


def with_changes(found: list[Member], changes: Mapping[str, str]) -> list[Member]:
    """The members with their changed paths (the team's changes hash: worker -> JSON list, read
    as the wrapper reads it for ``wm-team who``)."""
    return [replace(m, changed=tuple(changed_paths(changes.get(m.worker_id)))) for m in found]


def members(entries: Iterable[BoardEntry]) -> list[Member]:
    """Each sender that is a worker, from the entries oldest first: the last status it had and
    the time of its last entry; in the order they first appeared."""
    seen: dict[str, Member] = {}
    for entry in entries:
        if entry.sender in (PRODUCER, MANAGER) or not entry.sender:
            continue
        known = seen.get(entry.sender)
        status, note = (known.status, known.note) if known else ("", "")
        if entry.kind == STATUS:
            status, note = entry.content, entry.note
        seen[entry.sender] = Member(entry.sender, status, note, entry.timestamp)
    return list(seen.values())
