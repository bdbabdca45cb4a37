"""The Sentinel URL form (SPEC §6), parsed once for the manager and every wrapper."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker_base.config import redact_url
from worker_base.redis_urls import (
    SentinelUrl,
    database_of,
    is_sentinel_url,
    parse_sentinel_url,
)
from worker_manager.workers.resources.containment import without_credentials


def test_the_full_form() -> None:
    url = "redis+sentinel://wm:p%40ss@10.0.0.1:26380,[::1]:26381,sentinel-3/fleet/2"
    parsed = parse_sentinel_url(url)
    assert parsed == SentinelUrl(
        sentinels=(("10.0.0.1", 26380), ("::1", 26381), ("sentinel-3", 26379)),
        master="fleet",
        db=2,
        username="wm",
        password="p@ss",
    )
    assert parse_sentinel_url(parsed.render()) == parsed


def test_defaults_and_a_password_without_a_user() -> None:
    parsed = parse_sentinel_url("redis+sentinel://:secret@s1/mymaster")
    assert (parsed.username, parsed.password, parsed.db) == (None, "secret", 0)
    assert parsed.sentinels == (("s1", 26379),)
    assert database_of("redis+sentinel://s1/m/5") == "5"
    assert database_of("redis://h:1/3") == "3"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://s1:26379", "names its master"),
        ("redis+sentinel://s1:26379/", "names its master"),
        ("redis+sentinel://s1/m/x", "numeric db"),
        ("redis+sentinel://s1/m/1/2", "numeric db"),
        ("redis+sentinel://s1:port/m", "non-numeric port"),
        ("redis+sentinel://s1:70000/m", "out of range"),
        ("redis+sentinel://s1,,s2/m", "host:port pairs"),
        ("redis+sentinel://:1/m", "without a host"),
        ("redis+sentinel://user@s1/m", "[user]:password"),
        ("redis+sentinel://s1/m?ssl=true", "no query"),
        ("redis+sentinel://[::1/m", "malformed"),
    ],
)
def test_a_malformed_url_says_what_is_wrong(url: str, says: str) -> None:
    with pytest.raises(ValueError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_sentinel_url(url)


def test_the_password_never_reaches_a_log_or_the_relay() -> None:
    url = "redis+sentinel://wm:hunter2@s1:1,s2:2/m/1"
    assert "hunter2" not in redact_url(url)
    assert redact_url(url) == "redis+sentinel://wm:***@s1:1,s2:2/m/1"
    assert without_credentials(url) == "redis+sentinel://s1:1,s2:2/m/1"
    assert not is_sentinel_url("redis://s1/0")


hosts = st.sampled_from(["a", "10.1.2.3", "::1", "sentinel.example"])
texts = st.text(st.characters(codec="utf-8"), max_size=12)


@given(
    sentinels=st.lists(st.tuples(hosts, st.integers(1, 65535)), min_size=1, max_size=4),
    master=texts.filter(bool),
    db=st.integers(0, 15),
    username=st.none() | texts.filter(bool),
    password=st.none() | texts,
)
def test_render_and_parse_agree(
    sentinels: list[tuple[str, int]],
    master: str,
    db: int,
    username: str | None,
    password: str | None,
) -> None:
    if username is not None and password is None:
        password = ""  # a user alone is not a login: rendered as user:@
    url = SentinelUrl(tuple(sentinels), master, db, username, password)
    assert parse_sentinel_url(url.render()) == url
