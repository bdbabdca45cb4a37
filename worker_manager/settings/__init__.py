"""Configuration: ``WM_*`` environment variables (and a ``.env`` file), overridable per CLI option.

One flat set of names (SPEC §6 lists the contract's; the others are ours, in
docs/configuration.md), kept by concern: each concern is a model of its own
(:class:`RedisSettings`, :class:`CommandSettings`, :class:`CommandLimits`,
:class:`FleetSettings`, :class:`ContainerSettings`, :class:`EgressSettings`,
:class:`WorkspaceSettings`, :class:`ImageSettings`, :class:`EnvironmentSettings`,
:class:`ServiceSettings`,
:class:`HttpSettings`, :class:`AgentSettings`),
and :class:`Settings` is all of them, read from
the environment. A component that needs one concern takes that model (``HttpServer`` an
``HttpSettings``, command validation a ``CommandLimits``), so its signature says what it depends
on. ``make run`` writes ``.env`` with the URL of the local Redis it starts, so the CLI run from
the checkout finds the same Redis as the service.

May import: ``core``, ``contract``.
"""

from __future__ import annotations

from pydantic import model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from worker_manager.contract.kinds import Module, Shape
from worker_manager.contract.limits import CommandLimits
from worker_manager.core.secret_files import SecretFilesSource
from worker_manager.settings.agents import AgentSettings
from worker_manager.settings.commands import CommandSettings
from worker_manager.settings.containers import ContainerSettings
from worker_manager.settings.egress import EgressSettings
from worker_manager.settings.environments import EnvironmentSettings
from worker_manager.settings.fleet import FleetSettings
from worker_manager.settings.http import HttpSettings, LogSettings
from worker_manager.settings.images import BOOTSTRAP_BASE_TAG, ImageSettings
from worker_manager.settings.redis import RedisSettings
from worker_manager.settings.services import ServiceSettings
from worker_manager.settings.workspaces import WorkspaceSettings

__all__ = [
    "BOOTSTRAP_BASE_TAG",
    "AgentSettings",
    "CommandLimits",
    "CommandSettings",
    "ContainerSettings",
    "EgressSettings",
    "EnvironmentSettings",
    "FleetSettings",
    "HttpSettings",
    "ImageSettings",
    "LogSettings",
    "RedisSettings",
    "ServiceSettings",
    "Settings",
    "WorkspaceSettings",
]


class Settings(
    BaseSettings,
    RedisSettings,
    CommandSettings,
    CommandLimits,
    FleetSettings,
    ContainerSettings,
    EgressSettings,
    WorkspaceSettings,
    ImageSettings,
    EnvironmentSettings,
    ServiceSettings,
    HttpSettings,
    AgentSettings,
    LogSettings,
):
    """Every setting, from ``WM_*`` variables, ``.env`` and secret files (in that order)."""

    # hide_input_in_errors: a setting's error never repeats its value, which may be a secret
    # (WM_GIT_CREDENTIALS is checked at start); the message names the variable and the rule.
    model_config = SettingsConfigDict(
        env_prefix="WM_",
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Secret files come after the variables: a key set directly wins over its file."""
        return (init_settings, env_settings, dotenv_settings, SecretFilesSource(settings_cls))

    @model_validator(mode="after")
    def _environments_known(self) -> Settings:
        """Across concerns, checked at start: a catalogue entry's base is allowed, and a shape
        of ``WM_PREBUILD`` or ``WM_WARM_POOL`` names an environment of the catalogue."""
        for name, spec in self.environments.items():
            if spec.base is not None and spec.base not in self.allowed_bases:
                raise ValueError(
                    f"WM_ENVIRONMENTS: environment {name!r}: base {spec.base!r} is not "
                    "WM_BASE_IMAGE nor in WM_BASE_IMAGES"
                )
        for text in self.warm_pool:
            if Module.DOCKER in Shape.parse(text).modules and self.docker_module == "rootless":
                raise ValueError(
                    f"WM_WARM_POOL: shape {text!r} has the DOCKER module, whose workers each get "
                    "an engine of their own at their create (WM_DOCKER_MODULE=rootless): it "
                    "cannot be pooled"
                )
        for setting, shapes in (("WM_PREBUILD", self.prebuild), ("WM_WARM_POOL", self.warm_pool)):
            for text in shapes:
                environment = Shape.parse(text).environment
                if environment is not None and environment not in self.environments:
                    raise ValueError(
                        f"{setting}: shape {text!r} names environment {environment!r}, "
                        "which WM_ENVIRONMENTS does not have"
                    )
        return self

    @property
    def allowed_bases(self) -> tuple[str, ...]:
        """The images an environment may be built FROM: ``WM_BASE_IMAGE`` and
        ``WM_BASE_IMAGES``."""
        return (self.base_image, *self.base_images)
