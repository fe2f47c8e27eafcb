"""`opensd models add | list | info | verify | remove`: files land in the right subfolder by their detected
kind; downloads (from a loopback server) resume after a cut transfer, are checked against the expected or
published SHA-256 and leave nothing behind when refused; Hugging Face and Civitai addresses; pickles only
through the restricted unpickler; records re-hashed by verify."""
import hashlib
import io
import json
import os
import pickle
import socket

import pytest
import torch

from http_files import FileServer
from hypernet_fixtures import write_hypernet
from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.library.model_records import RECORDS, public_source
from opensd.library.synthetic import TINY, random_state_dict, write_random_checkpoint
from opensd.models.controlnet import ControlNet, ControlNetConfig
from reference import randomize_
from test_lora_pipeline import write_random_lora


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSD_CACHE_DIR", str(tmp_path / "cache"))
    for var in ("HF_TOKEN", "CIVITAI_TOKEN"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One file of each kind, outside any models folder."""
    src = tmp_path_factory.mktemp("src")
    write_random_checkpoint(src / "tiny-model.safetensors")
    write_random_lora(src / "ink.safetensors", 1)
    vae = {k.removeprefix("first_stage_model."): v for k, v in random_state_dict(TINY, seed=7).items()
           if k.startswith("first_stage_model.")}
    save_safetensors(vae, src / "soft-vae.safetensors")
    save_safetensors({"emb_params": torch.randn(2, 64)}, src / "shiny.safetensors")
    torch.save({"string_to_param": {"*": torch.randn(1, 64)}, "name": "old"}, src / "oldemb.pt")
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet, hint_downscale=8)), seed=1, std=0.1)
    save_controlnet(net, src / "control_tiny_canny.safetensors", "small")
    write_hypernet(src / "anime.pt", (64, 32), act="relu")
    return src


@pytest.fixture
def models(tmp_path):
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)  # an A1111 folder: the other kinds' folders are made
    return root


def run(*argv):
    return main([*argv])


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _records(root):
    return json.loads((root / RECORDS).read_text())["files"]


def _leftovers(root):
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("file,folder", [("tiny-model.safetensors", "Stable-diffusion"), ("ink.safetensors", "Lora"),
                                         ("soft-vae.safetensors", "VAE"), ("shiny.safetensors", "embeddings"),
                                         ("oldemb.pt", "embeddings"), ("control_tiny_canny.safetensors", "ControlNet"),
                                         ("anime.pt", "hypernetworks")])
def test_local_files_land_by_their_kind(sources, models, file, folder, capsys):
    assert run("models", "add", str(sources / file), "--models-dir", str(models)) == 0
    dest = models / folder / file
    assert capsys.readouterr().out.strip() == str(dest)
    assert _sha(dest) == _sha(sources / file)
    record = _records(models)[f"{folder}/{file}"]
    assert record["sha256"] == _sha(dest) and record["source"] == str((sources / file).resolve())
    assert (sources / file).exists()  # copied, not moved


def test_comfyui_layout_and_move_and_link(sources, tmp_path):
    root = tmp_path / "ComfyUI" / "models"
    (root / "checkpoints").mkdir(parents=True)
    moved = tmp_path / "ink.safetensors"
    moved.write_bytes((sources / "ink.safetensors").read_bytes())
    assert run("models", "add", str(moved), "--move", "--models-dir", str(root)) == 0
    assert (root / "loras" / "ink.safetensors").is_file() and not moved.exists()
    linked = tmp_path / "soft.safetensors"
    linked.write_bytes((sources / "soft-vae.safetensors").read_bytes())
    assert run("models", "add", str(linked), "--link", "--models-dir", str(root)) == 0
    assert os.path.samefile(root / "vae" / "soft.safetensors", linked)


def test_list_info_and_generate_by_name_stay_offline(sources, models, monkeypatch, capsys, tmp_path):
    for file in ("tiny-model.safetensors", "ink.safetensors"):
        assert run("models", "add", str(sources / file), "--models-dir", str(models), "--name", "m-" + file) == 0
    capsys.readouterr()

    def no_network(*args, **kwargs):
        raise AssertionError("a command that should stay offline opened a connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setenv("OPENSD_MODELS_DIR", str(models))
    assert run("models", "list", "--json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["kind"], r["name"]) for r in rows} == {("checkpoints", "m-tiny-model.safetensors"),
                                                       ("loras", "m-ink.safetensors")}
    assert all(r["sha256"] for r in rows)  # hashed when added
    assert run("models", "info", "m-ink") == 0
    out = capsys.readouterr().out
    assert "kind: LoRA" in out and "rank 4" in out and f"sha256: {_sha(sources / 'ink.safetensors')}" in out
    assert "source: " + str((sources / "ink.safetensors").resolve()) in out
    assert run("generate", "a cat <lora:m-ink:0.5>", "-m", "m-tiny-model", "--steps", "1",
               "-o", str(tmp_path / "x.png")) == 0


def _serve_lora(server, sources, path="/files/ink.safetensors"):
    data = (sources / "ink.safetensors").read_bytes()
    server.files[path] = data
    return data


def test_a_cut_transfer_is_resumed_with_a_range_request(sources, models):
    with FileServer() as server:
        data = _serve_lora(server, sources)
        server.cut["/files/ink.safetensors"] = [100_000]
        assert run("models", "add", server.base + "/files/ink.safetensors", "--models-dir", str(models),
                   "--sha256", hashlib.sha256(data).hexdigest(), "--no-progress") == 0
        ranges = [h.get("range") for h in server.requests_to("/files/ink.safetensors")]
    assert ranges == [None, "bytes=100000-"]
    assert (models / "Lora" / "ink.safetensors").read_bytes() == data
    assert _leftovers(models) == [RECORDS, "Lora/ink.safetensors"]
    assert _records(models)["Lora/ink.safetensors"]["source"] == server.base + "/files/ink.safetensors"


def test_an_interrupted_download_resumes_in_the_next_run(sources, models, capsys):
    with FileServer() as server:
        data = _serve_lora(server, sources)
        server.cut["/files/ink.safetensors"] = [50_000]
        url = server.base + "/files/ink.safetensors"
        assert run("models", "add", url, "--models-dir", str(models), "--retries", "0", "--no-progress") == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "run the same command again" in err[0]
        parts = list((models / ".opensd-downloads").iterdir())
        assert len(parts) == 1 and parts[0].stat().st_size == 50_000
        assert run("models", "add", url, "--models-dir", str(models), "--no-progress") == 0
        assert server.requests_to("/files/ink.safetensors")[-1]["range"] == "bytes=50000-"
    assert (models / "Lora" / "ink.safetensors").read_bytes() == data
    assert not (models / ".opensd-downloads").exists()


@pytest.mark.parametrize("expected", ["0" * 64, "abcdef0123"])
def test_a_hash_mismatch_keeps_nothing(sources, models, capsys, expected):
    with FileServer() as server:
        _serve_lora(server, sources)
        assert run("models", "add", server.base + "/files/ink.safetensors", "--models-dir", str(models),
                   "--sha256", expected, "--no-progress") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256:" in err[0] and expected in err[0]
    assert _leftovers(models) == []


def test_autov2_short_hash_and_bad_hash_flag(sources, models, capsys):
    with FileServer() as server:
        data = _serve_lora(server, sources)
        url = server.base + "/files/ink.safetensors"
        assert run("models", "add", url, "--models-dir", str(models), "--sha256", "xyz", "--no-progress") == 2
        assert "sha256:" in capsys.readouterr().err
        assert server.log == []  # a bad flag is found before anything is fetched
        assert run("models", "add", url, "--models-dir", str(models), "--no-progress",
                   "--sha256", hashlib.sha256(data).hexdigest()[:10].upper()) == 0


def test_hugging_face_repo_file_with_token_kept_on_its_host(sources, models, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret")
    with FileServer() as server:
        data = _serve_lora(server, sources, "/cdn/blob")
        server.redirects["/someone/styles/resolve/main/sub/ink.safetensors"] = "{other}/cdn/blob"
        server.headers["/someone/styles/resolve/main/sub/ink.safetensors"] = {
            "X-Linked-Etag": f'"{hashlib.sha256(data).hexdigest()}"'}
        assert run("models", "add", "someone/styles/sub/ink.safetensors", "--hf-endpoint", server.base,
                   "--models-dir", str(models), "--no-progress") == 0
        first = server.requests_to("/someone/styles/resolve/main/sub/ink.safetensors")[0]
        cdn = server.requests_to("/cdn/blob")[0]
    assert first["authorization"] == "Bearer hf_secret" and "authorization" not in cdn
    assert (models / "Lora" / "ink.safetensors").read_bytes() == data
    assert _records(models)["Lora/ink.safetensors"]["source"] == \
        "https://huggingface.co/someone/styles/resolve/main/sub/ink.safetensors"


def test_hugging_face_lfs_hash_is_checked(sources, models, capsys):
    with FileServer() as server:
        _serve_lora(server, sources, "/cdn/blob")
        server.redirects["/a/b/resolve/main/ink.safetensors"] = "{base}/cdn/blob"
        server.headers["/a/b/resolve/main/ink.safetensors"] = {"X-Linked-Etag": '"' + "1" * 64 + '"'}
        assert run("models", "add", f"{server.base.replace('127.0.0.1', 'localhost')}/x", "--models-dir",
                   str(models), "--no-progress") == 2  # 404: one line, nothing kept
        assert "404" in capsys.readouterr().err
        assert run("models", "add", "a/b/ink.safetensors", "--hf-endpoint", server.base, "--models-dir",
                   str(models), "--no-progress") == 2
    assert "1" * 64 in capsys.readouterr().err
    assert _leftovers(models) == []


def _civitai(server, sources, sha=None):
    data = _serve_lora(server, sources, "/storage/signed-blob")
    server.files["/storage/pickle-blob"] = b"never fetched"
    server.json["/api/v1/model-versions/456"] = {"id": 456, "files": [
        {"name": "inkStyle_v1.pt", "type": "Model", "primary": True, "metadata": {"format": "PickleTensor"},
         "hashes": {"SHA256": "0" * 64}, "downloadUrl": "https://civitai.com/api/download/models/456?type=Model&format=PickleTensor"},
        {"name": "inkStyle_v1.safetensors", "type": "Model", "metadata": {"format": "SafeTensor"},
         "hashes": {"SHA256": (sha or hashlib.sha256(data).hexdigest()).upper(), "AutoV2": "X"},
         "downloadUrl": "https://civitai.com/api/download/models/456?type=Model&format=SafeTensor"}]}
    server.json["/api/v1/models/123"] = {"id": 123, "modelVersions": [{"id": 456}, {"id": 400}]}
    server.redirects["/api/download/models/456"] = "{other}/storage/signed-blob"
    server.headers["/storage/signed-blob"] = {"Content-Disposition": 'attachment; filename="server-name.safetensors"'}
    return data


@pytest.mark.parametrize("link", ["https://civitai.com/models/123/ink-style?modelVersionId=456",
                                  "https://civitai.com/api/download/models/456", "https://civitai.com/models/123",
                                  "urn:air:sd1:lora:civitai:123@456"])
def test_civitai_links_fetch_the_safetensors_file_and_check_its_published_hash(sources, models, monkeypatch, link):
    monkeypatch.setenv("CIVITAI_TOKEN", "civ_secret")
    with FileServer() as server:
        data = _civitai(server, sources)
        assert run("models", "add", link, "--civitai-endpoint", server.base, "--models-dir", str(models),
                   "--no-progress") == 0
        download = server.requests_to("/api/download/models/456")[0]
        storage = server.requests_to("/storage/signed-blob")[0]
        assert server.requests_to("/storage/pickle-blob") == []
    assert download["authorization"] == "Bearer civ_secret" and "authorization" not in storage
    assert (models / "Lora" / "inkStyle_v1.safetensors").read_bytes() == data
    assert _records(models)["Lora/inkStyle_v1.safetensors"]["source"] == "https://civitai.com/api/download/models/456"


def test_civitai_published_hash_mismatch_keeps_nothing(sources, models, capsys):
    with FileServer() as server:
        _civitai(server, sources, sha="2" * 64)
        assert run("models", "add", "https://civitai.com/models/1?modelVersionId=456", "--civitai-endpoint",
                   server.base, "--models-dir", str(models), "--no-progress") == 2
    assert "publishes" in capsys.readouterr().err
    assert _leftovers(models) == []


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/opensd-pwned",))


def test_pickles_only_through_the_restricted_unpickler(sources, models, tmp_path, capsys):
    evil = tmp_path / "evil.ckpt"
    buf = io.BytesIO()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Boom()}, buf)
    evil.write_bytes(buf.getvalue())
    assert run("models", "add", str(evil), "--models-dir", str(models)) == 2
    assert capsys.readouterr().err.count("\n") == 1
    with FileServer() as server:
        server.files["/evil.ckpt"] = buf.getvalue()
        server.files["/disguised.safetensors"] = pickle.dumps({"a": 1})
        server.files["/oldemb.pt"] = (sources / "oldemb.pt").read_bytes()
        for path in ("/evil.ckpt", "/disguised.safetensors"):
            assert run("models", "add", server.base + path, "--models-dir", str(models), "--no-progress") == 2
            assert capsys.readouterr().err.count("\n") == 1
        assert _leftovers(models) == []
        assert run("models", "add", server.base + "/oldemb.pt", "--models-dir", str(models), "--no-progress") == 0
    assert not os.path.exists("/tmp/opensd-pwned")
    assert _leftovers(models) == [RECORDS, "embeddings/oldemb.pt"]


def test_a_name_taken_by_another_file_is_refused_and_the_same_file_is_only_recorded(sources, models, capsys):
    assert run("models", "add", str(sources / "ink.safetensors"), "--models-dir", str(models)) == 0
    assert run("models", "add", str(sources / "ink.safetensors"), "--models-dir", str(models)) == 0
    assert "already there" in capsys.readouterr().err
    assert run("models", "add", str(sources / "soft-vae.safetensors"), "--kind", "loras", "--name", "ink.safetensors",
               "--models-dir", str(models)) == 2
    assert "already exists and is a different file" in capsys.readouterr().err
    assert _sha(models / "Lora" / "ink.safetensors") == _sha(sources / "ink.safetensors")


def test_verify_and_remove(sources, models, capsys):
    for file in ("ink.safetensors", "soft-vae.safetensors"):
        assert run("models", "add", str(sources / file), "--models-dir", str(models)) == 0
    (models / "Lora" / "extra.safetensors").write_bytes((sources / "shiny.safetensors").read_bytes())
    capsys.readouterr()
    assert run("models", "verify", "--models-dir", str(models)) == 0
    out = capsys.readouterr().out
    assert "ok          Lora/ink.safetensors" in out and "unrecorded  Lora/extra.safetensors" in out
    lora = models / "Lora" / "ink.safetensors"
    data = bytearray(lora.read_bytes())
    data[-1] ^= 1  # one flipped bit, same size and (restored) modification time
    st = lora.stat()
    lora.write_bytes(bytes(data))
    os.utime(lora, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert run("models", "verify", "--models-dir", str(models)) == 1
    assert "changed     Lora/ink.safetensors" in capsys.readouterr().out
    assert run("models", "verify", "ink", "--models-dir", str(models)) == 1
    assert run("models", "verify", "--record-new", "--models-dir", str(models)) == 1
    assert "recorded    Lora/extra.safetensors" in capsys.readouterr().out
    assert run("models", "remove", "soft-vae", "--models-dir", str(models)) == 2  # stdin is not a terminal
    assert "--yes" in capsys.readouterr().err and (models / "VAE" / "soft-vae.safetensors").exists()
    assert run("models", "remove", "soft-vae", "--yes", "--models-dir", str(models)) == 0
    assert not (models / "VAE" / "soft-vae.safetensors").exists()
    assert "VAE/soft-vae.safetensors" not in _records(models)
    (models / "VAE").rmdir()
    lora.unlink()
    assert run("models", "verify", "--models-dir", str(models)) == 1
    assert "missing     Lora/ink.safetensors" in capsys.readouterr().out


def test_mistakes_are_one_line(sources, models, tmp_path, capsys):
    for argv, word in ((["models", "list"], "models-dir"),
                       (["models", "add", "not/a file", "--models-dir", str(models)], "source:"),
                       (["models", "add", str(sources / "ink.safetensors"), "--kind", "hypernet",
                         "--models-dir", str(models)], "kind:"),
                       (["models", "info", "nothing", "--models-dir", str(models)], "no model named"),
                       (["models", "add", "http://127.0.0.1:9/x.safetensors", "--models-dir", str(models),
                         "--no-progress", "--retries", "0"], "cannot connect")):
        assert run(*argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and word in err[0], (argv, err)
    assert _leftovers(models) == []


def test_sources_never_keep_tokens():
    assert public_source("https://me:pw@civitai.com/api/download/models/4?type=Model&token=abc") == \
        "https://civitai.com/api/download/models/4?type=Model"


def test_upscalers_are_detected_by_spandrel(models, tmp_path):
    pytest.importorskip("spandrel")
    from upscaler_files import rrdbnet, write_pth

    write_pth(tmp_path / "4x-thing.pth", rrdbnet())
    assert run("models", "add", str(tmp_path / "4x-thing.pth"), "--models-dir", str(models)) == 0
    assert (models / "ESRGAN" / "4x-thing.pth").is_file()
