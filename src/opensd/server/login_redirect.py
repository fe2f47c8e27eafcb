"""A browser opening a page before signing in is sent to the login page instead of a bare 401, with
the page it asked for as `next` so the login page can return there. Only navigations are sent:
scripts, `fetch` and JSON clients keep the API's 401 (they cannot follow a login page anyway).

`next` is a same-origin path only, checked here and again by the login page (the page's check is
what stops a crafted `/login?next=https://elsewhere` link): anything a browser could resolve to
another host (`//host`, `/\\host`, a scheme, control characters) is refused, so it is no open redirect."""
from __future__ import annotations

from urllib.parse import quote, urlsplit

LOGIN_PAGE = "/login"


def safe_next(target: str) -> str | None:
    """`target` when it is a path on this origin, else None."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target:
        return None
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in target):  # browsers drop tabs/newlines: "/\t/host"
        return None
    parts = urlsplit(target)
    return target if not parts.scheme and not parts.netloc else None


def is_page_navigation(scope, headers) -> bool:
    """A browser loading a page, with no credentials of its own (a wrong token stays a 401)."""
    if scope["type"] != "http" or scope.get("method") != "GET" or "authorization" in headers:
        return False
    mode = headers.get("sec-fetch-mode")
    if mode is not None:  # every current browser says it; fetch() says cors/no-cors/same-origin
        return mode == "navigate"
    return "text/html" in headers.get("accept", "")


def login_location(scope) -> str:
    """Where to send the browser: the login page, with `next` when the asked-for page is a safe one."""
    path = scope.get("raw_path") or scope.get("path", "/").encode()
    query = scope.get("query_string", b"")
    target = (path + (b"?" + query if query else b"")).decode("latin-1")
    nxt = safe_next(target)
    return LOGIN_PAGE if nxt is None else f"{LOGIN_PAGE}?next={quote(nxt, safe='')}"
