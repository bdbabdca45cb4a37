"""Environments (SPEC §9): the operator's catalogue, whether a create may bring its own spec,
and the images an environment may be built FROM.

``WM_ENVIRONMENTS`` is a JSON object of name → spec, or the path of a file holding one (a
catalogue grows past what a variable comfortably holds). Every spec is validated at start, as
strictly as a create's (``contract.environments``): a bad entry is the operator's configuration
error, named, never a surprise at the first create that asks for it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator
from pydantic_settings import NoDecode

from worker_manager.contract.egress import canonical_egress
from worker_manager.contract.environments import (
    ENVIRONMENT_NAME,
    IMAGE_NAME,
    EnvironmentSpec,
    parse_spec,
)

#: Debian's and PyPI's package hosts: what a build reaches unless ``WM_BUILD_EGRESS`` says
#: otherwise (apt's default sources use http; https is granted for sources that use it).
DEFAULT_BUILD_EGRESS = (
    "deb.debian.org:80",
    "deb.debian.org:443",
    "security.debian.org:80",
    "security.debian.org:443",
    "pypi.org:443",
    "files.pythonhosted.org:443",
)


class EnvironmentSettings(BaseModel):
    # --- env-core's fields (the catalogue, ad hoc specs, bases) ----------------------------
    environments: Annotated[dict[str, EnvironmentSpec], NoDecode] = Field(
        default_factory=dict,
        description='The catalogue: JSON object of name -> spec (e.g. {"node20": {"apt": '
        '["nodejs"]}}), or the path of a JSON file holding one.',
    )
    environments_adhoc: Literal["on", "off"] = Field(
        default="on",
        description="on: a create may bring its own spec; off: only catalogue names.",
    )
    base_images: list[str] = Field(
        default_factory=list,
        description="Images an environment may name as its base (JSON list), besides "
        "WM_BASE_IMAGE, which is always allowed.",
    )

    # --- env-net's fields (an environment's build: its network and the CAs it trusts) -------
    build_egress: list[str] = Field(
        default_factory=lambda: list(DEFAULT_BUILD_EGRESS),
        description="Where an environment's build (its apt, pip and run lines) may connect, "
        "through the egress service, as an egress grant (JSON list; default Debian's and "
        "PyPI's package hosts). Nothing else is reachable from a build step.",
    )
    build_ca_files: list[Path] = Field(
        default_factory=list,
        description="PEM files of CAs that an environment's build trusts besides the public "
        "roots (apt's https sources, pip, run lines): for hosts whose traffic is TLS-inspected. "
        "Trusted during the build only, never by the image (JSON list of paths).",
    )

    @field_validator("build_egress")
    @classmethod
    def _build_egress(cls, value: list[str]) -> list[str]:
        return canonical_egress(value)

    @field_validator("build_ca_files")
    @classmethod
    def _build_ca_files(cls, value: list[Path]) -> list[Path]:
        """Checked at start: a missing or unreadable file is the operator's error, named."""
        for path in value:
            try:
                text = path.read_text(encoding="ascii", errors="replace")
            except OSError as exc:
                raise ValueError(f"WM_BUILD_CA_FILES: {path}: {exc.strerror}") from None
            if "-----BEGIN CERTIFICATE-----" not in text:
                raise ValueError(f"WM_BUILD_CA_FILES: {path} holds no PEM certificate")
        return value

    # --- env-core's validators --------------------------------------------------------------
    @field_validator("environments", mode="before")
    @classmethod
    def _catalogue(cls, value: Any) -> dict[str, EnvironmentSpec]:
        return parse_catalogue(value)

    @field_validator("base_images")
    @classmethod
    def _bases(cls, value: list[str]) -> list[str]:
        for base in value:
            if not IMAGE_NAME.fullmatch(base):
                raise ValueError(f"WM_BASE_IMAGES: {base[:80]!r} is not an image name")
        return value


def parse_catalogue(value: Any) -> dict[str, EnvironmentSpec]:
    """``WM_ENVIRONMENTS``: an object, its JSON text, or the path of a JSON file."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return {}
        if not text.startswith("{"):
            try:
                text = Path(text).read_text()
            except OSError as exc:
                raise ValueError(f"WM_ENVIRONMENTS: cannot read {text!r}: {exc.strerror}") from None
        value = text
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ValueError(f"WM_ENVIRONMENTS is not a JSON object: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("WM_ENVIRONMENTS must be a JSON object of name -> spec")
    catalogue: dict[str, EnvironmentSpec] = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not ENVIRONMENT_NAME.fullmatch(name):
            raise ValueError(
                f"WM_ENVIRONMENTS: {str(name)[:80]!r} is not a name (1 to 64 of [A-Za-z0-9._-])"
            )
        try:
            catalogue[name] = spec if isinstance(spec, EnvironmentSpec) else parse_spec(spec)
        except ValueError as exc:
            raise ValueError(f"WM_ENVIRONMENTS: environment {name!r}: {exc}") from None
    return catalogue
