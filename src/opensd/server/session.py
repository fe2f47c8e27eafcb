"""The web UI's login cookie. A browser page cannot attach a Bearer header to an <img> or a
navigation, so after the login page posts the token the server sets a cookie the Guard accepts as
well: HttpOnly (scripts cannot read it), SameSite=Strict (other sites' requests do not carry it).
Its value is derived from the token, not the token itself, so a leaked cookie does not reveal the
token to use against the API from elsewhere; changing the token logs every browser out."""
from __future__ import annotations

import hashlib
import hmac
from http.cookies import CookieError, SimpleCookie

COOKIE = "opensd_session"


def session_value(token: str) -> str:
    return hmac.new(token.encode(), b"opensd web UI session", hashlib.sha256).hexdigest()


def cookie_ok(cookie_header: str, token: str) -> bool:
    """True when the request's Cookie header holds the session for `token`."""
    if not cookie_header:
        return False
    try:
        jar = SimpleCookie(cookie_header)
    except CookieError:
        return False
    morsel = jar.get(COOKIE)
    return morsel is not None and hmac.compare_digest(morsel.value.encode(), session_value(token).encode())


def set_cookie_header(token: str, secure: bool) -> str:
    flags = "; Secure" if secure else ""
    return f"{COOKIE}={session_value(token)}; Path=/; HttpOnly; SameSite=Strict{flags}"


def clear_cookie_header() -> str:
    return f"{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
