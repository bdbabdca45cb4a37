"""The names the contract is spoken in (SPEC §1, §3): agent types, modules, shapes, statuses.

Plain enums and one dataclass, imported by every layer; they import nothing of ours.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AgentType(StrEnum):
    CLAUDE = "CLAUDE"
    FACTORY = "FACTORY"
    CUSTOM = "CUSTOM"

    @property
    def instructions_file(self) -> str:
        return "CLAUDE.md" if self is AgentType.CLAUDE else "AGENTS.md"


class Module(StrEnum):
    GIT = "GIT"
    GITHUB_CLI = "GITHUB_CLI"
    COPIER = "COPIER"
    CURL = "CURL"
    DOCKER = "DOCKER"


@dataclass(frozen=True, slots=True)
class Shape:
    """What an image is built for: an agent type and its sorted modules (``CLAUDE+GIT``)."""

    agent_type: AgentType
    modules: tuple[Module, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Shape:
        """``CLAUDE``, ``CUSTOM+CURL+GIT`` (modules in any order); ValueError naming the part."""
        head, *rest = [part.strip().upper() for part in text.split("+")]
        if head not in AgentType.__members__:
            raise ValueError(f"shape {text!r}: {head!r} is not one of {', '.join(AgentType)}")
        for name in rest:
            if name not in Module.__members__:
                raise ValueError(f"shape {text!r}: {name!r} is not one of {', '.join(Module)}")
        return cls(AgentType(head), tuple(sorted({Module(name) for name in rest})))

    def __str__(self) -> str:
        return "+".join([self.agent_type.value, *(m.value for m in self.modules)])


class WorkerStatus(StrEnum):
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    FAILED = "FAILED"
    #: Container gone, workspace and agent session kept (SPEC §8): not live, not ended.
    SUSPENDED = "SUSPENDED"

    @property
    def is_live(self) -> bool:
        """STARTING or RUNNING: counted against capacity, watched, and ended only once."""
        return self in LIVE_STATUSES


#: The statuses a worker can be ended from; the order is the one transitions are written in.
LIVE_STATUSES = (WorkerStatus.STARTING, WorkerStatus.RUNNING)
#: A delete also ends a suspended worker (its volumes go with it).
ENDABLE_STATUSES = (*LIVE_STATUSES, WorkerStatus.SUSPENDED)
