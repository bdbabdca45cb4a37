"""A create as the manager keeps it: validated once where it enters, loaded back as it was saved.

A create is validated where it enters
(:class:`~worker_manager.contract.commands.CreateCommand`, against this deployment's limits,
repository sources and reply prefix). What the manager needs of it afterwards (to provision it,
to start it again on resume, to finish it after a crash, perhaps on another manager) is saved
once, as ``<prefix>:<id>:spec``, by :func:`spec_of`: the command as granted (the egress grant
resolved, so every manager starts it with the grant the record shows; its ``environment``
and its services' images resolved against the catalogue, so a catalogue changed since never
changes them) without
its ``prompt`` (which waits in its own key for the first heartbeat).

Loading it back (:func:`load_spec`) does not validate it again. The validators judge a command
against *today's* settings: a limit lowered since, a repository source removed, another
manager's reply prefix or key prefix would make an accepted worker fail at its resume with a
``ValidationError`` about a command nobody sent just now. And nothing there is a producer's
bytes: the key is written by the manager alone (neither a worker's nor a registered producer's
ACL user may write it), from a command it validated. So the loader only rebuilds the types the
JSON flattened (the agent type, the modules, the repository) with ``model_construct``, the way
a record is read once at the Redis boundary and trusted from there.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker_manager.contract.commands import CreateCommand
from worker_manager.contract.environments import ResolvedEnvironment
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.contract.services import ResolvedService
from worker_manager.contract.workspace import Repository


def spec_of(
    command: CreateCommand,
    egress: Sequence[str],
    environment: ResolvedEnvironment | None = None,
    services: Sequence[ResolvedService] = (),
) -> dict[str, Any]:
    """What is saved of a validated create: JSON-ready, the grant as granted, the environment
    and the services' images as resolved (``environments.catalogue``, ``services.resolve``), no
    prompt."""
    spec = command.model_dump(mode="json", exclude={"prompt", "environment", "services"})
    spec["egress"] = list(egress)
    spec["environment"] = environment.model_dump(mode="json") if environment else None
    spec["services"] = [service.model_dump(mode="json") for service in services]
    return spec


def load_spec(spec: Mapping[str, Any]) -> CreateCommand:
    """A saved create, typed again without being judged again (see the module's docstring).

    Fields a newer manager saved and this one does not know are ignored, and fields an older
    one did not save take their defaults: a spec outlives the manager that wrote it.
    """
    fields = {name: value for name, value in spec.items() if name in CreateCommand.model_fields}
    fields["agent_type"] = AgentType(fields["agent_type"])
    fields["modules"] = [Module(name) for name in fields.get("modules") or ()]
    fields["prompt"] = None
    environment = fields.get("environment")
    fields["environment"] = (
        ResolvedEnvironment.from_saved(environment) if isinstance(environment, Mapping) else None
    )
    services = fields.get("services")
    fields["services"] = tuple(
        ResolvedService.from_saved(service)
        for service in (services if isinstance(services, list) else ())
        if isinstance(service, Mapping)
    )
    repository = fields.get("repository")
    if isinstance(repository, Mapping):
        known = {k: v for k, v in repository.items() if k in Repository.model_fields}
        fields["repository"] = Repository.model_construct(**known)
    return CreateCommand.model_construct(**fields)
