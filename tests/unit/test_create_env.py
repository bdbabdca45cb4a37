"""A create's ``env`` (SPEC §1, ``contract.env``): data for the agent, never a hook into what
runs with it; each refusal is ``invalid_command`` naming the field and the variable."""

from __future__ import annotations

import json

import pytest

from worker_manager.contract.commands import CreateCommand, parse_command
from worker_manager.contract.env import check_env, refusal
from worker_manager.core.errors import InvalidCommand
from worker_manager.settings import Settings

SETTINGS = Settings(_env_file=None, key_prefix="unit")  # type: ignore[call-arg]

#: One or more of each kind the rule refuses.
REFUSED = (
    # the deployment's
    "WM_TOKEN",
    "ANTHROPIC_BASE_URL",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "HTTPS_PROXY",
    "NO_PROXY",
    "SOCKS_PROXY",
    "PATH",
    "HOME",
    # the loader and the C library
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "DYLD_INSERT_LIBRARIES",
    "GLIBC_TUNABLES",
    "GCONV_PATH",
    # interpreters' startup hooks
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PYTHONHOME",
    "PYTHONUSERBASE",
    "PERL5OPT",
    "PERL5LIB",
    "RUBYOPT",
    "NODE_OPTIONS",
    "NODE_EXTRA_CA_CERTS",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    # shells
    "BASH_ENV",
    "ENV",
    "SHELLOPTS",
    "PS4",
    "PROMPT_COMMAND",
    # git's configuration and the programs it runs
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_PARAMETERS",
    "GIT_SSH_COMMAND",
    "GIT_PROXY_COMMAND",
    "GIT_ASKPASS",
    "GIT_EXEC_PATH",
    "GIT_SSL_NO_VERIFY",
    # TLS trust
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "OPENSSL_CONF",
)

ALLOWED = (
    "FOO",
    "_X1",
    "GREETING",
    "LANG",
    "LC_ALL",
    "TZ",
    "DEBUG",
    "PAGER",
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_COMMITTER_NAME",
    "GIT_COMMITTER_DATE",
    "MY_LD_PRELOAD_NOTE",  # a prefix rule is a prefix, not a substring
    "ENVIRONMENT",
)


@pytest.mark.parametrize("name", REFUSED)
def test_a_dangerous_name_is_refused_with_its_reason(name: str) -> None:
    reason = refusal(name)
    assert reason
    with pytest.raises(ValueError, match=f"variable '{name}' is refused: ") as caught:
        check_env({"FINE": "1", name: "x"})
    assert reason in str(caught.value)


@pytest.mark.parametrize("name", ALLOWED)
def test_ordinary_names_are_allowed(name: str) -> None:
    assert refusal(name) is None
    assert check_env({name: "v"}) == {name: "v"}


def test_names_values_and_counts_are_bounded() -> None:
    with pytest.raises(ValueError, match="lower"):
        check_env({"lower": "x"})
    with pytest.raises(ValueError, match="at most 64"):
        check_env({f"V{i}": "x" for i in range(65)})
    with pytest.raises(ValueError, match="NUL"):
        check_env({"V": "a\x00b"})
    with pytest.raises(ValueError, match="a value is a string"):
        check_env({"V": 1})


@pytest.mark.parametrize("name", ["LD_PRELOAD", "PYTHONPATH", "BASH_ENV", "OPENAI_API_KEY"])
def test_a_create_naming_one_is_invalid_command_naming_env_and_the_variable(name: str) -> None:
    fields = {
        "command": "create",
        "agent_type": "CUSTOM",
        "agent_command": json.dumps(["cat"]),
        "env": json.dumps({name: "/tmp/x"}),
    }
    with pytest.raises(InvalidCommand) as caught:
        parse_command(fields, "1700000000000-0", SETTINGS, replies=SETTINGS.keys.replies)
    assert caught.value.field == "env"
    assert "env" in caught.value.message and name in caught.value.message


def test_an_allowed_env_reaches_the_command() -> None:
    fields = {
        "command": "create",
        "agent_type": "CUSTOM",
        "agent_command": json.dumps(["cat"]),
        "env": json.dumps({"GREETING": "hello", "GIT_AUTHOR_NAME": "Ada"}),
    }
    command = parse_command(fields, "1700000000000-0", SETTINGS, replies=SETTINGS.keys.replies)
    assert isinstance(command, CreateCommand)
    assert command.env == {"GREETING": "hello", "GIT_AUTHOR_NAME": "Ada"}
