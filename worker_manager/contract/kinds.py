"""The names the contract is spoken in (SPEC §1, §3): agent types, modules, shapes, statuses.

Plain enums and one dataclass, imported by every layer; they import nothing of ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

#: An environment's name in the catalogue (``contract.environments`` holds the rest of §9).
ENVIRONMENT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


class AgentType(StrEnum):
    CLAUDE = "CLAUDE"
    CODEX = "CODEX"
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
    """What an image is built for: an agent type, its sorted modules and optionally an
    environment of the catalogue (``CLAUDE+GIT``, ``CLAUDE+GIT@node20``)."""

    agent_type: AgentType
    modules: tuple[Module, ...] = ()
    #: A catalogue name (``WM_ENVIRONMENTS``, SPEC §9); None: no environment.
    environment: str | None = None

    @classmethod
    def parse(cls, text: str) -> Shape:
        """``CLAUDE``, ``CUSTOM+CURL+GIT`` (modules in any order), ``CLAUDE+GIT@node20``;
        ValueError naming the part."""
        kinds, at, environment = text.partition("@")
        if at and not ENVIRONMENT_NAME.fullmatch(environment):
            raise ValueError(
                f"shape {text!r}: {environment!r} is not an environment name "
                "(1 to 64 of [A-Za-z0-9._-])"
            )
        head, *rest = [part.strip().upper() for part in kinds.split("+")]
        if head not in AgentType.__members__:
            raise ValueError(f"shape {text!r}: {head!r} is not one of {', '.join(AgentType)}")
        for name in rest:
            if name not in Module.__members__:
                raise ValueError(f"shape {text!r}: {name!r} is not one of {', '.join(Module)}")
        modules = tuple(sorted({Module(name) for name in rest}))
        return cls(AgentType(head), modules, environment if at else None)

    def __str__(self) -> str:
        kinds = "+".join([self.agent_type.value, *(m.value for m in self.modules)])
        return f"{kinds}@{self.environment}" if self.environment else kinds


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
