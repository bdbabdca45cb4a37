"""A create's repository and env, the operator's sources, and summaries, as data (SPEC §8)."""

from __future__ import annotations

import json

import pytest

from worker_manager.contract.workspace import (
    SourceError,
    check_env,
    checkout_grant,
    parse_sources,
    parse_summary,
)
from worker_manager.workers.state.summaries import overlaps

DEFAULT = parse_sources(["https://*", "http://*", "ssh://*"])


@pytest.mark.parametrize(
    ("url", "grant"),
    [
        ("https://github.com/a/b.git", "github.com:443"),
        ("https://GitHub.com:8443/a", "github.com:8443"),
        ("http://8.8.8.8/x", "8.8.8.8:80"),
        ("ssh://git@github.com/a/b.git", "github.com:22"),
    ],
)
def test_public_sources_are_granted_their_host_alone(url: str, grant: str) -> None:
    assert checkout_grant(url, DEFAULT) == grant


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("http://127.0.0.1/x", "not a source"),
        ("http://169.254.169.254/x", "not a source"),
        ("https://10.1.2.3/x", "not a source"),
        ("ftp://example.com/x", "not a source"),
        ("https://user:token@github.com/x", "credentials"),
        ("https://github.com/a b", "whitespace"),
        ("github.com/a", "not a source"),
    ],
)
def test_what_no_source_allows_is_refused(url: str, words: str) -> None:
    with pytest.raises(SourceError, match=words):
        checkout_grant(url, DEFAULT)


def test_an_operator_source_opens_a_private_host_literally() -> None:
    sources = parse_sources(["http://172.17.0.1:8080", "https://*.corp.example"])
    assert checkout_grant("http://172.17.0.1:8080/x.git", sources) == "172.17.0.1:8080"
    assert checkout_grant("https://git.corp.example/x", sources) == "git.corp.example:443"
    with pytest.raises(SourceError):
        checkout_grant("http://172.17.0.1:9090/x.git", sources)  # another port
    with pytest.raises(SourceError):
        checkout_grant("https://corp.example/x", sources)  # *.domain is not the domain


def test_env_refuses_the_deployments_names_naming_them() -> None:
    assert check_env({"FOO": "bar", "_X1": ""}) == {"FOO": "bar", "_X1": ""}
    for name in ("WM_TOKEN", "ANTHROPIC_BASE_URL", "HTTPS_PROXY", "NO_PROXY", "PATH", "HOME"):
        with pytest.raises(ValueError, match=name):
            check_env({name: "x"})
    with pytest.raises(ValueError, match="lower"):
        check_env({"lower": "x"})
    with pytest.raises(ValueError, match="at most 64"):
        check_env({f"V{i}": "x" for i in range(65)})


def test_a_summary_is_rebuilt_field_by_field_and_bounded() -> None:
    good = {"head": "ab" * 20, "branch": "main", "changed": [{"path": "a", "added": 1,
            "removed": 0, "evil": "x"}], "untracked": 2}  # fmt: skip
    assert parse_summary(json.dumps(good).encode()) == {
        "head": "ab" * 20,
        "branch": "main",
        "changed": [{"path": "a", "added": 1, "removed": 0}],
        "untracked": 2,
    }
    many = dict(good, changed=[{"path": str(i), "added": 1, "removed": 1} for i in range(900)])
    parsed = parse_summary(json.dumps(many))
    assert parsed is not None and len(parsed["changed"]) == 500
    assert parsed["changed_truncated"] == 900
    for bad in (b"\xff", "[]", "{}", json.dumps(dict(good, head="<script>")),
                json.dumps(dict(good, untracked=-1)), "x" * 200_000):  # fmt: skip
        assert parse_summary(bad) is None


def test_overlapping_changes_are_the_conflicts() -> None:
    found = overlaps(["a", "b", "c"], {"w2": ["b", "z"], "w3": ["y"], "w4": ["c", "a"]})
    assert found == {"w2": ["b"], "w4": ["a", "c"]}
