"""The console's session rules: a cookie signed under the token, expiring; CSRF per session."""

from __future__ import annotations

from worker_manager.console import session

TOKEN = "t" * 24


def test_a_session_is_valid_until_it_expires_and_only_under_its_token() -> None:
    cookie = session.new_session(TOKEN, now=1000.0)
    assert session.valid_session(TOKEN, cookie, now=1000.0 + session.SESSION_SECONDS - 1)
    assert not session.valid_session(TOKEN, cookie, now=1000.0 + session.SESSION_SECONDS + 1)
    assert not session.valid_session("another-token-entirely", cookie, now=1001.0)
    expires, _, mac = cookie.partition(".")
    forged = f"{int(expires) + 10_000}.{mac}"  # a later expiry with the old MAC
    assert not session.valid_session(TOKEN, forged, now=1001.0)
    assert not session.valid_session(TOKEN, None, now=1001.0)
    assert not session.valid_session(TOKEN, "garbage", now=1001.0)


def test_csrf_tokens_belong_to_one_session() -> None:
    one = session.new_session(TOKEN, now=1000.0)
    two = session.new_session(TOKEN, now=2000.0)
    assert session.valid_csrf(TOKEN, one, session.csrf_for(TOKEN, one))
    assert not session.valid_csrf(TOKEN, two, session.csrf_for(TOKEN, one))
    assert not session.valid_csrf(TOKEN, None, session.csrf_for(TOKEN, one))


def test_the_token_compare_wants_the_whole_token() -> None:
    assert session.valid_token(TOKEN, f" {TOKEN}\n")  # as a form or a header may pad it
    assert not session.valid_token(TOKEN, TOKEN[:-1])
    assert not session.valid_token("", "")
