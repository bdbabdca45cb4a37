"""The commands of SPEC §1, validated with pydantic v2.

Commands arrive as flat stream entries of strings; lists and objects are JSON text. Limits depend
on the deployment, so they come in through the validation context (:func:`command_context`):
the deployment's :class:`CommandLimits` and its reply-stream prefix, never a default read from
the environment behind the caller's back.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from worker_manager.contract.egress import EgressEntryError, canonical_egress
from worker_manager.contract.env import check_env
from worker_manager.contract.environments import (
    EnvironmentSpec,
    ResolvedEnvironment,
    parse_environment,
)
from worker_manager.contract.kinds import AgentType, Module
from worker_manager.contract.limits import CommandLimits
from worker_manager.contract.services import ResolvedService, ServiceSpec, parse_services
from worker_manager.contract.teams import MAX_POST, check_team_name
from worker_manager.contract.workspace import Repository, SourceError, checkout_grant
from worker_manager.core.errors import InvalidCommand

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REPLY_TO_RE = re.compile(r"^[\x21-\x7e]{1,256}$")
METADATA_KEY_RE = re.compile(r"^[A-Za-z0-9._/-]{1,128}$")
MAX_METADATA_VALUE_CHARS = 1024
MAX_AGENT_ARGV = 256
MAX_AGENT_ARG_CHARS = 4096


#: JSON fields are flat (a list or an object of strings): deeper nesting is refused before it
#: is parsed, so a "JSON bomb" costs a scan, never a RecursionError.
MAX_JSON_DEPTH = 8


def json_depth_exceeds(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether ``text`` nests ``[``/``{`` deeper than ``limit`` (outside strings)."""
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > limit:
                return True
        elif char in "]}":
            depth -= 1
    return False


def _json_text(value: Any, what: str) -> Any:
    if isinstance(value, str):
        if json_depth_exceeds(value):
            raise ValueError(f"must be JSON text ({what}) nested at most {MAX_JSON_DEPTH} deep")
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(
                f"must be JSON text ({what}); {exc.msg} at position {exc.pos}"
            ) from exc
    return value


#: Bounds of the per-create watchdog and budgets (SPEC §1): generous, but finite numbers.
MAX_INPUT_TIMEOUT_SECONDS = 7 * 86_400
MAX_TURNS = 10_000
MAX_COST_USD = 1_000_000
#: The most workers one list reply carries (SPEC §1).
MAX_LIST_LIMIT = 1000


class _Command(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_enum_values=False)

    request_id: str
    reply_to: str

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str) -> str:
        if not REQUEST_ID_RE.fullmatch(value):
            raise ValueError("must be 1 to 128 characters of [A-Za-z0-9._:-]")
        return value

    @field_validator("reply_to")
    @classmethod
    def _reply_to(cls, value: str, info: ValidationInfo) -> str:
        replies = _context(info)[1]
        if not REPLY_TO_RE.fullmatch(value):
            raise ValueError("must be 1 to 256 printable characters without spaces")
        if not value.startswith(replies):
            raise ValueError(f"must start with {replies!r}")
        return value


class _WorkerCommand(_Command):
    worker_id: str

    @field_validator("worker_id", mode="before")
    @classmethod
    def _worker_id(cls, value: Any) -> str:
        return normalize_uuid(value)


def normalize_uuid(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError("must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError as exc:
        raise ValueError("must be a UUID such as 3f2b8c1e-0d7a-4c55-9a51-2f0e6b1c9d42") from exc


class CreateCommand(_Command):
    command: Literal["create"]
    worker_id: str | None = None
    agent_type: AgentType
    instructions: str = ""
    allowed_commands: list[str] | None = None
    modules: list[Module] = Field(default_factory=list)
    prompt: str | None = None
    agent_command: list[str] | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    idle_timeout_seconds: float | None = Field(default=None, gt=0)
    input_timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_INPUT_TIMEOUT_SECONDS)
    max_turns: int | None = Field(default=None, ge=1, le=MAX_TURNS)
    max_cost_usd: float | None = Field(default=None, gt=0, le=MAX_COST_USD)
    #: The destinations granted, canonical (``contract.egress``); None: the deployment's
    #: default (``WM_EGRESS_DEFAULT``), which the handler records in its place.
    egress: list[str] | None = None
    #: Checked out into the workspace before the worker runs (SPEC §8).
    repository: Repository | None = None
    #: Variables for the agent's processes only (``contract.env``: the names refused).
    env: dict[str, str] = Field(default_factory=dict)
    #: The toolchain (SPEC §9): as sent, a catalogue name or a spec (``contract.environments``);
    #: as saved, resolved against the catalogue (``environments.catalogue``).
    environment: str | EnvironmentSpec | ResolvedEnvironment | None = None
    #: Services beside the worker (SPEC §9): as sent (``contract.services``); as saved, their
    #: images resolved against the deployment (``services.resolve``).
    services: tuple[ServiceSpec | ResolvedService, ...] = ()
    #: Start from a snapshot (SPEC §10): its workspace and agent session; its shape unless the
    #: create names its own (an ``agent_type`` that differs is refused).
    from_snapshot: str | None = None
    #: The team whose board the worker shares (SPEC §12); None: no team.
    team: str | None = None

    @field_validator("worker_id", mode="before")
    @classmethod
    def _optional_worker_id(cls, value: Any) -> str | None:
        return None if value in (None, "") else normalize_uuid(value)

    @field_validator("agent_type", mode="before")
    @classmethod
    def _agent_type(cls, value: Any) -> Any:
        if isinstance(value, str) and value not in AgentType.__members__:
            raise ValueError(f"must be one of {', '.join(AgentType)}")
        return value

    @field_validator("instructions")
    @classmethod
    def _instructions(cls, value: str, info: ValidationInfo) -> str:
        _check_bytes(value, _context(info)[0].max_instructions_bytes)
        return value

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _check_bytes(value, _context(info)[0].max_prompt_bytes)
        return value or None

    @field_validator("allowed_commands", mode="before")
    @classmethod
    def _allowed_json(cls, value: Any) -> Any:
        return _json_text(value, "a list of strings")

    @field_validator("allowed_commands")
    @classmethod
    def _allowed(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        limits = _context(info)[0]
        if len(value) > limits.max_allowed_commands:
            raise ValueError(f"has {len(value)} entries; at most {limits.max_allowed_commands}")
        cleaned: list[str] = []
        for i, item in enumerate(value):
            text = item.strip()
            if not text:
                raise ValueError(f"entry {i} is empty")
            if len(text) > limits.max_allowed_command_chars:
                raise ValueError(
                    f"entry {i} has {len(text)} characters; "
                    f"at most {limits.max_allowed_command_chars}"
                )
            if any(ord(c) < 32 or ord(c) == 127 for c in text):
                raise ValueError(f"entry {i} contains a control character")
            if text not in cleaned:
                cleaned.append(text)
        return cleaned

    @field_validator("egress", mode="before")
    @classmethod
    def _egress_json(cls, value: Any) -> Any:
        return _json_text(value, "a list of destinations")

    @field_validator("egress")
    @classmethod
    def _egress(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        try:
            return canonical_egress(value)
        except EgressEntryError as exc:
            # "field 'egress': entry 'x' is not a destination: …" (the field is named once).
            raise ValueError(str(exc).removeprefix("egress ")) from None

    @field_validator("repository", mode="before")
    @classmethod
    def _repository_json(cls, value: Any) -> Any:
        value = _json_text(value, "an object with url and optionally ref, branch, depth")
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be an object with url and optionally ref, branch, depth")
        return value

    @field_validator("repository")
    @classmethod
    def _repository(cls, value: Repository | None, info: ValidationInfo) -> Repository | None:
        if value is not None:
            try:
                checkout_grant(value.url, _context(info)[0].sources)
            except SourceError as exc:
                raise ValueError(f"url: {exc}") from None
        return value

    @field_validator("env", mode="before")
    @classmethod
    def _env_json(cls, value: Any) -> Any:
        value = _json_text(value, "an object of variable name to value")
        if not isinstance(value, dict):
            raise ValueError("must be an object of variable name to value")
        return check_env(value)

    @field_validator("environment", mode="before")
    @classmethod
    def _environment(cls, value: Any) -> Any:
        if isinstance(value, str) and value.lstrip().startswith("{"):
            value = _json_text(value, "an environment spec")
        return parse_environment(value)

    @field_validator("from_snapshot", mode="before")
    @classmethod
    def _from_snapshot(cls, value: Any) -> str | None:
        return None if value in (None, "") else _snapshot_name(value)

    @field_validator("services", mode="before")
    @classmethod
    def _services(cls, value: Any) -> Any:
        return parse_services(value)

    @field_validator("team", mode="before")
    @classmethod
    def _team(cls, value: Any) -> str | None:
        return None if value in (None, "") else check_team_name(value)

    @field_validator("modules", mode="before")
    @classmethod
    def _modules_json(cls, value: Any) -> Any:
        value = _json_text(value, "a list of module names")
        if isinstance(value, list):
            for item in value:
                if isinstance(item, str) and item not in Module.__members__:
                    raise ValueError(f"unknown module {item!r}; known: {', '.join(Module)}")
        return value

    @field_validator("modules")
    @classmethod
    def _modules(cls, value: list[Module]) -> list[Module]:
        return sorted(set(value))

    @field_validator("agent_command", mode="before")
    @classmethod
    def _argv_json(cls, value: Any) -> Any:
        return _json_text(value, "a list of strings, the agent's argv")

    @field_validator("agent_command")
    @classmethod
    def _argv(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value or not value[0].strip():
            raise ValueError("must be a non-empty argv whose first item names the program")
        if len(value) > MAX_AGENT_ARGV:
            raise ValueError(f"has {len(value)} items; at most {MAX_AGENT_ARGV}")
        for i, arg in enumerate(value):
            if len(arg) > MAX_AGENT_ARG_CHARS or "\x00" in arg:
                raise ValueError(f"item {i} is longer than {MAX_AGENT_ARG_CHARS} or has a NUL")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _metadata_json(cls, value: Any) -> Any:
        return _json_text(value, "an object of string to string")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str], info: ValidationInfo) -> dict[str, str]:
        limits = _context(info)[0]
        if len(value) > limits.max_metadata_pairs:
            raise ValueError(f"has {len(value)} pairs; at most {limits.max_metadata_pairs}")
        for key, item in value.items():
            if not METADATA_KEY_RE.fullmatch(key):
                raise ValueError(f"key {key[:40]!r} must be 1 to 128 characters of [A-Za-z0-9._/-]")
            if len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"value of {key!r} is longer than {MAX_METADATA_VALUE_CHARS}")
        return value

    @model_validator(mode="after")
    def _custom_needs_argv(self) -> CreateCommand:
        if self.agent_type is AgentType.CUSTOM and not self.agent_command:
            raise ValueError("agent_command: required when agent_type is CUSTOM")
        if self.agent_type is not AgentType.CUSTOM and self.agent_command is not None:
            raise ValueError("agent_command: only allowed when agent_type is CUSTOM")
        return self


class DeleteCommand(_WorkerCommand):
    command: Literal["delete"]


class StatusCommand(_WorkerCommand):
    command: Literal["status"]


class SuspendCommand(_WorkerCommand):
    """Stop a RUNNING worker's container, keeping its workspace and session (SPEC §8)."""

    command: Literal["suspend"]


class ResumeCommand(_WorkerCommand):
    """Start a SUSPENDED worker again: same id, workspace and session (SPEC §8)."""

    command: Literal["resume"]


#: A snapshot's name (SPEC §1 ``name``): unique among this deployment's snapshots.
SNAPSHOT_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _snapshot_name(value: Any) -> str:
    if not isinstance(value, str) or not SNAPSHOT_NAME.fullmatch(value):
        raise ValueError("must be 1 to 64 characters of [A-Za-z0-9._-]")
    return value


class ForkCommand(_WorkerCommand):
    """Copy a worker (RUNNING between inputs, or SUSPENDED) into ``count`` new ones (SPEC §10)."""

    command: Literal["fork"]
    count: int = Field(default=1, ge=1)
    #: The copies' ids, as many as ``count``; None: made by the manager (from the request id).
    worker_ids: list[str] | None = None

    @field_validator("count")
    @classmethod
    def _count(cls, value: int, info: ValidationInfo) -> int:
        most = _context(info)[0].max_fork
        if value > most:
            raise ValueError(f"is {value}; at most {most} (WM_MAX_FORK)")
        return value

    @field_validator("worker_ids", mode="before")
    @classmethod
    def _worker_ids(cls, value: Any) -> list[str] | None:
        value = _json_text(value, "a list of UUIDs")
        if value in (None, ""):
            return None
        if not isinstance(value, list):
            raise ValueError("must be a JSON list of UUIDs")
        ids = [normalize_uuid(item) for item in value]
        if len(set(ids)) != len(ids):
            raise ValueError("names one id twice")
        return ids

    @model_validator(mode="after")
    def _as_many_ids_as_copies(self) -> ForkCommand:
        if self.worker_ids is not None and len(self.worker_ids) != self.count:
            raise ValueError(f"worker_ids: has {len(self.worker_ids)} ids for count {self.count}")
        if self.worker_ids is not None and self.worker_id in self.worker_ids:
            raise ValueError("worker_ids: names the source itself")
        return self


class SnapshotCommand(_WorkerCommand):
    """Keep a worker's state under a name (SPEC §10)."""

    command: Literal["snapshot"]
    name: str

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return _snapshot_name(value)


class GrantCommand(_WorkerCommand):
    """A credential for one worker (SPEC §11): a Redis user that may read its record and output
    (``read``) and also append to its input (``drive``), for ``ttl_seconds`` or until the
    worker is deleted."""

    command: Literal["grant"]
    access: Literal["read", "drive"]
    ttl_seconds: int = Field(default=3600, ge=1)

    @field_validator("ttl_seconds")
    @classmethod
    def _ttl(cls, value: int, info: ValidationInfo) -> int:
        most = _context(info)[0].grant_max_seconds
        if value > most:
            raise ValueError(f"is {value}; at most {most} (WM_GRANT_MAX_SECONDS)")
        return value


class TeamPostCommand(_Command):
    """A post to a team's board from outside (SPEC §12): the manager writes it, with
    ``producer`` as its sender, so only the manager and the team's wrappers write a board."""

    command: Literal["team_post"]
    team: str
    content: str

    @field_validator("team", mode="before")
    @classmethod
    def _team(cls, value: Any) -> str:
        return check_team_name(value)

    @field_validator("content")
    @classmethod
    def _content(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("is empty")
        if len(value) > MAX_POST:
            raise ValueError(f"has {len(value)} characters; at most {MAX_POST}")
        return value


class ListSnapshotsCommand(_Command):
    command: Literal["list_snapshots"]


class DeleteSnapshotCommand(_Command):
    command: Literal["delete_snapshot"]
    name: str

    @field_validator("name", mode="before")
    @classmethod
    def _name(cls, value: Any) -> str:
        return _snapshot_name(value)


class ListCommand(_Command):
    command: Literal["list"]
    #: Where the page starts: ``next_cursor`` of the previous reply (``<ms>:<worker_id>``).
    cursor: str | None = None
    limit: int = Field(default=100, ge=1, le=MAX_LIST_LIMIT)

    @field_validator("cursor")
    @classmethod
    def _cursor(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        parse_cursor(value)
        return value

    @property
    def position(self) -> tuple[int, str] | None:
        return None if self.cursor is None else parse_cursor(self.cursor)


def parse_cursor(value: str) -> tuple[int, str]:
    score, sep, worker_id = value.partition(":")
    if not sep or not score.isdigit() or len(score) > 16:
        raise ValueError("must be the next_cursor of a previous list reply")
    return int(score), normalize_uuid(worker_id)


def format_cursor(position: tuple[int, str]) -> str:
    return f"{position[0]}:{position[1]}"


AnyCommand = (
    CreateCommand
    | DeleteCommand
    | StatusCommand
    | ListCommand
    | SuspendCommand
    | ResumeCommand
    | ForkCommand
    | SnapshotCommand
    | ListSnapshotsCommand
    | DeleteSnapshotCommand
    | GrantCommand
    | TeamPostCommand
)
Command = Annotated[AnyCommand, Field(discriminator="command")]
_COMMAND = TypeAdapter(Command)
COMMAND_NAMES = (
    "create",
    "delete",
    "status",
    "list",
    "suspend",
    "resume",
    "fork",
    "snapshot",
    "list_snapshots",
    "delete_snapshot",
    "grant",
    "team_post",
)


def _check_bytes(value: str, limit: int) -> None:
    size = len(value.encode("utf-8"))
    if size > limit:
        raise ValueError(f"is {size} bytes; at most {limit}")


def command_context(limits: CommandLimits, replies: str) -> dict[str, Any]:
    """The validation context every command is checked in: the deployment's limits and the
    prefix a ``reply_to`` must start with (``<prefix>:replies``)."""
    return {"limits": limits, "replies": replies}


def _context(info: ValidationInfo) -> tuple[CommandLimits, str]:
    context = info.context or {}
    limits, replies = context.get("limits"), context.get("replies")
    if not isinstance(limits, CommandLimits) or not isinstance(replies, str):
        raise TypeError("commands are validated with context=command_context(limits, replies)")
    return limits, replies


def parse_command(
    fields: dict[str, str], entry_id: str, limits: CommandLimits, *, replies: str
) -> AnyCommand:
    """Validate one stream entry; raise :class:`InvalidCommand` naming the offending field."""
    size = sum(len(k.encode()) + len(v.encode()) for k, v in fields.items())
    if size > limits.max_entry_bytes:
        raise InvalidCommand(
            f"the entry is {size} bytes; at most {limits.max_entry_bytes}", field="entry"
        )
    command = fields.get("command")
    if command not in COMMAND_NAMES:
        shown = "missing" if command is None else repr(command[:40])
        raise InvalidCommand(
            f"field 'command' is {shown}; it must be one of {', '.join(COMMAND_NAMES)}",
            field="command",
        )
    data: dict[str, Any] = dict(fields)
    data.setdefault("request_id", entry_id)
    data.setdefault("reply_to", replies)
    if data["request_id"] == "":
        data["request_id"] = entry_id
    try:
        return _COMMAND.validate_python(data, context=command_context(limits, replies))
    except ValidationError as exc:
        message, field = _describe(exc)
        raise InvalidCommand(message, field=field) from exc
    except RecursionError:  # a backstop: json_depth_exceeds refuses such values first
        raise InvalidCommand("a field nests too deeply to be read", field=None) from None


def _describe(exc: ValidationError) -> tuple[str, str | None]:
    error = exc.errors(include_url=False)[0]
    loc = [str(part) for part in error["loc"] if not isinstance(part, int)]
    # The discriminated union puts the command name first in the location.
    if loc and loc[0] in COMMAND_NAMES:
        loc = loc[1:]
    field = loc[0] if loc else None
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        return f"field {field!r} is not part of the command; remove it", field
    if error["type"] == "missing":
        return f"field {field!r} is required", field
    if field is None and ":" in message:
        field = message.split(":", 1)[0]
        return f"field {field!r}{message[len(field) + 1 :]}".replace("' ", "': ", 1), field
    shown = ".".join(loc) if len(loc) > 1 else field  # repository.depth, say
    return f"field {shown!r}: {message[:1].lower()}{message[1:]}" if field else message, field


def reply_of_request_id(fields: dict[str, str], entry_id: str) -> str:
    """The request id to answer with, even for an entry that failed validation."""
    value = fields.get("request_id") or ""
    return value if REQUEST_ID_RE.fullmatch(value) else entry_id
