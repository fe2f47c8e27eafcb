"""The server's front door, as one ASGI middleware (so WebSockets pass through it too):

- Host header: loopback names, an IP literal, the bound host, or --allow-host names (DNS-rebinding
  defence: a rebinding page's requests carry the attacker's domain name as Host);
  a wildcard bind (0.0.0.0/::) with a token configured accepts any Host, the token guards it.
- Origin header, when present: must be the request's own scheme://host[:port] or in --allow-origin
  (a page on another site cannot drive the API from the user's browser).
- Token, when configured: `Authorization: Bearer T`, or `Basic` (A1111's --api-auth user:password,
  or any user with password T); WebSockets may pass `?token=T` since browsers cannot set headers;
  the web UI's session cookie (session.py) after its login. The UI's static files need no token;
  a browser navigating to a page without either is sent to the login page (login_redirect.py).
- Body size: Content-Length over the cap, or a chunked body that grows past it, answers 413
  (uvicorn itself never delivers more than a declared Content-Length). Model uploads (PUT
  /api/etn/upload/...) have their own cap (max_upload_bytes) and reach their route unread, which
  streams them to disk and counts a chunked body itself.
- Requests a browser sends cross-site without a CORS preflight (forms, `fetch` in no-cors mode) never
  change state: a state-changing method with `Sec-Fetch-Site: cross-site`/`same-site` is refused like
  a foreign Origin, and `text/plain` / form-encoded bodies (the types that carry a JSON-looking body
  cross-site with no preflight) are refused on every route (415), unless the browser itself marks
  the request `Sec-Fetch-Site: same-origin` with our own Origin. Multipart and bodies without a
  Content-Type stay open to clients that are not browsers (no Origin, no Sec-Fetch-*).
- Scripts (no Origin, Sec-Fetch-* or Referer: every current browser sends Origin on a cross-site POST
  and Sec-Fetch-Site on every request) may post JSON under any of those types, as ComfyUI's own
  `urllib` examples and `requests.post(data=...)` do: such a body is relabelled application/json.
  So may Node's fetch (undici), which marks its requests `Sec-Fetch-Mode: cors` and nothing else: a
  browser sends Origin with every request in that mode (Fetch standard), and a cors-mode request
  cannot carry a forged body across sites without it.
- JSON bodies are read here once for every route and refused (422) when holding more values than a
  request needs, nested too deep or holding text that is not Unicode (see safe_json). Routes parse only bodies declared JSON (FastAPI's strict
  Content-Type, and the same rule in the routes that read the body themselves).
"""
from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
import json
from urllib.parse import parse_qs

from starlette.concurrency import run_in_threadpool

from . import safe_json
from .login_redirect import is_page_navigation, login_location
from .session import cookie_ok
from .settings import LOOPBACK_NAMES, Settings
from .ui_routes import is_public

OPEN_PATHS = ("/internal/ping", "/healthz")
WILDCARD_HOSTS = ("0.0.0.0", "::", "[::]", "")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
NO_PREFLIGHT_TYPES = ("text/plain", "application/x-www-form-urlencoded")  # multipart: see the docstring
STREAMED_UPLOADS = "/api/etn/upload/"


def _scripted(headers) -> bool:
    """A request no browser sent: browsers mark every request with Sec-Fetch-* or Origin/Referer, and
    one in "cors" mode always with Origin; Node's fetch sends Sec-Fetch-Mode: cors alone."""
    if any(h in headers for h in ("origin", "sec-fetch-site", "referer")):
        return False
    return headers.get("sec-fetch-mode", "cors").strip().lower() == "cors"


def _host_name(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    """An IP-literal Host cannot come from DNS rebinding (that needs the attacker's domain name)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
        return True
    except ValueError:
        return False


class Guard:
    def __init__(self, app, settings: Settings):
        self.app = app
        self.s = settings
        hosts = {h.lower() for h in LOOPBACK_NAMES} | {h.lower() for h in settings.allow_hosts}
        if settings.host not in WILDCARD_HOSTS:
            hosts.add(settings.host.lower())
        self.hosts = hosts
        self.any_host = settings.host in WILDCARD_HOSTS and bool(settings.api_token)
        self.origins = {o.rstrip("/").lower() for o in settings.allow_origins}

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        problem = self.check(scope, headers)
        if problem is not None:
            status, message = problem
            if status == 401 and is_page_navigation(scope, headers):
                return await _see_other(send, login_location(scope))
            return await _refuse(scope, receive, send, status, message)
        if scope["type"] == "websocket":
            return await self.app(scope, receive, send)
        length = headers.get("content-length")
        # A model upload is streamed to disk by its route (etn_upload.py), under its own cap.
        streamed = scope.get("method") == "PUT" and scope.get("path", "").startswith(STREAMED_UPLOADS)
        cap = self.s.max_upload_bytes if streamed else self.s.max_body_bytes
        if length is not None:
            if not length.isdigit():
                return await _refuse(scope, receive, send, 400, "Content-Length: not a number")
            if int(length) > cap:
                return await _refuse(scope, receive, send, 413, _too_large(cap, streamed, int(length)))
        relabel = _scripted(headers) and safe_json.content_type(headers) in NO_PREFLIGHT_TYPES + ("",)
        json_body = (safe_json.declared_json(headers) or relabel) and scope.get("method") not in SAFE_METHODS
        if not streamed and ((length is None and scope.get("method") in ("POST", "PUT", "PATCH"))
                             or (json_body and length != "0")):
            # Read the body (a chunked one up to the cap) before the app sees any of it, then replay.
            chunks, seen = [], 0
            while True:
                message = await receive()
                if message["type"] != "http.request":
                    return
                seen += len(message.get("body", b""))
                if seen > cap:
                    return await _json(send, 413, _too_large(cap, streamed))
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    break
            body = b"".join(chunks)
            if json_body and body.strip():
                try:
                    # in a thread: a large body takes seconds to parse and check, and the event loop
                    # serves every other request (progress, /interrupt, the websockets) meanwhile
                    _, problem = await run_in_threadpool(safe_json.loads, body)
                except ValueError:  # not JSON at all: each route says so in its own API's words
                    problem, relabel = None, False
                if problem is not None:
                    return await _json(send, 422, problem)
                if relabel:
                    scope = {**scope, "headers": [(k, v) for k, v in scope.get("headers", []) if k.lower() != b"content-type"]
                             + [(b"content-type", b"application/json")]}
            replay = [{"type": "http.request", "body": body, "more_body": False}]

            async def replay_receive():
                return replay.pop() if replay else await receive()

            return await self.app(scope, replay_receive, send)
        await self.app(scope, receive, send)

    def check(self, scope, headers) -> tuple[int, str] | None:
        host = _host_name(headers.get("host", ""))
        if not self.any_host and host not in self.hosts and not _is_ip(host):
            return 403, f"Host: {host or '(none)'!r} is not a name this server answers to (use --allow-host)"
        origin = headers.get("origin")
        if origin is not None and not self.origin_ok(scope, origin, headers.get("host", "")):
            return 403, f"Origin: cross-site request from {origin!r} refused (use --allow-origin)"
        if scope["type"] == "http" and scope.get("method") not in SAFE_METHODS:
            site = headers.get("sec-fetch-site")
            trusted = origin is not None and origin.rstrip("/").lower() in self.origins
            if site in ("cross-site", "same-site") and not trusted:
                return 403, (f"Sec-Fetch-Site: {site} request refused (a page on another site cannot drive "
                             "this API; use --allow-origin for a trusted one)")
            kind = safe_json.content_type(headers)
            # A page on this origin is no forger (browsers set Sec-Fetch-Site; pages cannot): ComfyUI's
            # own frontend posts settings and user data as text/plain.
            if kind in NO_PREFLIGHT_TYPES and not (site == "same-origin" and origin is not None) \
                    and not _scripted(headers):
                return 415, (f"Content-Type: {kind} is not accepted (any web page can send it without asking); "
                             "send JSON as application/json, files as multipart/form-data")
        preflight = scope.get("method") == "OPTIONS" and origin is not None and \
            "access-control-request-method" in headers  # CORS preflights carry no credentials
        path = scope.get("path", "")
        if self.s.api_token and path not in OPEN_PATHS and not is_public(path) and not preflight \
                and not self.token_ok(scope, headers) and not cookie_ok(headers.get("cookie", ""), self.s.api_token):
            return 401, "Authorization: a valid API token is required (Bearer token or Basic user:password)"
        return None

    def origin_ok(self, scope, origin: str, host: str) -> bool:
        origin = origin.rstrip("/").lower()
        if origin in self.origins:
            return True
        scheme = {"ws": "http", "wss": "https"}.get(scope.get("scheme", "http"), scope.get("scheme", "http"))
        own = f"{scheme}://{host.lower()}"
        return origin == own or (scheme == "http" and origin == own.removesuffix(":80"))

    def token_ok(self, scope, headers) -> bool:
        token = self.s.api_token
        auth = headers.get("authorization", "")
        kind, _, value = auth.partition(" ")
        if kind.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), token.encode())
        if kind.lower() == "basic":
            try:
                pair = base64.b64decode(value.strip(), validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            _, _, password = pair.partition(":")
            return hmac.compare_digest(pair.encode(), token.encode()) or hmac.compare_digest(
                password.encode(), token.encode())
        if scope["type"] == "websocket":
            q = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])[0]
            return bool(q) and hmac.compare_digest(q.encode(), token.encode())
        return False


async def _json(send, status: int, message: str, extra_headers=()):
    body = json.dumps({"error": _ERROR_NAMES.get(status, "Error"), "detail": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b'Bearer, Basic realm="opensd"'))
    await send({"type": "http.response.start", "status": status, "headers": headers + list(extra_headers)})
    await send({"type": "http.response.body", "body": body})


async def _see_other(send, location: str):
    headers = [(b"location", location.encode("latin-1")), (b"content-length", b"0"), (b"cache-control", b"no-store")]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b""})


_ERROR_NAMES = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 413: "PayloadTooLarge",
                415: "UnsupportedMediaType", 422: "InvalidArgument"}


def _mb(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB"


def _too_large(cap: int, streamed: bool, size: int | None = None) -> str:
    """The 413 message, for people: sizes in MB and the flag that raises the limit."""
    sent = f"{_mb(size)} is" if size is not None else "this request is"
    if streamed:
        return (f"body: {sent} more than this server's limit of {_mb(cap)} for one upload; start the server "
                "with a larger `opensd serve --max-upload-gb`")
    # a picture in a JSON body travels as base64 text, a third larger than its file
    return (f"body: {sent} more than this server's limit of {_mb(cap)} (an image is sent as text, a third "
            "larger than its file): send a smaller image, or start the server with a larger "
            "`opensd serve --max-body-mb`")


async def _refuse(scope, receive, send, status: int, message: str):
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.close", "code": 1008, "reason": message[:120]})
        return
    await _json(send, status, message)
