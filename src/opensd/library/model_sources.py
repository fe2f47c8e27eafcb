"""What `opensd models add SOURCE` was given, turned into something to copy or download:

- a local file;
- an http(s) address;
- a Hugging Face file, as `owner/repo/path/file.safetensors` (or `hf:owner/repo/file`, or the
  page address `https://huggingface.co/owner/repo/blob/main/file`): fetched from
  `{endpoint}/{owner/repo}/resolve/{revision}/{file}`, with $HF_TOKEN as a Bearer token if set;
- a Civitai model or version, as its page address (`https://civitai.com/models/123`, with
  `?modelVersionId=456` for a version), its download address (`/api/download/models/456`) or its
  AIR (`urn:air:sd1:lora:civitai:123@456`): the version's files are looked up through Civitai's
  API (`/api/v1/model-versions/{id}`, or `/api/v1/models/{id}` for the latest version), the
  SafeTensor model file chosen over a pickle, and its published SHA-256 checked; $CIVITAI_TOKEN is
  sent as a Bearer token to the Civitai host only.

Only Civitai links touch the network here (their API, because the user asked for the download).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

from ..errors import InvalidArgument
from .download import DownloadError, get_json

HF_ENDPOINT = "https://huggingface.co"
CIVITAI_ENDPOINT = "https://civitai.com"
_CIVITAI_HOSTS = ("civitai.com", "www.civitai.com")
_HF_HOSTS = ("huggingface.co", "www.huggingface.co", "hf.co")
_HF_FILE = re.compile(r"^(?:hf:(?://)?)?([\w.-]+/[\w.-]+)/(.+)$")
_AIR = re.compile(r"civitai:(\d+)@(\d+)")


@dataclass
class Remote:
    url: str
    label: str                                          # recorded as the source (no token in it)
    auth: dict[str, str] = field(default_factory=dict)  # host -> Authorization value
    name: str | None = None                             # the file name the source states
    sha256: str | None = None                           # the SHA-256 the source publishes


def parse_source(text: str, hf_endpoint: str = HF_ENDPOINT, civitai_endpoint: str = CIVITAI_ENDPOINT,
                 revision: str = "main") -> Path | Remote:
    """A local path, or where to download from. Civitai links are looked up through its API."""
    text = text.strip()
    if Path(text).expanduser().exists():
        return Path(text).expanduser()
    parts = urlsplit(text)
    civitai = urlsplit(civitai_endpoint).hostname
    if _AIR.search(text) or (parts.scheme in ("http", "https") and parts.hostname in (*_CIVITAI_HOSTS, civitai)):
        return _civitai(text, civitai_endpoint.rstrip("/"))
    if parts.scheme in ("http", "https"):
        if parts.hostname in _HF_HOSTS:
            return _hf_page(text, hf_endpoint.rstrip("/"))
        return Remote(text, text)
    m = _HF_FILE.match(text)
    if m and not text.startswith(("/", ".", "~")):
        return _hf(m.group(1), m.group(2), hf_endpoint.rstrip("/"), revision)
    raise InvalidArgument(f"source: {text!r} is not a file, an http(s) address, a Hugging Face owner/repo/file "
                          "or a Civitai link")


def _bearer(host: str | None, env: str) -> dict[str, str]:
    token = os.environ.get(env, "").strip()
    return {host: f"Bearer {token}"} if token and host else {}


def _hf(repo: str, file: str, endpoint: str, revision: str) -> Remote:
    url = f"{endpoint}/{repo}/resolve/{quote(revision, safe='')}/{quote(file)}"
    return Remote(url, f"{HF_ENDPOINT}/{repo}/resolve/{revision}/{file}", _bearer(urlsplit(endpoint).hostname, "HF_TOKEN"),
                  name=Path(file).name)


def _hf_page(url: str, endpoint: str) -> Remote:
    """https://huggingface.co/owner/repo/{blob,resolve}/REV/file -> the same file from `endpoint`."""
    path = urlsplit(url).path.strip("/").split("/")
    if len(path) < 5 or path[2] not in ("blob", "resolve"):
        raise InvalidArgument(f"source: {url} is not the address of a file in a Hugging Face repository "
                              "(https://huggingface.co/OWNER/REPO/blob/main/FILE)")
    return _hf("/".join(path[:2]), "/".join(path[4:]), endpoint, path[3])


def _civitai(text: str, endpoint: str) -> Remote:
    auth = _bearer(urlsplit(endpoint).hostname, "CIVITAI_TOKEN")
    version = _civitai_version(text, endpoint, auth)
    try:
        info = get_json(f"{endpoint}/api/v1/model-versions/{version}", auth)
    except DownloadError as e:
        raise DownloadError(f"source: Civitai model version {version}: {e}") from None
    files = [f for f in info.get("files", []) if isinstance(f, dict)] if isinstance(info, dict) else []
    models = [f for f in files if f.get("type", "Model") == "Model"] or files
    if not models:
        raise DownloadError(f"source: Civitai model version {version} lists no files")
    safest = [f for f in models if (f.get("metadata") or {}).get("format") == "SafeTensor"]
    chosen = (safest or [f for f in models if f.get("primary")] or models)[0]
    sha = str((chosen.get("hashes") or {}).get("SHA256", "")).lower() or None
    url = _on_endpoint(chosen.get("downloadUrl") or f"{endpoint}/api/download/models/{version}", endpoint)
    return Remote(url, f"{CIVITAI_ENDPOINT}/api/download/models/{version}", auth, name=chosen.get("name"),
                  sha256=sha)


def _civitai_version(text: str, endpoint: str, auth: dict[str, str]) -> int:
    """The model version a Civitai link names; a model page without one means its latest version."""
    air = _AIR.search(text)
    if air:
        return int(air.group(2))
    parts = urlsplit(text)
    query = parse_qs(parts.query)
    if query.get("modelVersionId", [""])[0].isdigit():
        return int(query["modelVersionId"][0])
    m = re.match(r"^/api/download/models/(\d+)", parts.path)
    if m:
        return int(m.group(1))
    m = re.match(r"^/models/(\d+)", parts.path)
    if not m:
        raise InvalidArgument(f"source: {text} is not a Civitai model, version or download address")
    model = get_json(f"{endpoint}/api/v1/models/{m.group(1)}", auth)
    versions = model.get("modelVersions") if isinstance(model, dict) else None
    if not versions or not isinstance(versions[0], dict) or "id" not in versions[0]:
        raise DownloadError(f"source: Civitai model {m.group(1)} lists no versions")
    return int(versions[0]["id"])  # Civitai lists the newest version first


def _on_endpoint(url: str, endpoint: str) -> str:
    """A civitai.com address moved onto `endpoint` (a mirror, or a test server)."""
    parts = urlsplit(url)
    if parts.hostname in _CIVITAI_HOSTS and endpoint != CIVITAI_ENDPOINT:
        return endpoint + parts.path + (f"?{parts.query}" if parts.query else "")
    return url
