"""Fetching and verifying the pinned emoji npm tarballs (``npm pack``, sha512 integrity).

Part of :mod:`opensd.training.emoji_data`, which re-exports every public name here.
"""
from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .emoji_sources import SOURCES, MalformedTarball, NpmNotFound, RegistryError

NPM_TIMEOUT_S = 900


def _sri_sha512(path: Path) -> str:
    h = hashlib.sha512()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha512-" + base64.b64encode(h.digest()).decode("ascii")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_NETWORK_CODES = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ECONNRESET", "ETIMEDOUT", "ENETUNREACH",
                  "EHOSTUNREACH", "ERR_SOCKET_TIMEOUT", "network", "proxy")


def _fetch_pinned(style: str, dest: Path, say) -> Path:
    """The pinned tarball for ``style`` under ``dest``, fetched with ``npm pack`` unless already there."""
    spec = SOURCES[style]
    dest = dest.resolve()  # npm runs in a temp cwd: a relative --pack-destination would land elsewhere
    dest.mkdir(parents=True, exist_ok=True)
    final = dest / f"{spec.package}-{spec.version}.tgz"
    if final.is_file():
        if _sri_sha512(final) == spec.integrity:
            return final
        final.unlink()  # damaged or partial: fetch again

    npm = shutil.which("npm")
    if npm is None:
        raise NpmNotFound(
            f"npm not found on PATH: it is needed to fetch {spec.package}@{spec.version}. Install Node.js/npm, "
            f"or download the tarball yourself and pass it with tarballs={{'{style}': PATH}} "
            f"(CLI: --tarball {style}=PATH)."
        )
    name = f"{spec.package}@{spec.version}"
    say(f"fetching {name} with npm pack ...")
    with tempfile.TemporaryDirectory(dir=dest, prefix=".npm-pack-") as tmp:
        cmd = [npm, "pack", name, "--pack-destination", tmp, "--json", "--ignore-scripts"]
        try:
            proc = subprocess.run(cmd, cwd=tmp, capture_output=True, text=True, timeout=NPM_TIMEOUT_S,
                                  check=False)
        except FileNotFoundError as e:
            raise NpmNotFound(f"cannot run npm ({npm}): {e}") from e
        except subprocess.TimeoutExpired as e:
            raise RegistryError(f"`npm pack {name}` did not finish in {NPM_TIMEOUT_S}s; is the npm registry "
                                f"reachable?") from e
        if proc.returncode != 0:
            tail = "\n".join((proc.stderr or proc.stdout or "").strip().splitlines()[-8:])
            if any(code in tail for code in _NETWORK_CODES):
                raise RegistryError(f"cannot reach the npm registry to fetch {name}:\n{tail}")
            if "E404" in tail or "ETARGET" in tail:
                raise RegistryError(f"{name} is not on the npm registry:\n{tail}")
            raise RegistryError(f"`npm pack {name}` failed (exit {proc.returncode}):\n{tail}")
        tgzs = sorted(Path(tmp).glob("*.tgz"))
        if len(tgzs) != 1:
            raise RegistryError(f"`npm pack {name}` reported success but left {len(tgzs)} tarballs in {tmp}")
        got = _sri_sha512(tgzs[0])
        if got != spec.integrity:
            raise MalformedTarball(
                f"{name}: tarball integrity {got} does not match the pinned {spec.integrity}; "
                f"refusing to use it (registry or npm cache tampering, or a corrupt download: try "
                f"`npm cache verify` and rebuild)"
            )
        os.replace(tgzs[0], final)
    return final
