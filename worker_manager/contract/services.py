"""A create's ``services`` (SPEC §1, §9): what is asked for, its bounds, and what is saved.

``services`` is a JSON list of ``{"name", "image", "command", "env"}`` (and, ours, an optional
``port``: where the service answers when it is ready). Each runs in a container of its own in the
worker's network namespace, so every part is checked here, where it enters:

* **name**: ``[a-z0-9][a-z0-9-]{0,30}``, unique in the list: it names the service's container and
  volumes (``<worker>-svc-<name>``) and its entry in the record's ``services``;
* **image**: an image of the operator's ``WM_SERVICE_IMAGES``, an environment's catalogue name, or
  an environment spec itself (so ``{"apt": ["redis-server"]}`` is a service image too); which of
  them it is, and whether it is allowed here, is judged against the deployment
  (``worker_manager.services.resolve``), never here;
* **command**: an argv (strings, bounded, no NUL), run instead of the image's own command;
* **env**: the same names and refusals as a create's ``env`` (:mod:`contract.env`): never a
  secret, never the proxy variables (a service gets the worker's proxy, not a route of its own);
* **port**: 1-65535; without it, the image's first declared TCP port (``EXPOSE``), and without
  that, "ready" means its process still lives a moment after it started.

:class:`ResolvedService` is what a create is saved with: the image resolved (a tag of the
operator's list, or an environment resolved against the catalogue), so a catalogue or a list
changed since never changes what an accepted worker starts.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from worker_manager.contract.env import check_env
from worker_manager.contract.environments import (
    IMAGE_NAME,
    EnvironmentSpec,
    ResolvedEnvironment,
    parse_environment,
)

__all__ = [
    "MAX_SERVICES",
    "SERVICE_NAME",
    "ResolvedService",
    "ServiceSpec",
    "parse_services",
]

SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,30}$")
MAX_SERVICES = 8
MAX_ARGS = 64
MAX_ARG_CHARS = 4096
#: The whole list, as JSON text.
MAX_SERVICES_BYTES = 256 * 1024


class ServiceSpec(BaseModel):
    """One service as a create asks for it (its image not yet judged against the deployment)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    #: An image name, an environment's catalogue name, or an environment spec.
    image: str | EnvironmentSpec
    command: tuple[str, ...] | None = None
    env: dict[str, str] = {}
    port: int | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not SERVICE_NAME.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a service name ([a-z0-9][a-z0-9-]{{0,30}})")
        return value

    @field_validator("image", mode="before")
    @classmethod
    def _image(cls, value: Any) -> str | EnvironmentSpec:
        if isinstance(value, Mapping):
            return parse_environment(dict(value)) or EnvironmentSpec()
        if not isinstance(value, str) or not value.strip():
            raise ValueError("an image name, an environment's name or an environment spec")
        text = value.strip()
        if text.startswith("{"):
            spec = parse_environment(text)
            assert isinstance(spec, EnvironmentSpec)
            return spec
        if not IMAGE_NAME.fullmatch(text):
            raise ValueError(f"{text[:80]!r} is not an image or environment name")
        return text

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, value: Any) -> tuple[str, ...] | None:
        if value is None:
            return None
        if not isinstance(value, list | tuple) or not value:
            raise ValueError("a command is a non-empty JSON list of strings (an argv)")
        if len(value) > MAX_ARGS:
            raise ValueError(f"a command has at most {MAX_ARGS} arguments")
        for i, arg in enumerate(value):
            if not isinstance(arg, str):
                raise ValueError(f"argument {i} is not a string")
            if len(arg) > MAX_ARG_CHARS or "\x00" in arg:
                raise ValueError(f"argument {i}: at most {MAX_ARG_CHARS} characters, no NUL")
        return tuple(value)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> dict[str, str]:
        if value is None:
            return {}
        if not isinstance(value, Mapping):
            raise ValueError("env is an object of variable name to value")
        return check_env(value)

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
            raise ValueError("a port is an integer from 1 to 65535")
        return value


class ResolvedService(BaseModel):
    """A service as it is saved with its create: the image resolved against the deployment.

    Exactly one of ``image`` (an image of ``WM_SERVICE_IMAGES``, used as it is) and
    ``environment`` (built as any environment is, once, whoever asks) is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    image: str | None = None
    environment: ResolvedEnvironment | None = None
    command: tuple[str, ...] | None = None
    env: dict[str, str] = {}
    port: int | None = None

    @property
    def label(self) -> str:
        """What it runs, for people: the image, or the environment's name (or digest)."""
        if self.environment is not None:
            return self.environment.label
        return self.image or ""

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> ResolvedService:
        environment = data.get("environment")
        command = data.get("command")
        env = data.get("env")
        port = data.get("port")
        return cls.model_construct(
            name=str(data.get("name") or ""),
            image=str(data["image"]) if data.get("image") else None,
            environment=ResolvedEnvironment.from_saved(environment)
            if isinstance(environment, Mapping)
            else None,
            command=tuple(str(a) for a in command) if isinstance(command, list) else None,
            env={str(k): str(v) for k, v in env.items()} if isinstance(env, Mapping) else {},
            port=int(port) if isinstance(port, int) else None,
        )


def parse_services(value: Any) -> tuple[ServiceSpec, ...]:
    """A create's ``services`` (a JSON list or its text); ValueError naming what is wrong."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        if len(value.encode()) > MAX_SERVICES_BYTES:
            raise ValueError(f"is at most {MAX_SERVICES_BYTES} bytes")
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be a JSON list; {exc.msg} at position {exc.pos}") from None
        except RecursionError:
            raise ValueError("nests too deeply to be read") from None
    if not isinstance(value, list | tuple):
        raise ValueError("must be a JSON list of {name, image, command, env}")
    if len(value) > MAX_SERVICES:
        raise ValueError(f"has {len(value)} services; at most {MAX_SERVICES}")
    services: list[ServiceSpec] = []
    for i, item in enumerate(value):
        if isinstance(item, ServiceSpec | ResolvedService):
            services.append(item)  # type: ignore[arg-type]
            continue
        if not isinstance(item, Mapping):
            raise ValueError(f"entry {i} is not an object of name, image, command, env")
        try:
            services.append(ServiceSpec.model_validate(dict(item)))
        except ValidationError as exc:
            error = exc.errors(include_url=False)[0]
            part = ".".join(str(p) for p in error["loc"]) or "service"
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "is not part of a service (name, image, command, env, port)"
            elif error["type"] == "missing":
                message = "is required"
            name = item.get("name") if isinstance(item.get("name"), str) else None
            which = f"service {name!r}" if name else f"entry {i}"
            raise ValueError(f"{which}: {part}: {message}") from None
    names = [s.name for s in services]
    for name in names:
        if names.count(name) > 1:
            raise ValueError(f"service name {name!r} is used twice")
    return tuple(services)
