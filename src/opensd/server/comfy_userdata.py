"""ComfyUI's per-user storage routes (/users, /settings, /userdata, /v2/userdata), which its
frontend uses for settings, saved workflows, keybindings and templates.

Everything lives as plain data files in one folder per user (`<data dir>/comfy-users/<user>`).
Nothing written here is ever executed, imported or served as active content: no route of ours
reads this folder for code, GET answers `attachment` + `nosniff` (except the user's own
stylesheet), and every path is confined to the user's folder (no `..`, no absolute or drive paths,
no NUL or control characters, no escaping symlink, bounded name lengths) with size caps.
opensd serves one user, `default`; the Guard's token and Origin checks apply to all of it."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from urllib.parse import unquote_to_bytes

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from .. import safe_paths
from ..atomic import write_atomic
from . import disk_room, safe_json

USER = "default"
SETTINGS_FILE = "comfy.settings.json"
MAX_FILE_BYTES = 16 << 20
MAX_USER_BYTES = 512 << 20
MAX_FILES = 10_000
MAX_DEPTH = 16


class Refused(Exception):
    """A request this store will not serve: an HTTP status and one line naming the problem."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class UserFiles:
    """The `default` user's folder, with every path confined to it."""

    def __init__(self, data_dir: Path):
        root = data_dir / "comfy-users" / USER
        for folder in ("workflows", "subgraphs"):  # the frontend lists both at start
            (root / folder).mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.lock = threading.RLock()  # settings updates hold it across read and write

    def path(self, rel: str, what: str = "file") -> Path:
        """`root/rel`, or Refused when `rel` is not a plain relative name inside the folder."""
        if not rel:
            raise Refused(400, f"{what}: a path is required")
        problem = safe_paths.name_problem(rel, what)
        if problem is not None:
            raise Refused(400, problem)
        parts = rel.split("/")
        if "" in parts or "." in parts:
            raise Refused(400, f"{what}: {rel[:80]!r} has an empty or '.' component")
        if len(parts) > MAX_DEPTH:
            raise Refused(400, f"{what}: more than {MAX_DEPTH} folder levels")
        path = safe_paths.inside(self.root, rel)
        if path is None:
            raise Refused(403, f"{what}: {rel[:80]!r} leads outside the user folder")
        return path

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def info(self, path: Path, base: Path | None = None) -> dict:
        st = path.stat()
        rel = path.relative_to(base or self.root).as_posix()
        return {"path": rel, "size": st.st_size, "modified": int(st.st_mtime * 1000),
                "created": int(st.st_ctime * 1000)}

    def files_under(self, folder: Path, recurse: bool):
        """Regular files (not symlinks) below `folder`; names starting with '.' are skipped, as
        ComfyUI's glob does (so workflows/.index.json is not listed as a workflow)."""
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")) if recurse else []
            for name in sorted(filenames):
                p = Path(dirpath) / name
                if not name.startswith(".") and p.is_file() and not p.is_symlink():
                    yield p

    def usage(self) -> tuple[int, int]:
        count = total = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                count += 1
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except OSError:
                    pass
        return count, total

    def write(self, path: Path, data: bytes, overwrite: bool) -> None:
        with self.lock:
            if path.is_dir():
                raise Refused(400, f"file: {self.relative(path)!r} is a folder")
            exists = path.exists()
            if exists and not overwrite:
                raise Refused(409, f"file: {self.relative(path)!r} already exists (overwrite=false)")
            count, total = self.usage()
            old = path.stat().st_size if exists else 0
            if not exists and count >= MAX_FILES:
                raise Refused(413, f"userdata: the user folder already holds {MAX_FILES} files")
            if total - old + len(data) > MAX_USER_BYTES:
                raise Refused(413, f"userdata: the user folder would exceed {MAX_USER_BYTES >> 20} MiB")
            try:
                disk_room.check(self.root, len(data) - old, "userdata")
            except disk_room.NoRoom as e:
                raise Refused(e.status, str(e)) from None
            self._make_parent(path)
            write_atomic(path, data)

    def move(self, source: Path, dest: Path, overwrite: bool) -> None:
        with self.lock:
            if not source.is_file():
                raise Refused(404, f"file: {self.relative(source)!r} not found")
            if dest.is_dir():
                raise Refused(400, f"dest: {self.relative(dest)!r} is a folder")
            if dest.exists() and not overwrite:
                raise Refused(409, f"dest: {self.relative(dest)!r} already exists (overwrite=false)")
            self._make_parent(dest)
            os.replace(source, dest)

    def _make_parent(self, path: Path) -> None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise Refused(409, f"file: a file stands where {self.relative(path)!r} needs a folder") from None

    # settings: one JSON object in the user's folder
    def settings(self) -> dict:
        try:
            data = json.loads(self.path(SETTINGS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError):
            return {}
        return data if isinstance(data, dict) else {}

    def update_settings(self, changes: dict) -> None:
        with self.lock:
            merged = {**self.settings(), **changes}
            self.write(self.path(SETTINGS_FILE), json.dumps(merged, indent=1).encode("utf-8"), overwrite=True)


def _refused(e: Refused) -> JSONResponse:
    return JSONResponse({"error": "Refused", "detail": str(e)}, status_code=e.status)


async def _body(request: Request) -> bytes:
    """The request body, refused past MAX_FILE_BYTES (read in chunks, never more than the cap)."""
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > MAX_FILE_BYTES:
            raise Refused(413, f"body: exceeds the {MAX_FILE_BYTES >> 20} MiB limit for one user file")
        chunks.append(chunk)
    return b"".join(chunks)


async def _json_body(request: Request):
    """The body as JSON whatever its Content-Type: ComfyUI's frontend posts settings as text/plain,
    which the Guard does not parse, so the depth and Unicode checks run here."""
    raw = await _body(request)
    try:
        value, problem = safe_json.loads(raw)
    except ValueError:
        raise Refused(400, "body: not valid JSON") from None
    if problem is not None:
        raise Refused(422, problem)
    return value


def _segments(request: Request) -> list[str]:
    """The still-encoded segments after '/userdata/': the frontend sends 'workflows%2Fa.json' as one
    segment, which the decoded path would split; so split the raw path, then decode each part."""
    raw = request.scope.get("raw_path") or request.url.path.encode()
    raw = raw.decode("latin-1")
    tail = raw[raw.find("/userdata/") + len("/userdata/"):]
    out = []
    for part in tail.split("/"):
        try:
            out.append(unquote_to_bytes(part).decode("utf-8"))
        except UnicodeDecodeError:
            raise Refused(400, "file: the path is not valid UTF-8") from None
    return out


def _flag(request: Request, name: str, default: bool) -> bool:
    value = request.query_params.get(name)
    return default if value is None else value.lower() in ("true", "1")


def router(store: UserFiles) -> APIRouter:
    api = APIRouter(tags=["ComfyUI user data"])

    @api.get("/users")
    def users():
        # one user: the frontend's single-user mode (no user picker)
        return {"storage": "server", "migrated": True}

    @api.post("/users")
    def add_user():
        return JSONResponse({"error": "opensd serves one ComfyUI user ('default'); users cannot be added"},
                            status_code=400)

    @api.get("/settings")
    def get_settings():
        return store.settings()

    @api.get("/settings/{setting_id}")
    def get_setting(setting_id: str):
        return store.settings().get(setting_id)

    @api.post("/settings")
    async def post_settings(request: Request):
        try:
            body = await _json_body(request)
            if not isinstance(body, dict):
                raise Refused(400, "body: expected a JSON object of setting id -> value")
            await run_in_threadpool(store.update_settings, body)
        except Refused as e:
            return _refused(e)
        return Response(status_code=200)

    @api.post("/settings/{setting_id}")
    async def post_setting(setting_id: str, request: Request):
        try:
            if len(setting_id) > 256:
                raise Refused(400, "setting id: longer than 256 characters")
            value = await _json_body(request)
            await run_in_threadpool(store.update_settings, {setting_id: value})
        except Refused as e:
            return _refused(e)
        return Response(status_code=200)

    @api.get("/userdata")
    def list_userdata(request: Request):
        try:
            folder = store.path(request.query_params.get("dir", ""), "dir")
        except Refused as e:
            return _refused(e)
        if not folder.is_dir():
            return JSONResponse({"error": "NotFound", "detail": "dir: no such folder"}, status_code=404)
        full, split = _flag(request, "full_info", False), _flag(request, "split", False)
        out = []
        for p in store.files_under(folder, _flag(request, "recurse", False)):
            rel = p.relative_to(folder).as_posix()
            out.append(store.info(p, folder) if full else [rel, *rel.split("/")] if split else rel)
        return out

    @api.get("/v2/userdata")
    def list_userdata_v2(path: str = ""):
        try:
            folder = store.path(path, "path") if path else store.root
        except Refused as e:
            return _refused(e)
        if not folder.is_dir():
            status = 404 if not folder.exists() else 400
            return JSONResponse({"error": "NotFound" if status == 404 else "BadRequest",
                                 "detail": f"path: {path!r} is not a folder"}, status_code=status)
        base = store.root
        out = []
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not (Path(dirpath) / d).is_symlink()]  # links stay unlisted
            for name in dirnames:
                out.append({"name": name, "path": (Path(dirpath) / name).relative_to(base).as_posix(),
                            "type": "directory"})
            for name in filenames:
                p = Path(dirpath) / name
                if p.is_symlink():
                    continue
                st = p.stat()
                out.append({"name": name, "path": p.relative_to(base).as_posix(), "type": "file",
                            "size": st.st_size, "modified": st.st_mtime})
        out.sort(key=lambda e: (e["type"] != "directory", e["name"].lower()))
        return out

    def target(request: Request) -> tuple[Path, Path | None]:
        parts = _segments(request)
        if len(parts) == 1:
            return store.path(parts[0]), None
        if len(parts) == 3 and parts[1] == "move":
            return store.path(parts[0]), store.path(parts[2], "dest")
        raise Refused(404, "file: encode '/' inside the file path as %2F (/userdata/{file} or "
                           "/userdata/{file}/move/{dest})")

    @api.get("/userdata/{file:path}")
    def get_userdata(request: Request):
        try:
            path, dest = target(request)
        except Refused as e:
            return _refused(e)
        if dest is not None:
            return JSONResponse({"error": "MethodNotAllowed", "detail": "move: use POST"}, status_code=405)
        if path == store.path("user.css"):
            # the frontend's page links it as a stylesheet: an empty one when the user has none
            return FileResponse(path, media_type="text/css") if path.is_file() else \
                Response("", media_type="text/css")
        if not path.is_file():
            return JSONResponse({"error": "NotFound", "detail": f"file: {store.relative(path)!r} not found"},
                                status_code=404)
        kind = "application/json" if path.suffix.lower() == ".json" else "application/octet-stream"
        return FileResponse(path, media_type=kind, content_disposition_type="attachment",
                            filename=path.name, headers={"X-Content-Type-Options": "nosniff"})

    @api.post("/userdata/{file:path}")
    async def post_userdata(request: Request):
        overwrite, full = _flag(request, "overwrite", True), _flag(request, "full_info", False)
        try:
            path, dest = target(request)
            if dest is not None:
                await run_in_threadpool(store.move, path, dest, overwrite)
                path = dest
            else:
                data = await _body(request)
                await run_in_threadpool(store.write, path, data, overwrite)
        except Refused as e:
            return _refused(e)
        return store.info(path) if full else store.relative(path)

    @api.delete("/userdata/{file:path}")
    def delete_userdata(request: Request):
        try:
            path, dest = target(request)
            if dest is not None:
                raise Refused(405, "move: use POST")
            with store.lock:
                if not path.is_file():
                    raise Refused(404, f"file: {store.relative(path)!r} not found")
                path.unlink()
        except Refused as e:
            return _refused(e)
        return Response(status_code=204)

    return api
