"""`opensd serve` flags and the exposure rule: a non-loopback bind needs a token or an explicit opt-out."""
from __future__ import annotations

import pytest

from opensd import cli
from opensd.errors import InvalidArgument
from opensd.server.settings import Settings, is_loopback


def test_serve_is_registered_with_its_flags(tmp_path):
    args = cli.build_parser().parse_args(
        ["serve", "--port", "7861", "--models-dir", str(tmp_path), "--api-token", "t", "--queue-size", "5",
         "--allow-origin", "http://ui.local:3000"])
    from opensd.cli.serve import settings_from

    s = settings_from(args)
    assert (s.host, s.port, s.api_token, s.queue_size) == ("127.0.0.1", 7861, "t", 5)
    assert s.allow_origins == ("http://ui.local:3000",)


def test_public_bind_without_token_is_refused(capsys):
    assert cli.main(["serve", "--host", "0.0.0.0", "--port", "1"]) == 2
    assert "--api-token" in capsys.readouterr().err


def test_token_and_opt_out_rules():
    assert Settings(host="127.0.0.1").check_exposure() is None
    assert Settings(host="::1").check_exposure() is None
    assert Settings(host="0.0.0.0", api_token="x").check_exposure() is None
    assert "WARNING" in Settings(host="0.0.0.0", insecure_no_token=True).check_exposure()
    with pytest.raises(InvalidArgument):
        Settings(host="192.168.1.2").check_exposure()
    assert is_loopback("127.0.0.5") and not is_loopback("10.0.0.1")
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--api-token", "x", "--insecure-no-token"])


def test_opensd_serve_runs_as_a_process(tmp_path):
    import os
    import subprocess
    import sys

    import httpx
    from server_live import free_port

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "opensd.cli", "serve", "--port", str(port),
                             "--outputs-dir", str(tmp_path / "out"), "--api-token", "tok"],
                            env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url)
        assert httpx.get(url + "/sdapi/v1/samplers").status_code == 401
        ok = httpx.get(url + "/sdapi/v1/samplers", headers={"Authorization": "Bearer tok"})
        assert ok.status_code == 200 and "Euler a" in [s["name"] for s in ok.json()]
        docs = httpx.get(url + "/docs", headers={"Authorization": "Bearer tok"})
        assert docs.status_code == 200 and "swagger" in docs.text.lower()
        paths = httpx.get(url + "/openapi.json", headers={"Authorization": "Bearer tok"}).json()["paths"]
        assert {"/sdapi/v1/txt2img", "/sdapi/v1/img2img", "/prompt", "/history/{prompt_id}"} <= set(paths)
    finally:
        proc.terminate()
        proc.wait(30)


def test_styles_file_and_wildcards_folder(tmp_path):
    from opensd.cli.serve import settings_from

    s = settings_from(cli.build_parser().parse_args(["serve", "--outputs-dir", str(tmp_path)]))
    assert (s.styles_file, s.wildcards_dir) == (tmp_path / "styles.csv", tmp_path / "wildcards")
    s = settings_from(cli.build_parser().parse_args(["serve", "--styles-file", str(tmp_path / "s.csv"),
                                                     "--wildcards-dir", str(tmp_path / "w")]))
    assert (s.styles_file, s.wildcards_dir) == (tmp_path / "s.csv", tmp_path / "w")


def test_ctrl_c_stops_the_server_while_a_request_waits_on_a_job(tmp_path):
    """SIGINT during a long A1111 txt2img: the server exits within seconds (it used to wait for the job
    to finish, i.e. minutes), without a C++ abort message."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    import httpx
    from server_live import free_port

    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "opensd.cli", "serve", "--port", str(port),
                             "--outputs-dir", str(tmp_path / "out")], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": "red heart", "steps": 150, "width": 512, "height": 512, "batch_size": 4}
    try:
        _wait_until_up(url)
        waiting = threading.Thread(target=lambda: _post_ignoring_errors(url + "/sdapi/v1/txt2img", body), daemon=True)
        waiting.start()
        deadline = time.time() + 60
        while time.time() < deadline and httpx.get(url + "/sdapi/v1/progress").json()["state"]["sampling_step"] < 1:
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        stopped = time.time()
        proc.wait(30)
        assert time.time() - stopped < 20
        assert "terminate called" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def _post_ignoring_errors(url, body):
    import httpx
    try:
        httpx.post(url, json=body, timeout=120)
    except httpx.TransportError:
        pass


def _wait_until_up(url: str, seconds: float = 60) -> None:
    import time

    import httpx
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(url + "/internal/ping").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)
