"""Download one file over HTTP(S), only ever because a user asked for it (`opensd models add URL`).

The bytes go to a `.part` file; an interrupted transfer is resumed with a Range request, by the
retries here or by running the same command again. Redirects are followed by hand so a credential
header (a Hugging Face or Civitai token) is sent only to the host it was given for, never to the
storage host a download redirects to. The SHA-256 is computed as the bytes arrive; Hugging Face's
X-Linked-Etag (the SHA-256 of a file kept in LFS) is reported when a response carries it.
"""
from __future__ import annotations

import email.message
import hashlib
import http.client
import re
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from ..errors import OpenSDError
from ..version import __version__

CHUNK = 1 << 20
MAX_REDIRECTS = 10
_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)")
_UNSATISFIABLE = re.compile(r"bytes\s+\*/(\d+)")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class DownloadError(OpenSDError):
    """A download that failed; the message says why and what to do."""


class _Interrupted(Exception):
    """The connection ended before the whole body arrived: resumable."""


@dataclass
class Download:
    part: Path                  # the complete file, still under its .part name
    sha256: str
    size: int
    url: str                    # where the bytes came from, after redirects
    filename: str | None        # the server's name for it (Content-Disposition)
    linked_sha256: str | None   # Hugging Face's SHA-256 of an LFS file, when given


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None  # redirects are followed in _open, deciding which headers travel


_OPENER = urllib.request.build_opener(_NoRedirect)


def fetch(url: str, part: Path, auth: dict[str, str] | None = None, progress: bool = True,
          timeout: float = 60.0, retries: int = 3) -> Download:
    """Download `url` into `part` (resuming what it holds). `auth` maps a host name to the
    Authorization header value sent to that host only."""
    part.parent.mkdir(parents=True, exist_ok=True)
    attempt = 0
    while True:
        try:
            return _fetch_once(url, part, auth or {}, progress, timeout)
        except _Interrupted as e:
            have = part.stat().st_size if part.exists() else 0
            if attempt >= retries:
                raise DownloadError(f"{url}: the transfer stopped after {have} bytes ({e}); run the same "
                                    "command again to resume it") from None
            attempt += 1
            print(f"opensd: transfer interrupted ({e}); resuming at byte {have}", file=sys.stderr)


def _open(url: str, headers: dict[str, str], auth: dict[str, str], timeout: float):
    """(response, final url, X-Linked-Etag SHA-256 or None), following redirects."""
    linked = None
    for _ in range(MAX_REDIRECTS + 1):
        host = urlsplit(url).hostname or ""
        sent = dict(headers, **({"Authorization": auth[host]} if host in auth else {}))
        request = urllib.request.Request(url, headers=sent)
        try:
            response = _OPENER.open(request, timeout=timeout)
        except urllib.error.HTTPError as e:
            linked = linked or _linked_sha256(e.headers)
            if e.code in (301, 302, 303, 307, 308) and e.headers.get("Location"):
                url = urljoin(url, e.headers["Location"])
                e.close()
                continue
            if e.code == 416:
                return e, url, linked
            raise DownloadError(_http_problem(url, e.code, host in auth)) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            reason = getattr(e, "reason", e)
            raise DownloadError(f"{url}: cannot connect ({reason})") from None
        return response, url, linked or _linked_sha256(response.headers)
    raise DownloadError(f"{url}: more than {MAX_REDIRECTS} redirects")


def _http_problem(url: str, code: int, had_token: bool) -> str:
    if code in (401, 403):
        hint = ("the token was refused" if had_token else
                "it needs a token: set HF_TOKEN (Hugging Face) or CIVITAI_TOKEN (Civitai)")
        return f"{url}: HTTP {code}, access denied ({hint})"
    if code == 404:
        return f"{url}: HTTP 404, no such file"
    return f"{url}: HTTP {code}"


def _linked_sha256(headers) -> str | None:
    value = (headers.get("X-Linked-Etag") or "").strip().strip('"').lower() if headers else ""
    return value if _SHA256.match(value) else None


def _filename(headers) -> str | None:
    value = headers.get("Content-Disposition")
    if not value:
        return None
    msg = email.message.Message()
    msg["Content-Disposition"] = value
    return msg.get_filename()


def _fetch_once(url: str, part: Path, auth: dict[str, str], progress: bool, timeout: float) -> Download:
    from tqdm import tqdm

    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": f"opensd/{__version__}", "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    response, final, linked = _open(url, headers, auth, timeout)
    with response:
        status = response.status if hasattr(response, "status") else response.code
        if status == 416:  # nothing past what we hold: done if the server's size is ours, else start over
            m = _UNSATISFIABLE.match(response.headers.get("Content-Range", ""))
            if m and int(m.group(1)) == have:
                return _done(part, final, _filename(response.headers), linked)
            part.unlink(missing_ok=True)
            raise _Interrupted("the partial file does not fit the server's; starting over")
        start = 0
        if status == 206:
            m = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
            start = int(m.group(1)) if m else 0
        if start != have:  # the server sent the whole file (or another range): start over
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        sha = _sha256_of(part, have)
        mode = "ab" if have else "wb"
        got = have
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                   desc=Path(urlsplit(final).path).name[:40] or "download", disable=not progress)
        try:
            with open(part, mode) as f:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (http.client.IncompleteRead, ConnectionError, socket.timeout, OSError) as e:
                        raise _Interrupted(type(e).__name__) from None
                    if not chunk:
                        break
                    f.write(chunk)
                    sha.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
        if total is not None and got < total:
            raise _Interrupted(f"{got} of {total} bytes")
        return Download(part, sha.hexdigest(), got, final, _filename(response.headers), linked)


def _sha256_of(part: Path, n: int):
    """A SHA-256 object fed the first `n` bytes already in `part` (a resumed download's)."""
    sha = hashlib.sha256()
    if n:
        with open(part, "rb") as f:
            while block := f.read(CHUNK):
                sha.update(block)
    return sha


def _done(part: Path, url: str, filename: str | None, linked: str | None) -> Download:
    return Download(part, _sha256_of(part, part.stat().st_size).hexdigest(), part.stat().st_size, url, filename,
                    linked)


def get_json(url: str, auth: dict[str, str] | None = None, timeout: float = 60.0):
    """A small JSON document (an API answer), redirects and credentials handled as for downloads."""
    import json

    response, final, _ = _open(url, {"User-Agent": f"opensd/{__version__}", "Accept": "application/json"},
                               auth or {}, timeout)
    with response:
        try:
            return json.loads(response.read(16 << 20))
        except (ValueError, OSError, http.client.HTTPException) as e:
            raise DownloadError(f"{final}: not a JSON answer ({e})") from None
