"""Who may see the console: the operator's token, a signed session cookie, CSRF tokens.

Plain functions over the token and the time: the login form takes ``WM_UI_TOKEN`` and sets
a cookie holding an expiry and an HMAC of it under the token (no server-side session store; a
new token ends every session); ``Authorization: Bearer <token>`` works for scripts. A state-
changing request carries a CSRF token, an HMAC of the session cookie: a page of another origin
can make the browser send the cookie (SameSite keeps most of that away) but cannot read it.
"""

from __future__ import annotations

import hashlib
import hmac

COOKIE = "wm_session"
SESSION_SECONDS = 12 * 3600


def _mac(token: str, text: str) -> str:
    return hmac.new(token.encode(), text.encode(), hashlib.sha256).hexdigest()


def new_session(token: str, now: float) -> str:
    """A cookie value: its expiry and its MAC under the token."""
    expires = str(int(now) + SESSION_SECONDS)
    return f"{expires}.{_mac(token, 'session:' + expires)}"


def valid_session(token: str, cookie: str | None, now: float) -> bool:
    if not cookie or "." not in cookie:
        return False
    expires, _, mac = cookie.partition(".")
    if not expires.isdigit() or int(expires) < now:
        return False
    return hmac.compare_digest(mac, _mac(token, "session:" + expires))


def valid_token(token: str, given: str) -> bool:
    return bool(token) and hmac.compare_digest(given.strip().encode(), token.encode())


def csrf_for(token: str, cookie: str) -> str:
    """The CSRF token of a session (what its forms carry)."""
    return _mac(token, "csrf:" + cookie)


def valid_csrf(token: str, cookie: str | None, given: str) -> bool:
    return bool(cookie) and hmac.compare_digest(given, csrf_for(token, cookie or ""))
