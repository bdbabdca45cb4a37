"""The deployment's bounds on a command (SPEC §1): part of the contract, set by the operator.

:class:`worker_manager.settings.Settings` carries these as ``WM_MAX_*``; a bare
``CommandLimits()`` holds SPEC §1's defaults.
"""

from __future__ import annotations

from pydantic import BaseModel

KIB = 1024
MIB = 1024 * KIB


class CommandLimits(BaseModel):
    max_instructions_bytes: int = 256 * KIB
    max_prompt_bytes: int = 256 * KIB
    max_entry_bytes: int = 1 * MIB
    max_allowed_commands: int = 256
    max_allowed_command_chars: int = 256
    max_metadata_pairs: int = 64
    max_modules: int = 16
