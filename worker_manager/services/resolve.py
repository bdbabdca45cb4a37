"""A create's services resolved against this deployment (SPEC §9): a plain function.

A service's ``image`` is an image of the operator's ``WM_SERVICE_IMAGES`` (used as it is), an
environment of the catalogue, or an environment spec (built like any environment, once, whoever
asks, and refused where ``WM_ENVIRONMENTS_ADHOC=off``). Anything else is ``invalid_command``
naming the service and the image. The result is what the create is saved with.
"""

from __future__ import annotations

from collections.abc import Sequence

from worker_manager.contract.environments import ResolvedEnvironment
from worker_manager.contract.kinds import Module
from worker_manager.contract.services import ResolvedService, ServiceSpec
from worker_manager.core.errors import InvalidCommand
from worker_manager.environments import catalogue
from worker_manager.services.plan import ENGINE, problem_of
from worker_manager.settings import Settings

FIELD = "services"


def resolve(
    services: Sequence[ServiceSpec | ResolvedService],
    settings: Settings,
    modules: Sequence[Module] = (),
) -> tuple[ResolvedService, ...]:
    """Each service's image judged and resolved; :class:`InvalidCommand` (``field='services'``)
    naming the first one refused. With the ``DOCKER`` module's own engine, ``docker`` is its
    name among the services: no other may take it."""
    engine = Module.DOCKER in modules and settings.docker_module == "rootless"
    for service in services:
        if engine and service.name == ENGINE:
            raise InvalidCommand(
                f"field 'services': service {ENGINE!r}: the name is the DOCKER module's own "
                "engine's; choose another",
                field=FIELD,
            )
    resolved = tuple(_one(service, settings) for service in services)
    for service in resolved:
        problem = problem_of(service, settings.container_runtime)
        if problem is not None:
            raise InvalidCommand(
                f"field 'services': service {service.name!r}: {problem}", field=FIELD
            )
    return resolved


def _one(service: ServiceSpec | ResolvedService, settings: Settings) -> ResolvedService:
    if isinstance(service, ResolvedService):
        return service
    image = service.image
    if isinstance(image, str) and image in settings.service_images:
        return _resolved(service, image=image)
    if isinstance(image, str) and image not in settings.environments:
        allowed = ", ".join(settings.service_images[:10]) or "none"
        raise InvalidCommand(
            f"field 'services': service {service.name!r}: image {image[:80]!r} is neither in "
            f"this deployment's WM_SERVICE_IMAGES ({allowed}) nor an environment of its "
            "catalogue (WM_ENVIRONMENTS)",
            field=FIELD,
        )
    try:
        environment = catalogue.resolve(image, settings)
    except InvalidCommand as exc:
        detail = exc.message.removeprefix("field 'environment': ")
        raise InvalidCommand(
            f"field 'services': service {service.name!r}: image: {detail}", field=FIELD
        ) from None
    return _resolved(service, environment=environment)


def _resolved(
    service: ServiceSpec,
    *,
    image: str | None = None,
    environment: ResolvedEnvironment | None = None,
) -> ResolvedService:
    return ResolvedService(
        name=service.name,
        image=image,
        environment=environment,
        command=service.command,
        env=service.env,
        port=service.port,
    )
