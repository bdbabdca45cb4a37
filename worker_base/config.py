"""The wrapper's configuration, read once from the container's environment.

The manager sets these variables when it starts a worker (:class:`WrapperConfig` lists them);
they are the contract between the two. A missing or malformed value is a deployment error,
reported in one sentence before anything else happens (exit code 2), rather than a crash later.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from worker_base.redis_urls import is_sentinel_url, parse_sentinel_url

AGENT_TYPES = ("CLAUDE", "CODEX", "FACTORY", "CUSTOM")
FACTORY_AUTONOMY = ("low", "medium", "high")

#: The consumer group and consumer name the wrapper reads its input stream with.
WRAPPER_GROUP = "wrapper"
WRAPPER_CONSUMER = "wrapper"


#: Where a worker keeps what outlives one run (sessions, spend, shims); the image creates it.
DEFAULT_STATE_DIR = "/home/worker/.wm"
#: The agent's home in a worker container (the image's worker user). Not the wrapper's: the
#: wrapper runs with a home of root's (``worker_manager.images.spec.RUNTIME``), so nothing the
#: agent writes under its home is ever read by the wrapper's interpreter.
AGENT_HOME = "/home/worker"


class ConfigError(ValueError):
    """The environment does not describe a usable worker; the message says which variable."""


@dataclass(frozen=True, slots=True)
class WrapperConfig:
    worker_id: str
    redis_url: str
    key_prefix: str = "worker"
    agent_type: str = "CUSTOM"
    #: argv of the CUSTOM agent (``WM_AGENT_COMMAND``); empty for the other types.
    agent_command: tuple[str, ...] = ()
    #: ``None`` means unrestricted (``WM_ALLOWED_COMMANDS`` absent).
    allowed_commands: tuple[str, ...] | None = None
    workdir: Path = Path("/workspace")
    #: The agent's own state (its CLI's configuration and sessions): the agent's files.
    state_dir: Path = Path(DEFAULT_STATE_DIR)
    #: The wrapper's own files (``worker_base.identity``); unset: ``<state_dir>/wrapper``.
    wrapper_dir_override: Path | None = None
    #: The agent's ``(uid, gid)``, when it runs as a user other than the wrapper's
    #: (``WM_AGENT_USER``); None: the wrapper's own user.
    agent_user: tuple[int, int] | None = None
    #: The agent's ``HOME`` (``WM_AGENT_HOME``); None: the wrapper's own (outside a container).
    agent_home: Path | None = None
    #: The create's ``env`` (``WM_AGENT_ENV``, a JSON object): added to each agent run's
    #: environment, never to the wrapper's own, and below the deployment's names.
    agent_env: tuple[tuple[str, str], ...] = ()
    #: The commit the workspace was checked out at (``WM_WORKSPACE_BASE``): what ``diff``
    #: compares with; empty: HEAD.
    workspace_base: str = ""
    #: The most a read, write or diff through the wrapper carries (``WM_WORKSPACE_MAX_BYTES``).
    workspace_max_bytes: int = 8 * 1024 * 1024
    heartbeat_interval: float = 2.0
    heartbeat_ttl: int = 10
    output_maxlen: int = 10_000
    factory_auto: str = "low"
    #: A run of one input longer than this is killed (``done`` 124); None: no limit.
    input_timeout: float | None = None
    #: Per input: the most agent turns (passed to agents that take it); None: the agent's own.
    max_turns: int | None = None
    #: The worker's total spend across inputs; once reached it refuses further input.
    max_cost_usd: float | None = None
    #: Loopback ports the wrapper relays to Unix sockets (a contained worker's proxy and LLM
    #: gateway, ``WM_RELAYS``: JSON object port -> socket path).
    relays: tuple[tuple[int, str], ...] = ()
    #: Loopback ports of the worker's services (SPEC §9, ``WM_SERVICE_PORTS``): no input is
    #: read before each answers (or ``service_wait`` has passed: the manager judges a service
    #: that never does), so an input that wakes a suspended worker never meets a service still
    #: starting.
    service_ports: tuple[int, ...] = ()
    service_wait: float = 120.0
    #: The worker's team (SPEC §12, ``WM_TEAM``): its wrapper reads and writes that team's
    #: board for the agent (``wm-team``); empty: no team.
    team: str = ""
    # --- ours, not set by the manager: tuning knobs with safe defaults -----------------------
    #: Seconds between SIGTERM and SIGKILL when a run is cancelled.
    cancel_grace: float = 5.0
    #: XREADGROUP BLOCK; kept well below ``socket_timeout`` so a blocked read never times out.
    block_ms: int = 2_000
    socket_timeout: float = 10.0
    log_level: str = "INFO"

    @property
    def wrapper_dir(self) -> Path:
        return self.wrapper_dir_override or self.state_dir / "wrapper"

    def agent_home_dir(self) -> Path:
        """The ``HOME`` the agent's processes get: ``agent_home``, else (outside a container,
        where the agent is the wrapper's own user) the wrapper's own."""
        return self.agent_home or Path(os.environ.get("HOME") or Path.home())

    @property
    def input_key(self) -> str:
        return worker_key(self.key_prefix, self.worker_id, "input")

    @property
    def output_key(self) -> str:
        return worker_key(self.key_prefix, self.worker_id, "output")

    @property
    def heartbeat_key(self) -> str:
        return worker_key(self.key_prefix, self.worker_id, "heartbeat")

    @property
    def team_board_key(self) -> str:
        """The team's board (SPEC §12); meaningless without a team."""
        return team_board_key(self.key_prefix, self.team)

    @property
    def team_changes_key(self) -> str:
        """What each member's workspace changed, as the manager last saw it (read-only here)."""
        return team_changes_key(self.key_prefix, self.team)

    @property
    def workspace_key(self) -> str:
        """The last workspace summary (SPEC §8), which the manager copies into the record."""
        return worker_key(self.key_prefix, self.worker_id, "workspace")

    def to_env(self) -> dict[str, str]:
        """The environment for which :meth:`from_env` returns this configuration.

        The manager builds a ``WrapperConfig`` and starts the container with this: what crosses
        into the container is written and read in this one class."""
        env = {
            "WM_WORKER_ID": self.worker_id,
            "WM_REDIS_URL": self.redis_url,
            "WM_KEY_PREFIX": self.key_prefix,
            "WM_AGENT_TYPE": self.agent_type,
            "WM_WORKDIR": str(self.workdir),
            "WM_STATE_DIR": str(self.state_dir),
            "WM_HEARTBEAT_INTERVAL": repr(self.heartbeat_interval),
            "WM_HEARTBEAT_TTL": str(self.heartbeat_ttl),
            "WM_OUTPUT_MAXLEN": str(self.output_maxlen),
            "WM_FACTORY_AUTO": self.factory_auto,
            "WM_CANCEL_GRACE_SECONDS": repr(self.cancel_grace),
            "WM_WRAPPER_BLOCK_MS": str(self.block_ms),
            "WM_WRAPPER_SOCKET_TIMEOUT": repr(self.socket_timeout),
            "WM_LOG_LEVEL": self.log_level,
        }
        if self.agent_command:
            env["WM_AGENT_COMMAND"] = json.dumps(list(self.agent_command))
        if self.allowed_commands is not None:
            env["WM_ALLOWED_COMMANDS"] = json.dumps(list(self.allowed_commands))
        if self.input_timeout is not None:
            env["WM_INPUT_TIMEOUT_SECONDS"] = repr(self.input_timeout)
        if self.max_turns is not None:
            env["WM_MAX_TURNS"] = str(self.max_turns)
        if self.max_cost_usd is not None:
            env["WM_MAX_COST_USD"] = repr(self.max_cost_usd)
        if self.relays:
            env["WM_RELAYS"] = relays_env(self.relays)
        if self.service_ports:
            env["WM_SERVICE_PORTS"] = ",".join(str(port) for port in self.service_ports)
            env["WM_SERVICE_WAIT_SECONDS"] = repr(self.service_wait)
        if self.wrapper_dir_override is not None:
            env["WM_WRAPPER_DIR"] = str(self.wrapper_dir_override)
        if self.agent_user is not None:
            env["WM_AGENT_USER"] = f"{self.agent_user[0]}:{self.agent_user[1]}"
        if self.agent_home is not None:
            env["WM_AGENT_HOME"] = str(self.agent_home)
        if self.agent_env:
            env["WM_AGENT_ENV"] = json.dumps(dict(self.agent_env), sort_keys=True)
        if self.workspace_base:
            env["WM_WORKSPACE_BASE"] = self.workspace_base
        if self.team:
            env["WM_TEAM"] = self.team
        env["WM_WORKSPACE_MAX_BYTES"] = str(self.workspace_max_bytes)
        return env

    @property
    def safe_redis_url(self) -> str:
        return redact_url(self.redis_url)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> WrapperConfig:
        def text(name: str, default: str | None = None) -> str | None:
            value = environ.get(name, "").strip()
            return value or default

        worker_id = text("WM_WORKER_ID")
        if worker_id is None:
            raise ConfigError("WM_WORKER_ID is not set: the manager gives every worker its id.")
        redis_url = text("WM_REDIS_URL")
        if redis_url is None:
            raise ConfigError("WM_REDIS_URL is not set: the wrapper has no Redis to talk to.")
        if is_sentinel_url(redis_url):
            try:
                parse_sentinel_url(redis_url)
            except ValueError as exc:
                raise ConfigError(f"WM_REDIS_URL: {exc}.") from None
        elif urlsplit(redis_url).scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError(
                f"WM_REDIS_URL must be a redis://, rediss://, unix:// or redis+sentinel:// URL, "
                f"not {redact_url(redis_url)!r}."
            )

        agent_type = (text("WM_AGENT_TYPE", "CUSTOM") or "CUSTOM").upper()
        if agent_type not in AGENT_TYPES:
            raise ConfigError(f"WM_AGENT_TYPE must be one of {', '.join(AGENT_TYPES)}.")
        agent_command = _string_list(environ, "WM_AGENT_COMMAND")
        if agent_type == "CUSTOM" and not agent_command:
            raise ConfigError(
                'WM_AGENT_COMMAND must hold the agent\'s argv as a JSON list, e.g. ["my-agent"].'
            )
        factory_auto = (text("WM_FACTORY_AUTO", "low") or "low").lower()
        if factory_auto not in FACTORY_AUTONOMY:
            raise ConfigError(f"WM_FACTORY_AUTO must be one of {', '.join(FACTORY_AUTONOMY)}.")

        interval = _number(environ, "WM_HEARTBEAT_INTERVAL", 2.0, minimum=0.05)
        ttl = int(_number(environ, "WM_HEARTBEAT_TTL", 10, minimum=1))
        if ttl <= interval:
            raise ConfigError(
                "WM_HEARTBEAT_TTL must be longer than WM_HEARTBEAT_INTERVAL, or the heartbeat "
                "expires between two beats."
            )
        block_ms = int(_number(environ, "WM_WRAPPER_BLOCK_MS", 2_000, minimum=10))
        socket_timeout = _number(environ, "WM_WRAPPER_SOCKET_TIMEOUT", 10.0, minimum=0.5)
        if block_ms / 1000 >= socket_timeout:
            raise ConfigError("WM_WRAPPER_BLOCK_MS must stay below WM_WRAPPER_SOCKET_TIMEOUT.")

        allowed = _string_list(environ, "WM_ALLOWED_COMMANDS")
        max_turns = _optional(environ, "WM_MAX_TURNS", minimum=1)
        return cls(
            worker_id=worker_id,
            redis_url=redis_url,
            key_prefix=text("WM_KEY_PREFIX", "worker") or "worker",
            agent_type=agent_type,
            agent_command=tuple(agent_command or ()),
            allowed_commands=None if allowed is None else tuple(allowed),
            workdir=Path(text("WM_WORKDIR", "/workspace") or "/workspace"),
            state_dir=Path(text("WM_STATE_DIR") or DEFAULT_STATE_DIR),
            wrapper_dir_override=Path(wrapper) if (wrapper := text("WM_WRAPPER_DIR")) else None,
            agent_user=parse_user(text("WM_AGENT_USER")),
            agent_home=Path(home) if (home := text("WM_AGENT_HOME")) else None,
            agent_env=_string_map(environ, "WM_AGENT_ENV"),
            workspace_base=text("WM_WORKSPACE_BASE") or "",
            workspace_max_bytes=int(
                _number(environ, "WM_WORKSPACE_MAX_BYTES", 8 * 1024 * 1024, minimum=1024)
            ),
            heartbeat_interval=interval,
            heartbeat_ttl=ttl,
            output_maxlen=int(_number(environ, "WM_OUTPUT_MAXLEN", 10_000, minimum=1)),
            factory_auto=factory_auto,
            input_timeout=_optional(environ, "WM_INPUT_TIMEOUT_SECONDS", minimum=0.001),
            max_turns=None if max_turns is None else int(max_turns),
            max_cost_usd=_optional(environ, "WM_MAX_COST_USD", minimum=0),
            relays=relays_from_env(environ),
            service_ports=_ports(environ, "WM_SERVICE_PORTS"),
            service_wait=_number(environ, "WM_SERVICE_WAIT_SECONDS", 120.0, minimum=0),
            team=_team(text("WM_TEAM") or ""),
            cancel_grace=_number(environ, "WM_CANCEL_GRACE_SECONDS", 5.0, minimum=0),
            block_ms=block_ms,
            socket_timeout=socket_timeout,
            log_level=(text("WM_LOG_LEVEL", "INFO") or "INFO").upper(),
        )


def worker_key(prefix: str, worker_id: str, name: str) -> str:
    """A worker's own key (``input``, ``output``, ``heartbeat``): the one spelling of the key
    schema the manager (``worker_manager.core.keys``) and the wrapper share."""
    return f"{prefix}:{worker_id}:{name}"


#: What may spell a URL's scheme (``https``, ``git+ssh``, ``redis``), the longest we look back.
_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_MAX_SCHEME = 32
#: Where a URL written in text ends: white space, quotes, angle brackets.
_URL_END = re.compile(r"[\s\"'<>`]")
#: A port right after the host: ``host:8080/…`` has no password.
_PORT = re.compile(r"\d{1,5}")


def team_board_key(prefix: str, team: str) -> str:
    """A team's board (SPEC §12): the one spelling the manager and the wrapper share."""
    return f"{prefix}:team:{team}:board"


def team_changes_key(prefix: str, team: str) -> str:
    """A hash, worker id -> JSON list of the paths its workspace changed: the manager writes it
    (``workers.state.summaries``), the team's wrappers read it for ``wm-team who``."""
    return f"{prefix}:team:{team}:changes"


#: What a team name may be (SPEC §1 ``team``).
TEAM_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")


def _team(value: str) -> str:
    if value and TEAM_NAME.fullmatch(value) is None:
        raise ConfigError("WM_TEAM must be a team name of 1-64 characters [A-Za-z0-9._-].")
    return value


def hide_url_credentials(text: str) -> str:
    """``text`` with the userinfo (``user:password@``) of every URL in it replaced by ``***@``.

    A password may hold ``/``, ``@`` and ``:`` unescaped (``https://u:p@ss/w@rd@host/``,
    ``https://u:a/b@host``), which a URL parser would read as a path: once a URL starts with
    ``user:`` (and not ``host:port/``), its userinfo runs to the *last* ``@`` before a host in
    that URL, so no part of such a password survives; a URL that only holds an ``@`` further on
    (``https://host/@user``, ``http://host:4873/@scope/pkg``) is left alone. Where a password and
    a path cannot be told apart, more is hidden (``https://u:p@host/?mail=a@b.c`` becomes
    ``https://***@b.c``), never less. Linear in the text's length."""
    out: list[str] = []
    done = 0  # text[:done] is in out
    found = text.find("://")
    while found != -1:
        start = _scheme_start(text, found, done)
        after = found + 3
        following = text.find("://", after)
        end = len(text) if following == -1 else _scheme_start(text, following, after)
        stop = _URL_END.search(text, after, end)
        end = stop.start() if stop else end
        at = _userinfo_end(text[after:end]) if start < found else None
        if at is not None:
            out += [text[done:after], "***"]
            done = after + at
        found = following
    out.append(text[done:])
    return "".join(out)


def _scheme_start(text: str, sep: int, floor: int) -> int:
    """Where the scheme ending at ``text[sep]`` (``://``) starts; ``sep`` when there is none."""
    start = sep
    while start > floor and sep - start < _MAX_SCHEME and text[start - 1] in _SCHEME_CHARS:
        start -= 1
    while start < sep and not text[start].isalpha():
        start += 1
    return start


def _userinfo_end(url: str) -> int | None:
    """In a URL without its ``scheme://``: the index of the ``@`` ending its userinfo, if any."""
    if url.startswith("["):  # an IPv6 host
        return None
    cut = min((i for i in (url.find(c) for c in "/?#") if i != -1), default=len(url))
    authority = url[:cut]
    user, colon, rest = authority.partition(":")
    if colon and "@" not in user and not (_PORT.fullmatch(rest) and "@" not in authority):
        # user:password, and the password may run past a "/": its last "@" before a host.
        at = url.rfind("@")
        while at != -1 and not url[at + 1 : at + 2].isalnum() and url[at + 1 : at + 2] != "[":
            at = url.rfind("@", 0, at)
        if at != -1:
            return at
    at = authority.rfind("@")
    return at if at != -1 else None


def redact_url(url: str) -> str:
    """The URL with its password replaced, so it can be logged (the password is the ACL secret)."""
    try:
        if is_sentinel_url(url):
            return parse_sentinel_url(url).render(hide_password=True)
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{parts.username or ''}:***@{host}"
        if parts.port is not None:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
    except ValueError:
        return "<unparseable URL>"


def parse_user(text: str | None) -> tuple[int, int] | None:
    """``WM_AGENT_USER``: ``uid`` or ``uid:gid`` (numbers: the image may not name the user)."""
    if text is None:
        return None
    uid, _, gid = text.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        raise ConfigError(f"WM_AGENT_USER must be uid or uid:gid in numbers, not {text!r}.")
    return int(uid), int(gid or uid)


def _ports(environ: Mapping[str, str], name: str) -> tuple[int, ...]:
    """A comma-separated list of TCP ports (1-65535)."""
    raw = environ.get(name, "").strip()
    ports: list[int] = []
    for item in filter(None, (part.strip() for part in raw.split(","))):
        if not (item.isdigit() and 0 < int(item) < 65536):
            raise ConfigError(f"{name} must be a comma-separated list of ports (1-65535).")
        ports.append(int(item))
    return tuple(ports)


def relays_env(relays: tuple[tuple[int, str], ...]) -> str:
    """``WM_RELAYS``'s text: also set on a pooled container, which relays before assignment."""
    return json.dumps({str(port): path for port, path in relays}, sort_keys=True)


def relays_from_env(environ: Mapping[str, str]) -> tuple[tuple[int, str], ...]:
    """``WM_RELAYS`` read (also by the checkout, which runs no wrapper)."""
    raw = environ.get("WM_RELAYS", "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"WM_RELAYS is not valid JSON ({exc.msg}).") from None
    if not isinstance(value, dict):
        raise ConfigError("WM_RELAYS must be a JSON object of port -> Unix socket path.")
    relays: list[tuple[int, str]] = []
    for port, path in value.items():
        if not (str(port).isdigit() and 0 < int(port) < 65536) or not isinstance(path, str):
            raise ConfigError("WM_RELAYS must map ports (1-65535) to Unix socket paths.")
        relays.append((int(port), path))
    return tuple(sorted(relays))


def _string_list(environ: Mapping[str, str], name: str) -> list[str] | None:
    raw = environ.get(name, "").strip()
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON ({exc.msg}).") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(f"{name} must be a JSON list of strings.")
    return value


def _string_map(environ: Mapping[str, str], name: str) -> tuple[tuple[str, str], ...]:
    raw = environ.get(name, "").strip()
    if not raw:
        return ()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{name} is not valid JSON ({exc.msg}).") from None
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ConfigError(f"{name} must be a JSON object of strings.")
    return tuple(sorted(value.items()))


def _optional(environ: Mapping[str, str], name: str, *, minimum: float) -> float | None:
    if not environ.get(name, "").strip():
        return None
    return _number(environ, name, minimum, minimum=minimum)


def _number(environ: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, not {raw!r}.") from None
    if not value >= minimum:  # also rejects NaN
        raise ConfigError(f"{name} must be at least {minimum}.")
    return value
