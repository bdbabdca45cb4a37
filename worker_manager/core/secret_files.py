"""Secrets read from files, so API keys need not sit in the manager's environment.

Two conventions, for the secret settings only (every ``SecretStr`` field of ``Settings``: the
agents' API keys and ``WM_WORKER_SECRET``):

* ``<NAME>_FILE=/path`` for any variable name the setting accepts, e.g.
  ``ANTHROPIC_API_KEY_FILE`` or ``WM_ANTHROPIC_API_KEY_FILE`` (the Docker and Compose convention);
* ``WM_SECRETS_DIR=/run/secrets``: a directory of files named like those variables, e.g.
  ``/run/secrets/ANTHROPIC_API_KEY`` (what ``docker secret`` and Kubernetes secret volumes give).

A variable holding the secret itself wins over both, and ``_FILE`` over the directory. One
trailing newline is dropped (editors add one); an empty file counts as unset. A named file that
cannot be read stops the start with an error that names the file, never its content.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, SecretStr
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

SECRETS_DIR_VARIABLE = "WM_SECRETS_DIR"


def secret_fields(settings_cls: type[BaseSettings]) -> dict[str, list[str]]:
    """Field name -> the variable names it is read from, for every ``SecretStr`` field."""
    prefix = str(settings_cls.model_config.get("env_prefix") or "")
    fields: dict[str, list[str]] = {}
    for name, info in settings_cls.model_fields.items():
        if not _is_secret(info):
            continue
        alias = info.validation_alias
        if isinstance(alias, AliasChoices):
            names = [c for c in alias.choices if isinstance(c, str) and c.upper() == c]
        elif isinstance(alias, str):
            names = [alias]
        else:
            names = [f"{prefix}{name}".upper()]
        fields[name] = names
    return fields


def _is_secret(info: FieldInfo) -> bool:
    annotation = info.annotation
    return annotation is SecretStr or SecretStr in getattr(annotation, "__args__", ())


def read_secret(path: Path, variable: str) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(
            f"{variable}: cannot read the secret file {path} ({exc.strerror or exc})"
        ) from None
    if text.endswith("\n"):
        text = text[:-2] if text.endswith("\r\n") else text[:-1]
    return text or None


class SecretFilesSource(PydanticBaseSettingsSource):
    """Values of the secret fields from ``*_FILE`` variables and ``WM_SECRETS_DIR``."""

    def __init__(
        self, settings_cls: type[BaseSettings], environ: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(settings_cls)
        self._environ = os.environ if environ is None else environ

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        directory = self._environ.get(SECRETS_DIR_VARIABLE, "").strip()
        found: dict[str, Any] = {}
        for field, names in secret_fields(self.settings_cls).items():
            value = self._from_file_variables(names)
            if value is None and directory:
                value = self._from_directory(Path(directory), names)
            if value is not None:
                found[field] = value
        return found

    def _from_file_variables(self, names: list[str]) -> str | None:
        for name in names:
            path = self._environ.get(f"{name}_FILE", "").strip()
            if path:
                return read_secret(Path(path), f"{name}_FILE")
        return None

    def _from_directory(self, directory: Path, names: list[str]) -> str | None:
        for name in names:
            path = directory / name
            if path.is_file():
                return read_secret(path, f"{SECRETS_DIR_VARIABLE}/{name}")
        return None
