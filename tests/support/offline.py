"""Settings for tests that reach neither Redis nor Docker: the one place their defaults live."""

from __future__ import annotations

from typing import Any

from pydantic import SecretStr

from worker_manager.settings import Settings


def offline_settings(**more: Any) -> Settings:
    """A deployment's settings with nothing read from the environment or a file."""
    return Settings(  # type: ignore[call-arg]
        _env_file=None,
        redis_url="redis://127.0.0.1:6390/0",
        worker_secret=SecretStr("x" * 32),
        **more,
    )
