"""Where the agents' API keys come from: the manager's environment (``WM_`` or the agents' own
names) or secret files (``<NAME>_FILE``, ``WM_SECRETS_DIR``), and never shown when printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr

from worker_manager.settings import Settings

NAMES = (
    "ANTHROPIC_API_KEY",
    "CLAUDE_CODE_OAUTH_TOKEN",
    "FACTORY_API_KEY",
    "WM_SECRETS_DIR",
    "WM_WORKER_SECRET",
)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        for variant in (name, f"WM_{name}", f"{name}_FILE", f"WM_{name}_FILE"):
            monkeypatch.delenv(variant, raising=False)


def load() -> Settings:
    return Settings(_env_file=None)  # type: ignore[call-arg]


def secret(value: object) -> str | None:
    return None if value is None else value.get_secret_value()  # type: ignore[attr-defined]


def test_plain_and_prefixed_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-plain")
    monkeypatch.setenv("FACTORY_API_KEY", "fk-plain")
    monkeypatch.setenv("WM_FACTORY_API_KEY", "fk-prefixed")
    settings = load()
    assert secret(settings.anthropic_api_key) == "sk-plain"
    assert secret(settings.factory_api_key) == "fk-prefixed"  # WM_ wins over the plain name
    assert secret(settings.claude_code_oauth_token) is None
    assert "sk-plain" not in repr(settings) and "sk-plain" not in str(settings.model_dump())


def test_init_by_field_name_still_works() -> None:
    settings = Settings(_env_file=None, anthropic_api_key=SecretStr("sk-init"))  # type: ignore[call-arg]
    assert secret(settings.anthropic_api_key) == "sk-init"


def test_secret_files(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "ANTHROPIC_API_KEY").write_text("sk-from-dir\n")
    (directory / "WM_WORKER_SECRET").write_text("derive-from-this")
    (directory / "FACTORY_API_KEY").write_text("fk-from-dir")
    token = tmp_path / "token"
    token.write_text("oauth-from-file\r\n")
    monkeypatch.setenv("WM_SECRETS_DIR", str(directory))
    monkeypatch.setenv("CLAUDE_CODE_OAUTH_TOKEN_FILE", str(token))
    monkeypatch.setenv("FACTORY_API_KEY", "fk-env-wins")
    settings = load()
    assert secret(settings.anthropic_api_key) == "sk-from-dir"
    assert secret(settings.claude_code_oauth_token) == "oauth-from-file"
    assert secret(settings.factory_api_key) == "fk-env-wins"
    assert secret(settings.worker_secret) == "derive-from-this"


def test_file_variable_wins_over_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ANTHROPIC_API_KEY").write_text("from-dir")
    (tmp_path / "key").write_text("from-file")
    monkeypatch.setenv("WM_SECRETS_DIR", str(tmp_path))
    monkeypatch.setenv("WM_ANTHROPIC_API_KEY_FILE", str(tmp_path / "key"))
    assert secret(load().anthropic_api_key) == "from-file"


def test_unreadable_file_names_the_file_not_the_content(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="ANTHROPIC_API_KEY_FILE: cannot read the secret file"):
        load()


def test_empty_file_is_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "ANTHROPIC_API_KEY").write_text("\n")
    monkeypatch.setenv("WM_SECRETS_DIR", str(tmp_path))
    assert load().anthropic_api_key is None
