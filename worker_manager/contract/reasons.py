"""Why a worker's status changed (SPEC §3 ``reason``): a closed set, each knowing who gives it.

A reason is written into a worker's record, its ``lifecycle`` entry, the status event on its
output and its evidence; orchestrators match on it. As free strings, nothing tied a reason to
the part of the service that gives it, and the evidence guessed from a table of prefixes: a
worker deleted for retention, or failed for its start timeout, was said to be ended by "manager".
Here every reason is a value of a closed set that knows its **source** (the part of the service
that gives it: the evidence's ``ended_by`` when the caller names no one more precise) and the
**status** it leads to, so no producer can invent one and every reader parses one back with the
same function (:func:`parse_reason`).

- :class:`Ended`: the fixed reasons a worker ends with (STOPPED or FAILED);
- :class:`Detailed`: the ending reasons that carry a detail, made by their constructors
  (:func:`exited_with_code`, :func:`build_failed`, :func:`start_failed`,
  :func:`workspace_failed`, :func:`service_failed`, :func:`never_ready`);
- :class:`Slept`: why a worker is SUSPENDED (``suspended``, ``idle``);
- :class:`Moved`: the other moves on ``lifecycle`` (``created``, ``ready``, ``resume``, ``input``).

``str(reason)`` is the wire string, exactly as SPEC §3 spells it. Plain values and functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from worker_manager.contract.kinds import WorkerStatus

#: A ``reason`` is cut here (a build log's tail must fit, and a record field is bounded).
MAX_REASON_CHARS = 4000


class Source(StrEnum):
    """The part of the service that gives a reason; the text is what the evidence's
    ``ended_by`` says when the caller names no one more precise."""

    DELETE = "delete"
    EVICTOR_IDLE = "evictor (idle timeout)"
    EVICTOR_LIFETIME = "evictor (lifetime)"
    WATCHER_BUDGET = "watcher (budget: the metered or reported cost)"
    WATCHER_HEARTBEATS = "watcher (heartbeats)"
    WATCHER_START_TIMEOUT = "watcher (start timeout: the wrapper never became ready)"
    OUTPUT_GUARD = "output guard"
    DISK_GUARD = "disk guard"
    RECONCILER = "reconciler"
    LOST_HOSTS = "lost-hosts judge"
    DOCKER_OOM = "docker events (OOM kill)"
    DOCKER_EXIT = "docker events (exit)"
    CREATE_BUILD = "create (build)"
    CREATE_START = "create (start)"
    CREATE_WORKSPACE = "create (workspace)"
    CREATE_SERVICES = "create (services)"
    RETENTION = "sleepers (suspended longer than the workspace retention)"
    SUSPEND = "suspend command"
    CREATE = "create command"
    WATCHER_READY = "watcher (first heartbeat)"
    RESUME = "resume command"
    SLEEPERS_INPUT = "sleepers (an input waits)"


class Ended(StrEnum):
    """The fixed reasons a worker ends with (SPEC §3, and ``retention`` of §8)."""

    DELETED = "deleted"
    IDLE = "idle"
    TTL = "ttl"
    BUDGET_EXCEEDED = "budget_exceeded"
    EXITED = "exited"
    OOM = "oom"
    HEARTBEAT_LOST = "heartbeat_lost"
    HEARTBEAT_INVALID = "heartbeat_invalid"
    OUTPUT_OVERFLOW = "output_overflow"
    CONTAINER_LOST = "container_lost"
    HOST_LOST = "host_lost"
    DISK_EXCEEDED = "disk_exceeded"
    RETENTION = "retention"

    @property
    def status(self) -> WorkerStatus:
        return _ENDED[self][0]

    @property
    def source(self) -> Source:
        return _ENDED[self][1]


_STOPPED, _FAILED = WorkerStatus.STOPPED, WorkerStatus.FAILED
_ENDED: dict[Ended, tuple[WorkerStatus, Source]] = {
    Ended.DELETED: (_STOPPED, Source.DELETE),
    Ended.IDLE: (_STOPPED, Source.EVICTOR_IDLE),
    Ended.TTL: (_STOPPED, Source.EVICTOR_LIFETIME),
    Ended.BUDGET_EXCEEDED: (_STOPPED, Source.WATCHER_BUDGET),
    Ended.EXITED: (_STOPPED, Source.DOCKER_EXIT),
    Ended.OOM: (_FAILED, Source.DOCKER_OOM),
    Ended.HEARTBEAT_LOST: (_FAILED, Source.WATCHER_HEARTBEATS),
    Ended.HEARTBEAT_INVALID: (_FAILED, Source.WATCHER_HEARTBEATS),
    Ended.OUTPUT_OVERFLOW: (_FAILED, Source.OUTPUT_GUARD),
    Ended.CONTAINER_LOST: (_FAILED, Source.RECONCILER),
    Ended.HOST_LOST: (_FAILED, Source.LOST_HOSTS),
    Ended.DISK_EXCEEDED: (_FAILED, Source.DISK_GUARD),
    Ended.RETENTION: (_STOPPED, Source.RETENTION),
}


class Detail(StrEnum):
    """The ending reasons that carry a detail; the value is the wire text before it."""

    EXIT_CODE = "exited with code "
    BUILD_FAILED = "build_failed: "
    START_FAILED = "start failed: "
    WORKSPACE_FAILED = "workspace_failed: "
    SERVICE_FAILED = "service_failed: "
    #: The start timeout: ``wrapper never became ready within 120s``.
    NEVER_READY = "wrapper never became ready within "

    @property
    def suffix(self) -> str:
        return "s" if self is Detail.NEVER_READY else ""

    @property
    def source(self) -> Source:
        return _DETAILED[self]

    def accepts(self, detail: str) -> bool:
        """Whether ``detail`` is one this kind gives (an exit code is an integer, a timeout a
        number of seconds; a message is any text)."""
        if self is Detail.EXIT_CODE:
            return _is_integer(detail)
        if self is Detail.NEVER_READY:
            return _is_seconds(detail)
        return True


_DETAILED: dict[Detail, Source] = {
    Detail.EXIT_CODE: Source.DOCKER_EXIT,
    Detail.BUILD_FAILED: Source.CREATE_BUILD,
    Detail.START_FAILED: Source.CREATE_START,
    Detail.WORKSPACE_FAILED: Source.CREATE_WORKSPACE,
    Detail.SERVICE_FAILED: Source.CREATE_SERVICES,
    Detail.NEVER_READY: Source.WATCHER_START_TIMEOUT,
}


@dataclass(frozen=True, slots=True)
class Detailed:
    """An ending reason with a detail; always FAILED. Made by the constructors below, which
    keep the whole reason within :data:`MAX_REASON_CHARS` (a build log's tail is cut)."""

    kind: Detail
    detail: str

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Detail):
            raise TypeError(f"not a kind of reason: {self.kind!r}")
        if not self.kind.accepts(self.detail):
            raise ValueError(f"{self.kind.value!r} does not take {self.detail!r}")
        room = MAX_REASON_CHARS - len(self.kind.value) - len(self.kind.suffix)
        if len(self.detail) > room:
            object.__setattr__(self, "detail", self.detail[:room])

    def __str__(self) -> str:
        return f"{self.kind.value}{self.detail}{self.kind.suffix}"

    @property
    def status(self) -> WorkerStatus:
        return WorkerStatus.FAILED

    @property
    def source(self) -> Source:
        return self.kind.source

    @property
    def exit_code(self) -> int | None:
        return int(self.detail) if self.kind is Detail.EXIT_CODE else None


def exited_with_code(code: int) -> Detailed:
    """``exited with code N``: the container ended by itself with a non-zero code."""
    return Detailed(Detail.EXIT_CODE, str(int(code)))


def build_failed(message: str) -> Detailed:
    """``build_failed: …``: the worker's image could not be built (the build log's tail)."""
    return Detailed(Detail.BUILD_FAILED, message)


def start_failed(message: str) -> Detailed:
    """``start failed: …``: its Redis user, grant or container could not be made."""
    return Detailed(Detail.START_FAILED, message)


def workspace_failed(message: str) -> Detailed:
    """``workspace_failed: …``: the checkout of its repository (git's words)."""
    return Detailed(Detail.WORKSPACE_FAILED, message)


def service_failed(message: str) -> Detailed:
    """``service_failed: …``: a service of its environment did not start (SPEC §9)."""
    return Detailed(Detail.SERVICE_FAILED, message)


def never_ready(seconds: float) -> Detailed:
    """``wrapper never became ready within Ns``: the start timeout."""
    return Detailed(Detail.NEVER_READY, f"{seconds:g}")


#: Why a worker is STOPPED or FAILED.
EndReason = Ended | Detailed


class Slept(StrEnum):
    """Why a worker is SUSPENDED (SPEC §8)."""

    SUSPENDED = "suspended"  # a ``suspend`` command
    IDLE = "idle"  # idle, with ``WM_IDLE_ACTION=suspend``

    @property
    def status(self) -> WorkerStatus:
        return WorkerStatus.SUSPENDED

    @property
    def source(self) -> Source:
        return Source.SUSPEND if self is Slept.SUSPENDED else Source.EVICTOR_IDLE


class Moved(StrEnum):
    """The moves of a worker that neither end nor suspend it (on ``lifecycle`` only: a live
    worker's record has no ``reason``)."""

    CREATED = "created"  # -> STARTING, written by the create's own script
    READY = "ready"  # STARTING -> RUNNING, its first heartbeat
    RESUME = "resume"  # SUSPENDED -> STARTING, a ``resume`` command
    INPUT = "input"  # SUSPENDED -> STARTING, an input waits for it

    @property
    def status(self) -> WorkerStatus:
        return WorkerStatus.RUNNING if self is Moved.READY else WorkerStatus.STARTING

    @property
    def source(self) -> Source:
        return _MOVED[self]


_MOVED: dict[Moved, Source] = {
    Moved.CREATED: Source.CREATE,
    Moved.READY: Source.WATCHER_READY,
    Moved.RESUME: Source.RESUME,
    Moved.INPUT: Source.SLEEPERS_INPUT,
}

#: Any reason the manager writes.
Reason = Ended | Detailed | Slept | Moved
_Parser = Callable[[str], Reason | None]


def is_reason(value: object) -> bool:
    """Whether ``value`` is one of the set (not a string that looks like one)."""
    return isinstance(value, Ended | Detailed | Slept | Moved)


def is_end_reason(value: object) -> bool:
    """Whether ``value`` is a reason a worker ends with (not a string that looks like one)."""
    return isinstance(value, Ended | Detailed)


def exit_reason(exit_code: int, oom: bool) -> EndReason:
    """A container's end: OOM-killed ``oom``, 0 ``exited``, else ``exited with code N``."""
    if oom:
        return Ended.OOM
    if exit_code == 0:
        return Ended.EXITED
    return exited_with_code(exit_code)


def parse_reason(text: str, status: WorkerStatus | str | None = None) -> Reason | None:
    """The reason a stored ``reason`` string is (a record's, a ``lifecycle`` entry's, an
    evidence's); None for one this manager does not give (a deployment's own, or garbage).

    ``status``: the status it came with, when known: ``idle`` is an end (STOPPED) or a suspend
    (SUSPENDED), and the families are tried in the order the status makes likely."""
    families = _families(str(status) if status is not None else "")
    for family in families:
        found = family(text)
        if found is not None:
            return found
    return None


def parse_end_reason(text: str) -> EndReason | None:
    """The ending reason ``text`` is (evidence, a STOPPED or FAILED record), or None."""
    return _ending(text)


def _families(status: str) -> list[_Parser]:
    if status == WorkerStatus.SUSPENDED:
        return [_slept]
    if status in (WorkerStatus.STARTING, WorkerStatus.RUNNING):
        return [_moved]
    if status in (WorkerStatus.STOPPED, WorkerStatus.FAILED):
        return [_ending]
    return [_ending, _slept, _moved]


def _ending(text: str) -> EndReason | None:
    if text in Ended._value2member_map_:
        return Ended(text)
    for kind in Detail:
        if text.startswith(kind.value) and text.endswith(kind.suffix):
            detail = text[len(kind.value) : len(text) - len(kind.suffix)]
            if kind.accepts(detail) and len(text) <= MAX_REASON_CHARS:
                return Detailed(kind, detail)
    return None


def _slept(text: str) -> Slept | None:
    return Slept(text) if text in Slept._value2member_map_ else None


def _moved(text: str) -> Moved | None:
    return Moved(text) if text in Moved._value2member_map_ else None


def _is_integer(text: str) -> bool:
    digits = text[1:] if text.startswith("-") else text
    return digits.isdigit() and digits.isascii() and str(int(text)) == text


def _is_seconds(text: str) -> bool:
    try:
        value = float(text)
    except ValueError:
        return False
    return value > 0 and f"{value:g}" == text
