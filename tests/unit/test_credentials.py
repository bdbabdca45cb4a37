"""The credentials the egress proxy adds for workers: parsed, matched and applied, as data."""

from __future__ import annotations

import base64

import pytest

from worker_manager.contract.credentials import (
    CredentialsError,
    HostCredential,
    parse_git_credentials,
)
from worker_manager.egress.credentials import Credentials, factory_grant
from worker_manager.egress.proxy import authority_names, same_host, sni_names


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_tokens_and_user_password_pairs_are_read() -> None:
    book = parse_git_credentials(
        '{"GitHub.com": "ghp_x", "git.internal:8443": {"username": "ci", "password": "pw"}}'
    )
    assert book == {
        "github.com": HostCredential("x-access-token", "ghp_x"),
        "git.internal:8443": HostCredential("ci", "pw"),
    }
    assert parse_git_credentials(None) == {} == parse_git_credentials("  ")
    assert "ghp_x" not in repr(book)  # a log line of the book shows no secret


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[1]", "JSON object"),
        ("{nope", "not JSON"),
        ('{"https://github.com": "t"}', "https://github.com"),
        ('{"github.com": ""}', "github.com"),
        ('{"github.com": {"username": "u"}}', "github.com"),
    ],
)
def test_a_malformed_book_is_refused_naming_the_host_not_the_secret(text: str, named: str) -> None:
    with pytest.raises(CredentialsError) as caught:
        parse_git_credentials(text)
    assert named in str(caught.value)
    assert '"t"' not in str(caught.value)


def test_a_git_host_gets_basic_auth_replacing_the_agents_own() -> None:
    creds = Credentials(git=parse_git_credentials('{"github.com": "tok", "h:8443": "p"}'))
    headers = {"Authorization": "Bearer agent-made-this-up", "Accept": "*/*"}
    assert creds.apply("GitHub.com.", 443, headers, "") == "git"
    assert headers["Authorization"] == basic("x-access-token", "tok")
    assert creds.intercepts("github.com", 443, "") and creds.intercepts("h", 8443, "")
    # A port-bound entry is that port only; other hosts are left alone.
    assert not creds.intercepts("h", 443, "")
    untouched = {"Authorization": "mine"}
    assert creds.apply("gitlab.com", 443, untouched, "") is None
    assert untouched == {"Authorization": "mine"}


def test_factory_placeholders_are_swapped_only_for_their_worker_and_host() -> None:
    creds = Credentials(factory_host="api.factory.ai", factory_key="fk-real")
    headers = {"Authorization": "Bearer wm-mine", "X-Other": "wm-mine-too"}
    assert creds.intercepts("api.factory.ai", 443, "wm-mine")
    assert creds.apply("api.factory.ai", 443, headers, "wm-mine") == "factory"
    assert headers == {"Authorization": "Bearer fk-real", "X-Other": "fk-real-too"}
    # Another worker's placeholder is not this worker's: sent on unchanged.
    theirs = {"Authorization": "Bearer wm-theirs"}
    assert creds.apply("api.factory.ai", 443, theirs, "wm-mine") is None
    assert theirs == {"Authorization": "Bearer wm-theirs"}
    # A worker without a placeholder, or another host: nothing opened, nothing swapped.
    assert not creds.intercepts("api.factory.ai", 443, "")
    elsewhere = {"Authorization": "Bearer wm-mine"}
    assert not creds.intercepts("example.com", 443, "wm-mine")
    assert creds.apply("example.com", 443, elsewhere, "wm-mine") is None
    # No key configured: no swap, whatever the worker sends.
    assert not Credentials(factory_host="api.factory.ai").intercepts("api.factory.ai", 443, "x")


def test_a_factory_worker_is_granted_factorys_api_over_https() -> None:
    assert factory_grant("api.factory.ai") == ["api.factory.ai:443"]
    assert factory_grant("10.0.0.5:8443") == ["10.0.0.5:8443"]
    assert factory_grant(None) == []


@pytest.mark.parametrize(
    ("authority", "name", "port", "names"),
    [
        (None, "git.example.com", 443, True),  # HTTP/1.0: no Host, nothing else named
        ("git.example.com", "git.example.com", 443, True),
        ("GIT.Example.com.", "git.example.com", 443, True),
        ("git.example.com:443", "git.example.com", 443, True),
        ("git.example.com:8443", "git.example.com", 443, False),
        ("evil.example.net", "git.example.com", 443, False),
        ("git.example.com.evil.example.net", "git.example.com", 443, False),
        ("", "git.example.com", 443, False),
        ("git.example.com evil", "git.example.com", 443, False),
        ("10.0.0.5:8080", "10.0.0.5", 8080, True),
        ("evil.example.net", "10.0.0.5", 8080, False),
        ("[::1]:80", "::1", 80, True),
        ("[0:0::1]", "::1", 80, True),
    ],
)
def test_a_request_must_name_the_destination_it_was_connected_to(
    authority: str | None, name: str, port: int, names: bool
) -> None:
    assert authority_names(authority, name, port) is names


def test_a_client_hello_must_name_the_destination_it_was_connected_to() -> None:
    assert sni_names(None, "git.example.com")
    assert sni_names("Git.Example.com", "git.example.com")
    assert not sni_names("evil.example.net", "git.example.com")
    # To an IP literal, a name is another host (a front end would route by it).
    assert not sni_names("git.example.com", "140.82.112.5")
    assert sni_names("140.82.112.5", "140.82.112.5")
    assert same_host("[::1]", "0::1") and not same_host("::1", "::2")
