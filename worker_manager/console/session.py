"""Who may see the console: the operator's token, a signed session cookie, CSRF tokens.

Plain functions over the token and the time: the login form takes ``WM_UI_TOKEN`` and sets
a cookie holding an expiry and an HMAC of it under the token (no server-side session store; a
new token ends every session); ``Authorization: Bearer <token>`` works for scripts. A state-
changing request carries a CSRF token, an HMAC of the session cookie: a page of another origin
can make the browser send the cookie (SameSite keeps most of that away) but cannot read it.

The cookie is ``Secure`` (sent back over HTTPS only) when the console is reached over TLS:
``WM_UI_SECURE_COOKIE`` ``auto`` (the default) decides per sign-in, ``on`` always, ``off`` never.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable

COOKIE = "wm_session"
SESSION_SECONDS = 12 * 3600
SECURE_COOKIE_MODES = ("auto", "on", "off")

_FORWARDED_HTTPS = re.compile(r'(?:^|[;,\s])proto\s*=\s*"?https"?\s*(?:$|[;,])', re.IGNORECASE)


def _mac(token: str, text: str) -> str:
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


#: An access user's name (``worker-manager access add``): what a cookie may name.
USER = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def new_session(token: str, now: float, user: str = "") -> str:
    """A cookie value: its expiry, who signed in (empty: the operator, by the token) and a MAC
    of both under the token."""
    expires = str(int(now) + SESSION_SECONDS)
    return f"{expires}.{user}.{_mac(token, f'session:{expires}:{user}')}"


def session_user(token: str, cookie: str | None, now: float) -> str | None:
    """Who a valid, unexpired cookie signed in (``""``: the operator); None for any other."""
    if not cookie or cookie.count(".") != 2:
        return None
    expires, user, mac = cookie.split(".")
    if not expires.isdigit() or int(expires) < now or (user and not USER.fullmatch(user)):
        return None
    if not hmac.compare_digest(mac, _mac(token, f"session:{expires}:{user}")):
        return None
    return user


def valid_session(token: str, cookie: str | None, now: float) -> bool:
    return session_user(token, cookie, now) is not None


def valid_token(token: str, given: str) -> bool:
    return bool(token) and hmac.compare_digest(given.strip().encode(), token.encode())


def csrf_for(token: str, cookie: str) -> str:
    """The CSRF token of a session (what its forms carry)."""
    return _mac(token, "csrf:" + cookie)


def valid_csrf(token: str, cookie: str | None, given: str) -> bool:
    return bool(cookie) and hmac.compare_digest(given, csrf_for(token, cookie or ""))


def secure_cookie(
    mode: str, *, tls: bool, forwarded_proto: Iterable[str], forwarded: Iterable[str]
) -> bool:
    """Whether a new session cookie gets ``Secure``.

    ``auto``: when the request came over TLS, or a proxy in front says it did
    (``X-Forwarded-Proto: https``, or ``Forwarded: proto=https``, in any of its hops). Those
    headers need no trust: they can only make the cookie stricter, and a client that lies about
    them gets a cookie its own browser will not send back over plain HTTP."""
    if mode == "on":
        return True
    if mode == "off":
        return False
    if tls:
        return True
    if any(p.strip().lower() == "https" for h in forwarded_proto for p in h.split(",")):
        return True
    return any(_FORWARDED_HTTPS.search(h) for h in forwarded)
