"""The points where the allowed-commands enforcement plugs in: ``worker_base.allowlist`` (the
shims) and ``worker_base.refusals`` (reporting what they refused).

Those modules are optional for the core, so every call site works without them:

* ``allowlist.agent_env(config: WrapperConfig, env: dict[str, str], shell_prefix_env=None,
  *, keep_path=False) -> dict[str, str]`` receives the agent's complete environment for one
  run and returns the one to use (e.g. with a PATH of command shims, or a gate in
  ``shell_prefix_env`` for an agent that prefixes its shell commands; with ``keep_path`` the
  shims are built and ``PATH`` is left alone). Called once per run, last, after the driver's
  own variables.
  Absent: the environment is used unchanged.
* ``refusals.refusals(config: WrapperConfig) -> AsyncIterator[str]``
  yields one human sentence per refused command; the wrapper turns each into an ``error``
  output event for the input being handled (``input_id`` empty when idle). Iterated once, for
  the wrapper's lifetime, from its own task. Absent: nothing to forward.
* ``refusals.pending_refusals(config: WrapperConfig) -> list[str]``
  the refusals logged and not yet yielded by ``refusals``, taken at once. Called after each
  agent run and before its ``done``, so a refusal is never reported after the end of the input
  it belongs to (the follower polls, and a fast agent exits within one poll). Absent: none.

An ImportError raised *inside* an existing module is not swallowed: that is a bug to
see, not an absent feature.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from functools import cache
from types import ModuleType
from typing import cast

from worker_base.config import WrapperConfig

log = logging.getLogger("worker_base")

ALLOWLIST_MODULE = "worker_base.allowlist"
REFUSALS_MODULE = "worker_base.refusals"


@cache
def optional_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name != name:
            raise
        return None


def agent_env(
    config: WrapperConfig,
    env: dict[str, str],
    shell_prefix_env: str | None = None,
    *,
    keep_path: bool = False,
) -> dict[str, str]:
    module = optional_module(ALLOWLIST_MODULE)
    hook = getattr(module, "agent_env", None)
    if hook is None:
        return env
    if keep_path:
        return cast("dict[str, str]", hook(config, env, shell_prefix_env, keep_path=True))
    return cast("dict[str, str]", hook(config, env, shell_prefix_env))


def refusals(config: WrapperConfig) -> AsyncIterator[str] | None:
    module = optional_module(REFUSALS_MODULE)
    hook = getattr(module, "refusals", None)
    if hook is None:
        return None
    return cast("AsyncIterator[str]", hook(config))


def pending_refusals(config: WrapperConfig) -> list[str]:
    module = optional_module(REFUSALS_MODULE)
    hook = getattr(module, "pending_refusals", None)
    if hook is None:
        return []
    return cast("list[str]", hook(config))
