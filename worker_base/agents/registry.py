"""Which driver runs which ``WM_AGENT_TYPE``.

Every driver class is constructed as ``Driver(config: WrapperConfig)``. The CLAUDE, CODEX and
FACTORY drivers are imported on demand, so an image (or a checkout) without them still runs
CUSTOM workers, and asking for them gives one clear sentence instead of a traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import cast

from worker_base.agents.base import AgentDriver
from worker_base.agents.custom import CustomDriver
from worker_base.config import WrapperConfig

_LAZY_DRIVERS = {
    "CLAUDE": ("worker_base.agents.claude", "ClaudeDriver"),
    "CODEX": ("worker_base.agents.codex", "CodexDriver"),
    "FACTORY": ("worker_base.agents.factory", "FactoryDriver"),
}


class DriverUnavailableError(RuntimeError):
    """The configured agent type has no usable driver in this installation."""


def driver_for(config: WrapperConfig) -> AgentDriver:
    if config.agent_type == "CUSTOM":
        return _construct(CustomDriver, config)
    if config.agent_type not in _LAZY_DRIVERS:
        raise DriverUnavailableError(f"unknown agent type {config.agent_type!r}")
    module_name, class_name = _LAZY_DRIVERS[config.agent_type]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise DriverUnavailableError(
            f"the {config.agent_type} driver ({module_name}) is not part of this installation"
        ) from None
    driver_class = getattr(module, class_name, None)
    if not (isinstance(driver_class, type) and issubclass(driver_class, AgentDriver)):
        raise DriverUnavailableError(f"{module_name} does not define {class_name}(AgentDriver)")
    return _construct(cast("Callable[[WrapperConfig], AgentDriver]", driver_class), config)


def _construct(
    factory: Callable[[WrapperConfig], AgentDriver], config: WrapperConfig
) -> AgentDriver:
    try:
        return factory(config)
    except ValueError as exc:  # drivers reject a configuration they cannot use
        raise DriverUnavailableError(
            f"the {config.agent_type} driver cannot start: {exc}"
        ) from None
