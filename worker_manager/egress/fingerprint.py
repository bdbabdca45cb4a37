"""Which settings the egress service runs with, and what a manager does when they are not its own.

The service is started by the first manager of a host and outlives it (a manager restart must cut
no worker off), so the manager that finds it running may hold other settings than the one that
started it: a rotated key, a new upstream, another Redis. A manager must never be served with
other settings than its own, so the service keeps a digest of each setting it acts on
(:data:`SERVICE_SETTINGS`) and reports them on ``/healthz``; each manager computes the same from
its own settings at start (and every few seconds after) and :func:`decide` says what follows.

The digests are keyed (HMAC-SHA256 with ``settings.key``, 32 random bytes kept in the run
directory, root only, made by whichever side needs it first): a digest shown by accident says
nothing of a key or a Redis password, short or not. Secrets are never compared, stored or
logged in clear; a difference is named by its variable (``WM_ANTHROPIC_API_KEY``), never by value.

What follows a difference, and why:

* **restart** the service with the manager's settings, when the manager may start it
  (``WM_EGRESS_SPAWN``) and no other live manager on this run directory holds a setting the
  restart would change (:mod:`worker_manager.egress.leases`). A restart goes through the one
  start path there is (every component reads its settings once, mitmproxy's options and the CA
  bundle included), so nothing can be half reconfigured; every grant is kept on disk and served
  again before the new service answers, so no worker is cut off: the open connections break
  once, which the design rides out already (the wrapper reconnects its Redis relay, watchers
  excuse lost heartbeats after the service's ``started``, the CLI retries an API call); an
  answer the LLM gateway was still streaming is cut, and charged for what the worker got of it
  before the old service ends (``EgressService.close``). A key rotation is this case, and
  takes effect for every worker's next request, old workers' too. A reconfiguration in place
  would spare those connections but needs every component to swap its settings live, for an
  event as rare as a rotation;
* **refuse** (:class:`EgressSettingsConflict`, naming the settings), when another live manager
  relies on what restarting would change (it would be served with other settings than its own:
  two managers would take the service from each other every few seconds), or when the manager
  may not start the service (``WM_EGRESS_SPAWN=false``: a supervisor runs it with the settings
  it was given). The manager does not start; the operator gives both the same settings, or each
  its own ``WM_EGRESS_RUN_DIR``.

A service run by a supervisor (``WM_EGRESS_SPAWN=false``) is configured apart from the manager:
the compose deployment gives the keys to the egress service alone, so the manager never holds
them. Such a manager compares only the settings it sets itself (``only_set``): one it leaves to
its default is the service's to choose; one it sets must be the service's too.

``WM_LOG_LEVEL`` is passed to the service it spawns but not compared (its log is its own, and no
worker is served differently by it); ``WM_EGRESS_RUN_DIR`` is the service's identity, not one of
its settings. Everything here is a plain function of data, tested without a service.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from worker_manager.settings import Settings

#: The settings the service acts on (field, and the variable an operator sets): the manager
#: passes each to the service it spawns, and a difference in any of them is a difference.
SERVICE_SETTINGS: tuple[tuple[str, str], ...] = (
    ("redis_url", "WM_REDIS_URL"),
    ("anthropic_base_url", "WM_ANTHROPIC_BASE_URL"),
    ("anthropic_api_key", "WM_ANTHROPIC_API_KEY"),
    ("claude_code_oauth_token", "WM_CLAUDE_CODE_OAUTH_TOKEN"),
    ("openai_base_url", "WM_OPENAI_BASE_URL"),
    ("openai_api_key", "WM_OPENAI_API_KEY"),
    ("factory_api_key", "WM_FACTORY_API_KEY"),
    ("factory_api_host", "WM_FACTORY_API_HOST"),
    ("git_credentials", "WM_GIT_CREDENTIALS"),
    ("egress_upstream_ca", "WM_EGRESS_UPSTREAM_CA"),
    ("egress_connect_timeout_seconds", "WM_EGRESS_CONNECT_TIMEOUT_SECONDS"),
)
#: Passed on to a spawned service too, but not compared (see the module's docstring).
NOT_COMPARED: tuple[tuple[str, str], ...] = (
    ("egress_run_dir", "WM_EGRESS_RUN_DIR"),
    ("log_level", "WM_LOG_LEVEL"),
)

KEY_FILE = "settings.key"
KEY_BYTES = 32

#: Setting variable -> keyed digest of its value.
Digests = Mapping[str, str]


class EgressSettingsConflict(RuntimeError):
    """The egress service runs with other settings than this manager's, and it may not be
    restarted with them (the message names the settings, never a value)."""


def digest_key(run_root: Path) -> bytes:
    """The run directory's digest key, made on first use (atomically: two managers and the
    service may ask at once, and all must get the same key)."""
    path = run_root / KEY_FILE
    with contextlib.suppress(FileNotFoundError):
        key = path.read_bytes()
        if len(key) == KEY_BYTES:
            return key
    scratch = run_root / f".{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(KEY_BYTES))
    try:
        os.link(scratch, path)  # fails if another made it first: theirs is the key
    except FileExistsError:
        pass
    finally:
        scratch.unlink()
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path} is not a digest key of {KEY_BYTES} bytes: remove it")
    return key


def setting_value(settings: Settings, field: str) -> bytes | None:
    """What the service would act on for ``field``, as bytes (None: unset). A file setting
    counts with its content: a CA file changed in place is a changed setting."""
    value = getattr(settings, field)
    if value is None:
        return None
    if hasattr(value, "get_secret_value"):
        value = value.get_secret_value()
    text = repr(value) if isinstance(value, float) else str(value)
    if field == "egress_upstream_ca":
        try:
            content = Path(text).read_bytes()
        except OSError as exc:
            content = f"unreadable: {exc.strerror}".encode()
        return text.encode() + b"\0" + hashlib.sha256(content).hexdigest().encode()
    return text.encode()


def digest(key: bytes, variable: str, value: bytes | None) -> str:
    """A keyed digest of one setting's value (bound to its name: equal values of two settings
    do not show as equal)."""
    message = variable.encode() + (b"\0unset" if value is None else b"\1" + value)
    return hmac.new(key, message, hashlib.sha256).hexdigest()[:32]


def settings_digests(settings: Settings, key: bytes, *, only_set: bool = False) -> dict[str, str]:
    """Every compared setting's digest, by variable name (``only_set``: only of those set
    explicitly, by a variable, a file or an option, not left to their defaults)."""
    return {
        variable: digest(key, variable, setting_value(settings, field))
        for field, variable in SERVICE_SETTINGS
        if not only_set or field in settings.model_fields_set
    }


def differences(found: Digests | None, wanted: Digests) -> list[str]:
    """The settings (variables) ``wanted`` names whose digest ``found`` does not have; all of
    them when ``found`` is unknown (a service of an earlier version reports none)."""
    if found is None:
        return sorted(wanted)
    return sorted(name for name in wanted if found.get(name) != wanted[name])


class Verdict(Enum):
    KEEP = "keep"
    RESTART = "restart"
    REFUSE = "refuse"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    #: The settings in which the running service is not this manager's.
    differing: tuple[str, ...] = ()
    #: The live managers (lease names) that hold other settings than this manager's.
    blockers: tuple[str, ...] = ()

    def explain(self, run_dir: Path) -> str:
        """The operator's message (settings named, never a value)."""
        if self.verdict is Verdict.KEEP:
            return "the egress service runs with this manager's settings"
        differing = ", ".join(self.differing)
        head = f"the egress service of {run_dir} runs with other settings than this manager's"
        if self.verdict is Verdict.RESTART:
            return f"{head} ({differing}): restarting it with this manager's"
        if self.blockers:
            return (
                f"{head} ({differing}), and other managers using it hold those "
                f"({', '.join(self.blockers)}): give every manager of this run directory the "
                "same settings, or each its own WM_EGRESS_RUN_DIR"
            )
        return (
            f"{head} ({differing}) and WM_EGRESS_SPAWN is off: restart the service with this "
            "manager's settings, or start this manager with the service's"
        )


def decide(
    service: Digests | None,
    ours: Digests,
    others: Mapping[str, Digests | None],
    *,
    may_restart: bool,
) -> Decision:
    """What a manager whose settings are ``ours`` does about a running service that reports
    ``service``, while the other live managers of its run directory hold ``others`` (lease
    name -> digests, None: unreadable, taken as blocking). A restart gives the service
    ``ours``: it is blocked by every other manager that holds a setting ``ours`` does not."""
    differing = tuple(differences(service, ours))
    if not differing:
        return Decision(Verdict.KEEP)
    blockers = tuple(
        sorted(name for name, held in others.items() if held is None or differences(ours, held))
    )
    if not may_restart or blockers:
        return Decision(Verdict.REFUSE, differing, blockers)
    return Decision(Verdict.RESTART, differing)
