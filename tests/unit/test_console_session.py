"""The console's session rules: a cookie signed under the token, expiring; CSRF per session."""

from __future__ import annotations

from worker_manager.console import session
from worker_manager.console.throttle import SignInThrottle, ThrottleRules, client_key

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


def test_the_cookie_is_secure_when_the_sign_in_came_over_tls() -> None:
    def secure(mode: str = "auto", tls: bool = False, xfp: str = "", fwd: str = "") -> bool:
        return session.secure_cookie(
            mode, tls=tls, forwarded_proto=[xfp] if xfp else [], forwarded=[fwd] if fwd else []
        )

    assert not secure()
    assert secure(tls=True)
    assert secure(xfp="https") and secure(xfp="HTTPS") and secure(xfp="https, http")
    assert not secure(xfp="http")
    assert secure(fwd='for=192.0.2.1;proto="https";by=x') and secure(fwd="proto=https")
    assert not secure(fwd="for=192.0.2.1;proto=http") and not secure(fwd="host=https.example")
    assert secure("on") and not secure("off", tls=True, xfp="https")


def test_failures_back_off_per_client_after_a_few_free_ones() -> None:
    rules = ThrottleRules(free_failures=3, base_delay=1.0, max_delay=8.0, forget_after=100.0)
    throttle = SignInThrottle(rules)
    now = 1000.0
    for _ in range(3):
        assert throttle.retry_after("a", now) == 0
        throttle.failed("a", now)
    assert throttle.retry_after("a", now) == 0  # the free ones cost nothing
    waits = []
    for _ in range(5):
        throttle.failed("a", now)
        waits.append(throttle.retry_after("a", now))
        now += waits[-1]
    assert waits == [1, 2, 4, 8, 8]  # doubling, capped
    assert throttle.retry_after("b", now) == 0  # another client is not held up
    throttle.succeeded("a")
    assert throttle.retry_after("a", now) == 0
    throttle.failed("a", now)
    assert throttle.retry_after("a", now) == 0  # a success forgot the failures


def test_failures_from_many_addresses_drain_one_global_bucket() -> None:
    throttle = SignInThrottle(ThrottleRules(burst=10, refill_per_second=0.5))
    now = 0.0
    for i in range(10):
        assert throttle.retry_after(f"10.0.0.{i}", now) == 0
        throttle.failed(f"10.0.0.{i}", now)
    # Those who failed wait for the bucket: one token back in 2 s.
    assert throttle.retry_after("10.0.0.3", now) == 2
    # A client without a failure on record is not held up (the operator, a bearer script):
    # its one wrong guess puts it among those who wait.
    assert throttle.retry_after("10.0.1.1", now) == 0
    throttle.failed("10.0.1.1", now)
    assert throttle.retry_after("10.0.1.1", now) == 2
    now += 2
    assert throttle.retry_after("10.0.0.3", now) == 0
    throttle.failed("10.0.0.4", now)  # takes the token back
    # Failures forgotten after a quiet hour no longer count.
    later = now + ThrottleRules().forget_after + 1
    throttle.failed("10.0.1.2", later)  # keeps the bucket empty
    assert throttle.retry_after("10.0.0.3", later) == 0


def test_remembered_clients_are_bounded() -> None:
    throttle = SignInThrottle(ThrottleRules(max_clients=100, burst=1e9))
    for i in range(1000):
        throttle.failed(f"client-{i}", float(i))
    assert len(throttle._clients) == 100


def test_clients_are_counted_by_address_and_ipv6_by_its_64() -> None:
    assert client_key("192.0.2.7") == "192.0.2.7"
    assert client_key("::ffff:192.0.2.7") == "192.0.2.7"
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::2")
    assert client_key("2001:db8:1:2::1") != client_key("2001:db8:1:3::1")
    assert client_key(None) == "unknown"
