"""A create's repository, the operator's sources, and summaries, as data (SPEC §8)."""

from __future__ import annotations

import json

import pytest

from worker_manager.contract.workspace import (
    SourceError,
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


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::a9fe:a9fe]",  # NAT64 form of 169.254.169.254
        "[64:ff9b::169.254.169.254]",
        "[2002:a9fe:a9fe::1]",  # 6to4 form
        "[::ffff:169.254.169.254]",  # IPv4-mapped
        "[::ffff:127.0.0.1]",
        "[64:ff9b::7f00:1]",
        "[2001:0:4136:e378:8000:63bf:5601:5601]",  # Teredo, client 169.254.169.254
    ],
)
def test_no_ipv6_form_of_a_special_ipv4_address_is_a_public_source(host: str) -> None:
    with pytest.raises(SourceError, match="not a source"):
        checkout_grant(f"https://{host}/x.git", DEFAULT)
    # A wide IPv6 source names IPv6 hosts, not the IPv4 addresses some of them carry.
    with pytest.raises(SourceError, match="not a source"):
        checkout_grant(f"https://{host}/x.git", parse_sources(["https://::/0"]))


def test_ipv6_forms_of_a_public_or_literally_named_ipv4_address_are_allowed() -> None:
    assert checkout_grant("https://[2606:4700::1111]/x", DEFAULT) == "[2606:4700::1111]:443"
    sources = parse_sources(["https://10.0.0.0/8"])
    assert checkout_grant("https://[::ffff:10.1.2.3]/x", sources) == "[::ffff:a01:203]:443"


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
