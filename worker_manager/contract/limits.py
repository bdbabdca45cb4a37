"""The deployment's bounds on a command (SPEC §1): part of the contract, set by the operator.

:class:`worker_manager.settings.Settings` carries these as ``WM_MAX_*``; a bare
``CommandLimits()`` holds SPEC §1's defaults.
"""

from __future__ import annotations

from pydantic import BaseModel, Field, field_validator

from worker_manager.contract.workspace import DEFAULT_SOURCES, Source, parse_sources

KIB = 1024
MIB = 1024 * KIB
_UNITS = {"": 1, "b": 1, "k": KIB, "m": MIB, "g": 1024 * MIB, "t": 1024 * 1024 * MIB}


def parse_size(text: str) -> int:
    """A size as Docker writes one (``512m``, ``10g``, ``1.5g``; binary units) in bytes."""
    value = text.strip().lower()
    unit = value[-1] if value and value[-1] in _UNITS else ""
    number = value[: len(value) - len(unit)]
    try:
        amount = float(number)
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 512m or 10g") from None
    if not amount >= 0 or amount == float("inf"):
        raise ValueError(f"{text!r} is not a size such as 512m or 10g")
    return int(amount * _UNITS[unit])


class CommandLimits(BaseModel):
    max_instructions_bytes: int = 256 * KIB
    max_prompt_bytes: int = 256 * KIB
    max_entry_bytes: int = 1 * MIB
    max_allowed_commands: int = 256
    max_allowed_command_chars: int = 256
    max_metadata_pairs: int = 64
    #: The most copies one ``fork`` makes (SPEC §1 ``count``, ``WM_MAX_FORK``).
    max_fork: int = Field(default=16, ge=1, le=1000)
    #: The longest a ``grant``'s credential lives (SPEC §11 ``WM_GRANT_MAX_SECONDS``).
    grant_max_seconds: int = Field(default=86_400, ge=1)
    workspace_sources: list[str] = Field(
        default_factory=lambda: list(DEFAULT_SOURCES),
        description="The repositories a create may name (scheme://destination, the "
        "destination as in an egress grant): by default https, http and ssh to public hosts.",
    )

    @field_validator("workspace_sources")
    @classmethod
    def _workspace_sources(cls, value: list[str]) -> list[str]:
        """Checked at start, kept canonical (the message names the source)."""
        return [str(source) for source in parse_sources(value)]

    @property
    def sources(self) -> tuple[Source, ...]:
        # Not cached: a settings copy with other sources (model_copy) must not see these.
        return parse_sources(self.workspace_sources)
