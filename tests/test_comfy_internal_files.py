"""GET /internal/files/{output,input,temp} (ComfyUI's internal route, which LoadImageOutput's
widget lists the output folder's images from): the files at the folder's top, newest first; no
folder, no link leading out; another type is a 400."""
import os
import time

from fastapi.testclient import TestClient
from server_live import BASE, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings


def test_lists_the_folders_files_newest_first(tmp_path):
    with TestClient(create_app(Settings(models_dir=models_dir(tmp_path), outputs_dir=tmp_path / "out")),
                    base_url=BASE) as client:
        out = client.app.state.opensd.comfy.dirs["output"]
        now = time.time()
        for age, name in ((30, "old.png"), (10, "new.png"), (20, "mid.txt")):
            (out / name).write_bytes(b"x")
            os.utime(out / name, (now - age, now - age))
        (out / "sub").mkdir()
        (out / "sub" / "deep.png").write_bytes(b"x")
        (tmp_path / "secret.png").write_bytes(b"x")
        os.symlink(tmp_path / "secret.png", out / "link.png")
        assert client.get("/internal/files/output").json() == ["new.png", "mid.txt", "old.png"]
        assert client.get("/api/internal/files/output").json() == ["new.png", "mid.txt", "old.png"]
        assert client.get("/internal/files/temp").json() == []
        r = client.get("/internal/files/models")
        assert r.status_code == 400 and r.json() == {"error": "Invalid directory type"}
        assert client.get("/internal/files/..%2F..").status_code in (400, 404)
