"""The manager's HTTP face (``/livez``, ``/readyz``, ``/metrics``) and its logs."""

from __future__ import annotations

from pydantic import BaseModel, Field, SecretStr, field_validator

from worker_manager.contract.limits import KIB
from worker_manager.core.hostport import parse_host_port


class HttpSettings(BaseModel):
    http_addr: str = "127.0.0.1:8080"
    ui_token: SecretStr | None = Field(
        default=None,
        description="Enables the console at /ui: its login form takes this token (also a bearer "
        "token); unset: no console.",
    )
    ui_secure_cookie: str = Field(
        default="auto",
        pattern="^(auto|on|off)$",
        description="The console's session cookie is Secure (HTTPS only): auto, when the sign-in "
        "came over TLS or X-Forwarded-Proto/Forwarded says https; on; off.",
    )
    http_token: SecretStr | None = Field(
        default=None,
        description="Bearer token required by every HTTP endpoint except /livez; unset: none.",
    )
    http_max_body_bytes: int = Field(default=64 * KIB, ge=0)

    @field_validator("http_addr")
    @classmethod
    def _http_addr_shape(cls, value: str) -> str:
        parse_host_port(value)
        return value


class LogSettings(BaseModel):
    log_format: str = Field(default="auto", pattern="^(auto|json|console)$")
    log_level: str = "info"
