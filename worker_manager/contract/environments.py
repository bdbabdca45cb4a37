"""A worker's toolchain (SPEC §1 ``environment``, §9): the spec, its bounds, its canonical form.

A create's ``environment`` is the name of an entry in the operator's catalogue
(``WM_ENVIRONMENTS``) or a spec itself: ``base`` (an image), ``apt`` (Debian packages),
``pip`` (requirement specifiers), ``run`` (shell lines run as root at build time) and ``env``
(variables baked into the image). A spec becomes Dockerfile steps
(``worker_manager.environments.recipe``) that run with a network, so every part is validated
here, where it enters, as strictly as its grammar allows:

* **apt**: Debian's own grammar for a package name (``[a-z0-9][a-z0-9+.-]+``) and, after ``=``,
  for a version (``[epoch:]upstream[-revision]``): nothing that apt would read as an option, a
  file or a release;
* **pip**: a requirement specifier as ``packaging`` reads it (a name, extras, version
  specifiers, an environment marker) and nothing else: no URL (``name @ url``), no path, no
  option (``-e``, ``--index-url``…), which could fetch code from anywhere;
* **run**: lines of printable text (no newline or control character: a line cannot end a
  Dockerfile step or start another), each bounded, their number bounded; run in order;
* **env**: the same names and refusals as a create's ``env`` (:mod:`contract.env`), values
  without control characters.

The canonical form (:meth:`EnvironmentSpec.canonical`) sorts and de-duplicates ``apt`` and
``pip`` (their order does not change what is installed) and keeps ``run`` in order (it does);
its SHA-256 (:attr:`EnvironmentSpec.digest`, ``sha256:<hex>``) names an ad hoc spec in the
record, and the same canonical form is part of the image's hash (SPEC §5): the same spec is one
image, whoever asks for it.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from worker_manager.contract.env import check_env
from worker_manager.contract.kinds import ENVIRONMENT_NAME

__all__ = ["ENVIRONMENT_NAME", "EnvironmentSpec", "ResolvedEnvironment", "parse_environment"]

#: Debian policy §5.6.1 (package names) and §5.6.12 (versions).
APT_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
APT_VERSION = re.compile(r"^(?:[0-9]+:)?[0-9][A-Za-z0-9.+~-]*(?<!-)$")
#: An image reference as Docker reads one: [registry[:port]/]path[:tag][@sha256:digest].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_NAME = re.compile(
    r"^(?:(?:localhost|[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)(?::[0-9]{1,5})?/"
    r"|[A-Za-z0-9-]+:[0-9]{1,5}/)?"
    rf"{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)

MAX_BASE_CHARS = 255
MAX_APT = 128
MAX_APT_CHARS = 128
MAX_PIP = 128
MAX_PIP_CHARS = 256
MAX_RUN = 32
MAX_RUN_CHARS = 4096
#: The whole spec, as canonical JSON.
MAX_SPEC_BYTES = 64 * 1024
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")  # a tab is text; a newline is not


class EnvironmentSpec(BaseModel):
    """One environment: what is installed and set in a worker's image (SPEC §9).

    Its lists are canonical once validated (``apt`` and ``pip`` sorted and de-duplicated,
    ``run`` in order), so two specs that install the same thing compare, dump and hash equal.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: The image it is built FROM; None: the deployment's ``WM_BASE_IMAGE``.
    base: str | None = None
    apt: tuple[str, ...] = ()
    pip: tuple[str, ...] = ()
    run: tuple[str, ...] = ()
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("base")
    @classmethod
    def _base(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if len(value) > MAX_BASE_CHARS or not IMAGE_NAME.fullmatch(value):
            raise ValueError(
                f"{value[:80]!r} is not an image name such as debian:bookworm or "
                "registry.example:5000/team/node:20"
            )
        return value

    @field_validator("apt", mode="before")
    @classmethod
    def _apt(cls, value: Any) -> tuple[str, ...]:
        items = _strings(value, MAX_APT, MAX_APT_CHARS, "Debian package names")
        for item in items:
            name, has_version, version = item.partition("=")
            if not APT_NAME.fullmatch(name):
                raise ValueError(
                    f"{item[:80]!r} is not a Debian package name ([a-z0-9][a-z0-9+.-]+, "
                    "optionally =version)"
                )
            if has_version and not APT_VERSION.fullmatch(version):
                raise ValueError(f"{item[:80]!r}: {version[:40]!r} is not a Debian version")
        return tuple(sorted(set(items)))

    @field_validator("pip", mode="before")
    @classmethod
    def _pip(cls, value: Any) -> tuple[str, ...]:
        items = _strings(value, MAX_PIP, MAX_PIP_CHARS, "requirement specifiers")
        return tuple(sorted({requirement(item) for item in items}))

    @field_validator("run", mode="before")
    @classmethod
    def _run(cls, value: Any) -> tuple[str, ...]:
        items = _strings(value, MAX_RUN, MAX_RUN_CHARS, "shell lines")
        for i, line in enumerate(items):
            if not line.strip():
                raise ValueError(f"line {i} is empty")
        return tuple(items)

    @field_validator("env", mode="before")
    @classmethod
    def _env(cls, value: Any) -> dict[str, str]:
        if not isinstance(value, Mapping):
            raise ValueError("must be an object of variable name to value")
        checked = check_env(value)
        for name, item in checked.items():
            if _CONTROL.search(item):
                raise ValueError(f"variable {name!r}: a baked value has no control character")
        return checked

    def __hash__(self) -> int:  # frozen, but ``env`` is a dict: hashed by its canonical form
        return hash(self.canonical_json())

    def canonical(self) -> dict[str, Any]:
        """JSON-ready and canonical: what the image's hash covers."""
        return {
            "base": self.base,
            "apt": list(self.apt),
            "pip": list(self.pip),
            "run": list(self.run),
            "env": dict(sorted(self.env.items())),
        }

    def canonical_json(self) -> str:
        return json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of the canonical form: an ad hoc spec's name in the record."""
        return "sha256:" + hashlib.sha256(self.canonical_json().encode()).hexdigest()

    def with_base(self, base: str) -> EnvironmentSpec:
        return self if self.base is not None else self.model_copy(update={"base": base})

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> EnvironmentSpec:
        """A spec the manager saved itself (``contract.create_spec``), typed without being
        judged again: the bounds of today must not fail a worker accepted yesterday."""
        env = data.get("env")
        return cls.model_construct(
            base=data.get("base"),
            apt=tuple(str(x) for x in data.get("apt") or ()),
            pip=tuple(str(x) for x in data.get("pip") or ()),
            run=tuple(str(x) for x in data.get("run") or ()),
            env={str(k): str(v) for k, v in env.items()} if isinstance(env, Mapping) else {},
        )


class ResolvedEnvironment(BaseModel):
    """A create's environment once resolved against the catalogue: what the record names it
    (``label``: the catalogue name, or ``sha256:<hex>`` of an ad hoc spec) and the whole spec,
    its ``base`` filled in. Saved with the create, so a catalogue changed since never changes
    the image of a worker that was accepted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: str
    spec: EnvironmentSpec

    @property
    def name(self) -> str | None:
        """The catalogue's name for it; None for an ad hoc spec (its label is a digest)."""
        return None if self.label.startswith("sha256:") else self.label

    @classmethod
    def from_saved(cls, data: Mapping[str, Any]) -> ResolvedEnvironment:
        spec = data.get("spec")
        return cls.model_construct(
            label=str(data.get("label") or ""),
            spec=EnvironmentSpec.from_saved(spec if isinstance(spec, Mapping) else {}),
        )


def requirement(text: str) -> str:
    """A pip requirement specifier, canonical (``packaging``'s own spelling); ValueError for
    anything but a name with extras, versions and a marker."""
    if text.lstrip().startswith("-"):
        raise ValueError(f"{text[:80]!r} is an option; only requirement specifiers are allowed")
    try:
        parsed = Requirement(text)
    except InvalidRequirement:
        raise ValueError(
            f"{text[:80]!r} is not a requirement specifier such as 'requests[socks]>=2.31' "
            "(no URLs, paths or options)"
        ) from None
    if parsed.url is not None:
        raise ValueError(f"{text[:80]!r} names a URL; only names and versions are allowed")
    parsed.name = canonicalize_name(parsed.name)
    return str(parsed)


def _strings(value: Any, most: int, chars: int, what: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list | tuple):
        raise ValueError(f"must be a list of {what}")
    if len(value) > most:
        raise ValueError(f"has {len(value)} entries; at most {most}")
    items: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueError(f"entry {i} is not a string")
        if len(item) > chars:
            raise ValueError(f"entry {i} has {len(item)} characters; at most {chars}")
        if _CONTROL.search(item):
            raise ValueError(f"entry {i} contains a newline or control character")
        items.append(item)
    return items


def parse_spec(value: Any) -> EnvironmentSpec:
    """A spec from a JSON object (or its text); ValueError naming the part that is wrong."""
    if isinstance(value, str):
        value = _json_object(value)
    if not isinstance(value, Mapping):
        raise ValueError("a spec is a JSON object with base, apt, pip, run, env")
    try:
        spec = EnvironmentSpec.model_validate(dict(value))
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        part = ".".join(str(p) for p in error["loc"]) or "spec"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "is not part of a spec (base, apt, pip, run, env)"
        raise ValueError(f"{part}: {message}") from None
    size = len(spec.canonical_json().encode())
    if size > MAX_SPEC_BYTES:
        raise ValueError(f"the spec is {size} bytes as canonical JSON; at most {MAX_SPEC_BYTES}")
    return spec


def parse_environment(value: Any) -> str | EnvironmentSpec | None:
    """A create's ``environment``: a catalogue name, a spec (JSON object or its text), or None
    when empty. ValueError naming what is wrong."""
    if value is None or value == "":
        return None
    if isinstance(value, EnvironmentSpec):
        return value
    if isinstance(value, str) and not value.lstrip().startswith("{"):
        if not ENVIRONMENT_NAME.fullmatch(value):
            raise ValueError(
                f"{value[:80]!r} is neither an environment name (1 to 64 of [A-Za-z0-9._-]) "
                "nor a JSON spec"
            )
        return value
    return parse_spec(value)


def _json_object(text: str) -> Any:
    if len(text.encode()) > MAX_SPEC_BYTES:
        raise ValueError(f"a spec is at most {MAX_SPEC_BYTES} bytes")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"a spec must be JSON text; {exc.msg} at position {exc.pos}") from None
    except RecursionError:
        raise ValueError("a spec nests too deeply to be read") from None
