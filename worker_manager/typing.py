"""The extension points between components, as small Protocols (the model is ``arq.typing``).

A component asks for the narrowest thing it uses, so the wiring in
:mod:`worker_manager.service.manager` is the only place that knows every concrete class, and
tests can hand a component a stand-in without building the rest of the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["BuildNetwork", "BuildRoute", "CommandObserver", "HealthSource", "Load"]


@dataclass(frozen=True, slots=True)
class Load:
    """What the service is doing right now, for ``/readyz`` and ``/metrics``."""

    commands_in_flight: int
    creates_in_progress: int
    draining: bool
    #: Ready warm-pool workers per shape.
    pool_ready: Mapping[str, int] = field(default_factory=dict)
    #: The tenants served (SPEC §11), whose workers and spend ``/metrics`` counts.
    tenants: tuple[str, ...] = ()


class HealthSource(Protocol):
    """What the HTTP server may ask the service (and nothing else): the probes' answers."""

    def intake(self) -> str:
        """``ok`` while commands are taken; otherwise why not (``starting``, ``draining: …``)."""
        ...

    def loop_problems(self) -> dict[str, str]:
        """Background loops that keep failing, by name, with why."""
        ...

    def ping_docker(self) -> object:
        """Ping the Docker Engine (blocking; the server runs it in a thread)."""
        ...

    def load(self) -> Load: ...

    async def extra_metrics(self) -> str:
        """Prometheus text of this host's other processes (the egress service's ``wm_``
        families), appended to ``/metrics``; empty when there is none."""
        ...


class CommandObserver(Protocol):
    """Told of every handled command: its name, its result and how long it took."""

    def __call__(self, command: str, result: str, seconds: float) -> None: ...


@dataclass(frozen=True, slots=True)
class BuildRoute:
    """How one image build reaches the network: the ``docker build --network`` value and the
    build arguments that name its proxy (Docker's predefined proxy arguments: in no layer and
    no history)."""

    network_mode: str
    build_args: Mapping[str, str] = field(default_factory=dict)


class BuildNetwork(Protocol):
    """The network of the builds that install packages (``environments.build_network``): the
    image builder asks for a route and gives it back when the build is over, failed or
    cancelled. ``images`` knows only this, not the egress service behind it."""

    def route(self, image_hash: str, base_image: str) -> AbstractAsyncContextManager[BuildRoute]:
        """A route for the build of ``image_hash`` (FROM ``base_image``), open until the
        context ends."""
        ...
