"""A create's ``environment`` resolved against this deployment (SPEC §9): a plain function.

A catalogue name becomes its entry's spec, an ad hoc spec stays itself; either way the base is
filled in (``WM_BASE_IMAGE`` when the spec names none) and must be one the operator allows
(``WM_BASE_IMAGE`` or ``WM_BASE_IMAGES``). What is refused (an unknown name, an ad hoc spec with
``WM_ENVIRONMENTS_ADHOC=off``, a base not allowed) is ``invalid_command`` naming it, before the
create is accepted: the dispatcher dead-letters it like any invalid command.

The result (:class:`~worker_manager.contract.environments.ResolvedEnvironment`) is saved with
the create, so the image a worker was accepted with does not change when the catalogue does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from worker_manager.contract.environments import EnvironmentSpec, ResolvedEnvironment
from worker_manager.core.errors import InvalidCommand
from worker_manager.settings import Settings

FIELD = "environment"


def resolve(
    requested: str | EnvironmentSpec | ResolvedEnvironment | None, settings: Settings
) -> ResolvedEnvironment | None:
    """The environment a create asked for, resolved; None when it asked for none.

    Raises :class:`InvalidCommand` (``field='environment'``) naming what is refused."""
    if requested is None or isinstance(requested, ResolvedEnvironment):
        return requested
    if isinstance(requested, str):
        spec = settings.environments.get(requested)
        if spec is None:
            known = ", ".join(sorted(settings.environments)[:20]) or "none"
            raise InvalidCommand(
                f"field 'environment': {requested!r} is not in this deployment's catalogue "
                f"(WM_ENVIRONMENTS: {known})",
                field=FIELD,
            )
        label = requested
    else:
        if settings.environments_adhoc == "off":
            raise InvalidCommand(
                "field 'environment': this deployment takes only catalogue names "
                "(WM_ENVIRONMENTS_ADHOC=off), not a spec",
                field=FIELD,
            )
        spec, label = requested, ""
    resolved = spec.with_base(settings.base_image)
    assert resolved.base is not None
    if resolved.base not in settings.allowed_bases:
        raise InvalidCommand(
            f"field 'environment': base {resolved.base!r} is not allowed here "
            "(WM_BASE_IMAGE or one of WM_BASE_IMAGES)",
            field=FIELD,
        )
    return ResolvedEnvironment(label=label or resolved.digest, spec=resolved)


def of_name(name: str | None, settings: Settings) -> ResolvedEnvironment | None:
    """A shape's ``@environment`` (``WM_PREBUILD``, ``WM_WARM_POOL``, ``build --environment``),
    resolved; the settings checked at start that it is in the catalogue."""
    return resolve(name, settings) if name is not None else None


@dataclass(frozen=True, slots=True)
class CatalogueImage:
    """One image built with a catalogue entry: its tag, the shape it serves, its last use."""

    tag: str
    shape: str
    last_used: float | None


@dataclass(frozen=True, slots=True)
class CatalogueEntry:
    """One entry of ``worker-manager environments``: its name, its base, its images."""

    name: str
    base: str
    images: tuple[CatalogueImage, ...]


def listing(
    settings: Settings, images: Mapping[str, tuple[str, float | None]]
) -> list[CatalogueEntry]:
    """The catalogue with the images built from each entry, newest use first.

    ``images``: hash → (the image record's canonical ``spec`` JSON, its last use from
    ``<prefix>:images``). An image belongs to an entry when its spec's environment is the
    entry's resolved spec (so an ad hoc spec equal to an entry is that entry's image too)."""
    by_environment: dict[str, list[CatalogueImage]] = {}
    for image_hash, (spec_json, last_used) in images.items():
        try:
            spec = json.loads(spec_json)
        except ValueError:
            continue
        environment = spec.get("environment") if isinstance(spec, dict) else None
        if not isinstance(environment, dict):
            continue
        key = json.dumps(environment, sort_keys=True, separators=(",", ":"))
        modules = [str(m) for m in spec.get("modules") or []]
        shape = "+".join([str(spec.get("agent_type", "?")), *modules])
        found = CatalogueImage(f"worker:{image_hash}", shape, last_used)
        by_environment.setdefault(key, []).append(found)
    entries: list[CatalogueEntry] = []
    for name in sorted(settings.environments):
        resolved = resolve(name, settings)
        assert resolved is not None
        built = by_environment.get(resolved.spec.canonical_json(), [])
        built.sort(key=lambda image: -(image.last_used or 0))
        entries.append(CatalogueEntry(name, resolved.spec.base or "", tuple(built)))
    return entries
