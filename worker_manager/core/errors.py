"""The error codes of SPEC §2 and the exception that carries one up to the reply writer."""

from __future__ import annotations

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_COMMAND = "invalid_command"
    NOT_FOUND = "not_found"
    CAPACITY_EXCEEDED = "capacity_exceeded"
    QUOTA_EXCEEDED = "quota_exceeded"
    BUILD_FAILED = "build_failed"
    CONFLICT = "conflict"
    INTERNAL = "internal"


class CommandError(Exception):
    """A command that is answered with ``ok=false``: the code and a sentence a person can act on."""

    def __init__(self, code: ErrorCode, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after


class InvalidCommand(CommandError):
    """Validation failed; the message names the offending field. Always dead-lettered."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(ErrorCode.INVALID_COMMAND, message)
        self.field = field
