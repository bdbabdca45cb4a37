"""What a create needs, decided from its spec, the settings and its record: a plain function.

The provisioner carries a create out (image, repository, Redis user, grant, container) against
Redis and Docker; what it does at each step is decided here first, over data alone, the way the
ending path's rule is :func:`~worker_manager.workers.transitions.lifecycle.outcome_of`:

* **the image**: the create's shape (agent type and sorted modules) and its environment as it
  was resolved when the create was accepted (SPEC §9), found or built once;
* **the start**: hand a warm-pool container over when the create took one (the record's
  ``pool``), or start a container of its own;
* **the repository**: none to check out, a checkout already done (the record keeps its commit
  and mirror: a resume, or a create finished after a crash, never clones again), or a clone;
* **what is copied in before it starts**: the instructions, as the agent type's own file
  (``CLAUDE.md`` or ``AGENTS.md``), never baked into an image;
* **its services**: started in its network namespace after its container, ready before it is
  RUNNING (``services``);
* **containment**: whether the worker gets sockets at the host's egress service (and with them
  no network) and which destinations it is granted; whether it gets a Redis user of its own;
  whether the ``DOCKER`` module gets an Engine of its own beside it (``WM_DOCKER_MODULE=rootless``,
  the default) or the host's socket (``socket``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from worker_manager.contract.commands import CreateCommand
from worker_manager.contract.environments import ResolvedEnvironment
from worker_manager.contract.kinds import Module, Shape
from worker_manager.contract.record import WorkerRecord
from worker_manager.contract.services import ResolvedService
from worker_manager.settings import Settings
from worker_manager.workers.resources.containment import contained, docker_socket
from worker_manager.workspaces.checkout import CheckedOut


class RepositoryStep(StrEnum):
    #: The create names no repository: the workspace starts empty.
    NONE = "none"
    #: Checked out before (its commit is in the record): used as it is.
    DONE = "done"
    #: To be cloned from its mirror into the workspace.
    CLONE = "clone"


@dataclass(frozen=True, slots=True)
class CreatePlan:
    shape: Shape
    #: A warm-pool container was taken for this create: assign it rather than start one.
    hand_over: bool
    repository: RepositoryStep
    #: The workspace as it is when nothing is to be cloned (None with a clone to do).
    checked_out: CheckedOut | None = None
    #: Written into the container before it starts (file name in the workspace -> text).
    files: dict[str, str] = field(default_factory=dict)
    #: Sockets at the host's egress service (and no network), with this grant.
    contained: bool = False
    egress: tuple[str, ...] = ()
    #: A Redis ACL user of its own (``WM_WORKER_ACL``).
    own_redis_user: bool = True
    #: The host's Docker socket, mounted for the ``DOCKER`` module with
    #: ``WM_DOCKER_MODULE=socket`` (None: not mounted).
    docker_socket: str | None = None
    #: A Docker Engine of its own beside it (the ``DOCKER`` module, ``WM_DOCKER_MODULE=rootless``).
    docker_engine: bool = False
    #: The toolchain its image is built with (as saved: resolved); None: none.
    environment: ResolvedEnvironment | None = None
    #: Started in its network namespace, and ready, before it is RUNNING (as saved: resolved).
    services: tuple[ResolvedService, ...] = ()


def repository_of(
    command: CreateCommand, record: WorkerRecord
) -> tuple[RepositoryStep, CheckedOut | None]:
    """The repository step, and the workspace as it is when there is nothing to clone (the
    record keeps the commit and the mirror of a checkout once it is done)."""
    if command.repository is None:
        return RepositoryStep.NONE, CheckedOut(commit="", branch=None, mirror=None)
    if record.text("workspace_base"):
        done = CheckedOut(record.text("workspace_base"), None, record.text("mirror") or None)
        return RepositoryStep.DONE, done
    return RepositoryStep.CLONE, None


def plan_create(command: CreateCommand, settings: Settings, record: WorkerRecord) -> CreatePlan:
    """The plan of one create. ``command`` is the saved spec (its ``egress`` already the grant
    as granted: ``contract.create_spec``); ``record`` the worker's record as it is now."""
    step, checked_out = repository_of(command, record)
    granted = command.egress if command.egress is not None else settings.egress_default
    environment = command.environment
    if not isinstance(environment, ResolvedEnvironment):
        # Saved specs are resolved (``contract.create_spec``); anything else is a bug upstream.
        assert environment is None, "a saved create's environment is resolved"
    return CreatePlan(
        shape=Shape(
            command.agent_type,
            tuple(sorted(set(command.modules))),
            environment.name if environment is not None else None,
        ),
        hand_over=bool(record.pool),
        repository=step,
        checked_out=checked_out,
        files={command.agent_type.instructions_file: command.instructions}
        if command.instructions
        else {},
        contained=contained(settings),
        egress=tuple(granted),
        own_redis_user=settings.worker_acl,
        docker_socket=docker_socket(settings, command.modules),
        docker_engine=Module.DOCKER in command.modules and settings.docker_module == "rootless",
        environment=environment,
        services=tuple(s for s in command.services if isinstance(s, ResolvedService)),
    )
