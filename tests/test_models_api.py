"""The Models tab's routes (/opensd/v1/models...) without a browser: families, sizes, hashes (lazy,
cached, as A1111 writes them) and metadata read from the files; merge and convert as queued jobs with
progress whose results join the list; names only ever resolved inside the model folders."""
from __future__ import annotations

import time

import pytest
import torch
from fastapi.testclient import TestClient
from server_live import BASE

from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.library.hashes import lora_hash, model_hash
from opensd.library.merge import merge_to_file
from opensd.library.models_dir import BUILTIN_CHECKPOINT, ModelFolders
from opensd.library.synthetic import write_random_checkpoint
from opensd.server.app import create_app
from opensd.server.settings import Settings
from opensd.server.store import DONE, FINAL

BUILTIN = BUILTIN_CHECKPOINT.name


@pytest.fixture
def models(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSD_CACHE_DIR", str(tmp_path / "cache"))  # hashes start uncomputed
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    for i in (1, 2):
        write_random_checkpoint(root / "Stable-diffusion" / f"tiny{i}.safetensors", seed=i)
    lora = root / "Lora" / "style.safetensors"  # an SD1 LoRA (768-wide cross-attention), kohya's tags
    lora.parent.mkdir(parents=True)
    save_safetensors({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
                      torch.zeros(8, 768),
                      "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
                      torch.zeros(320, 8)}, lora, metadata={"ss_network_dim": "8", "ss_output_name": "style"})
    emb = root / "embeddings"
    emb.mkdir()
    save_safetensors({"clip_l": torch.zeros(2, 768), "clip_g": torch.zeros(2, 1280)}, emb / "xl-word.safetensors")
    save_safetensors({"emb_params": torch.zeros(1, 1024)}, emb / "sd2-word.safetensors")
    return root


def client(tmp_path, models_dir, **kw) -> TestClient:
    settings = Settings(outputs_dir=tmp_path / "out", models_dir=models_dir, **kw)
    return TestClient(create_app(settings), base_url=BASE, raise_server_exceptions=False)


def wait_job(c, job_id: str) -> dict:
    deadline = time.time() + 120
    while time.time() < deadline:
        job = c.get(f"/opensd/v1/jobs/{job_id}").json()
        if job["status"] in FINAL:
            return job
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_listing_reads_family_size_detail_and_metadata_and_hashes_lazily(tmp_path, models):
    with client(tmp_path, models) as c:
        listed = c.get("/opensd/v1/models").json()
        ckpts = {m["name"]: m for m in listed["checkpoints"]}
        assert set(ckpts) == {BUILTIN, "tiny1.safetensors", "tiny2.safetensors"}
        builtin = ckpts[BUILTIN]
        assert builtin["family"] == "small" and builtin["detail"].startswith("64 px")
        assert builtin["size"] == BUILTIN_CHECKPOINT.stat().st_size
        assert builtin["hash"] is None  # never hashed while listing
        hashed = c.post("/opensd/v1/models/hash", json={"kind": "checkpoints", "name": BUILTIN}).json()
        assert hashed["hash"] == model_hash(BUILTIN_CHECKPOINT) and len(hashed["hash"]) == 10
        again = {m["name"]: m for m in c.get("/opensd/v1/models").json()["checkpoints"]}
        assert again[BUILTIN]["hash"] == hashed["hash"]  # cached from now on

        assert listed["models_dir"] == str(models)  # the UI names the folder it reads
        (lora,) = listed["loras"]
        assert (lora["name"], lora["family"], lora["detail"]) == ("style.safetensors", "sd1", "rank 8, 1 modules")
        lora_short = c.post("/opensd/v1/models/hash", json={"kind": "loras", "name": "style.safetensors"}).json()
        assert lora_short["hash"] == lora_hash(models / "Lora" / "style.safetensors") and len(lora_short["hash"]) == 12
        info = c.get("/opensd/v1/models/loras/info", params={"name": "style.safetensors"}).json()
        assert info["metadata"] == {"ss_network_dim": "8", "ss_output_name": "style"}
        assert {e["name"]: e["family"] for e in listed["embeddings"]} == {"sd2-word.safetensors": "sd2",
                                                                          "xl-word.safetensors": "sdxl"}
        (control,) = listed["controlnet"]  # the built-in model's Canny ControlNet
        assert control["family"] == "small"
        assert "opensd.vae_scaling_factor" in c.get("/opensd/v1/models/checkpoints/info",
                                                    params={"name": BUILTIN}).json()["metadata"]


def test_names_resolve_only_inside_the_folders(tmp_path, models):
    (tmp_path / "outside.safetensors").write_bytes(BUILTIN_CHECKPOINT.read_bytes()[:100])
    with client(tmp_path, models) as c:
        for name in ("../outside.safetensors", str(tmp_path / "outside.safetensors"), "tiny1", "TINY1.safetensors"):
            r = c.post("/opensd/v1/models/hash", json={"kind": "checkpoints", "name": name})
            assert r.status_code == 422 and r.json()["detail"].startswith("name: no checkpoints model named"), name
        r = c.get("/opensd/v1/models/gligen/info", params={"name": "x"})
        assert r.status_code == 422
        bad = {"../escape.safetensors": "not a name inside the folder", "sub/x.safetensors": "must be a plain name",
               "x.ckpt": "must end in .safetensors", ".hidden": "letters, digits",
               "tiny2.safetensors": "one of the input models", "tiny1-copy": None}
        (models / "Stable-diffusion" / "tiny1-copy.safetensors").write_bytes(b"taken")
        bad["tiny1-copy"] = "'tiny1-copy.safetensors' exists in the checkpoints folder (set overwrite to replace it)"
        for output, words in bad.items():
            r = c.post("/opensd/v1/models/merge", json={"a": "tiny1.safetensors", "b": "tiny2.safetensors",
                                                        "output": output})
            assert r.status_code == 422 and r.json()["detail"].startswith("output: ") and words in r.json()["detail"]
        r = c.post("/opensd/v1/models/merge", json={"a": "tiny1.safetensors", "b": BUILTIN, "output": "x"})
        assert r.status_code == 422 and "same architecture" in r.json()["detail"]
        r = c.post("/opensd/v1/models/merge", json={"a": "tiny1.safetensors", "b": "tiny2.safetensors",
                                                    "mode": "add_difference", "output": "x"})
        assert r.status_code == 422 and r.json()["detail"].startswith("c: ")
        assert c.app.state.opensd.queue.pending_count() == 0


def test_merge_and_convert_run_as_jobs_and_their_results_join_the_list(tmp_path, models):
    with client(tmp_path, models) as c:
        r = c.post("/opensd/v1/models/merge", json={"a": "tiny1.safetensors", "b": "tiny2.safetensors",
                                                    "multiplier": 0.25, "output": "mix"})
        assert r.status_code == 202
        job = wait_job(c, r.json()["job_id"])
        assert job["status"] == DONE and job["result"] == {"output": "mix.safetensors", "model_kind": "checkpoints"}
        out = models / "Stable-diffusion" / "mix.safetensors"
        a, b, m = (read_state_dict(p) for p in (models / "Stable-diffusion" / "tiny1.safetensors",
                                                models / "Stable-diffusion" / "tiny2.safetensors", out))
        key = next(k for k in m if k.endswith("attn1.to_q.weight"))
        assert torch.allclose(m[key].float(), (a[key].float() * 0.75 + b[key].float() * 0.25).half().float())
        names = [x["name"] for x in c.get("/opensd/v1/models").json()["checkpoints"]]
        assert "mix.safetensors" in names
        recent = c.get("/opensd/v1/queue").json()["recent"][0]
        assert recent["label"] == "Merge tiny1.safetensors + tiny2.safetensors (weighted_sum, 0.25) -> mix.safetensors"
        assert recent["task"] == "merge"  # what the Queue tab shows beside it

        r = c.post("/opensd/v1/models/merge", json={"a": "tiny1.safetensors", "b": "tiny2.safetensors",
                                                    "output": "mix.safetensors"})
        assert r.status_code == 422 and "set overwrite to replace it" in r.json()["detail"]
        r = c.post("/opensd/v1/models/merge", json={"a": "tiny1.safetensors", "b": "tiny2.safetensors",
                                                    "output": "mix.safetensors", "overwrite": True, "multiplier": 1})
        assert wait_job(c, r.json()["job_id"])["status"] == DONE
        assert torch.equal(read_state_dict(out)[key], b[key])

        r = c.post("/opensd/v1/models/convert", json={"source": "tiny1.safetensors", "to": "diffusers",
                                                      "output": "tiny1-diffusers"})
        assert wait_job(c, r.json()["job_id"])["status"] == DONE
        assert (models / "Stable-diffusion" / "tiny1-diffusers" / "model_index.json").is_file()
        assert "tiny1-diffusers" in [x["name"] for x in c.get("/opensd/v1/models").json()["checkpoints"]]


def test_merge_reports_progress_and_stopping_it_writes_nothing(tmp_path):
    a = write_random_checkpoint(tmp_path / "a.safetensors", seed=1)
    b = write_random_checkpoint(tmp_path / "b.safetensors", seed=2)
    seen = []
    merge_to_file(tmp_path / "m.safetensors", a, b, progress=lambda i, n: seen.append((i, n)))
    total = seen[0][1]
    assert total > 100 and all(n == total for _, n in seen)
    assert [i for i, _ in seen] == sorted(i for i, _ in seen) and seen[-1][0] == total - 1

    class Stop(Exception):
        pass

    def stop_at_10(i, n):
        if i == 10:
            raise Stop
    with pytest.raises(Stop):
        merge_to_file(tmp_path / "never.safetensors", a, b, progress=stop_at_10)
    assert not (tmp_path / "never.safetensors").exists()


def test_a_server_without_models_dir_saves_under_its_data_folder(tmp_path):
    folders = ModelFolders(None, save_root=tmp_path / "data" / "models")
    assert folders.folders("loras") == []
    made = folders.save_folder("loras")
    assert made == (tmp_path / "data" / "models" / "Lora").resolve() and made.is_dir()
    (made / "new.safetensors").write_bytes(b"x")
    assert [m.name for m in folders.list("loras")] == ["new.safetensors"]
    comfy = tmp_path / "comfy"
    (comfy / "checkpoints").mkdir(parents=True)
    assert ModelFolders(comfy).save_folder("loras") == (comfy / "loras").resolve()  # ComfyUI's layout is kept
    assert ModelFolders(comfy).save_folder("embeddings") == (comfy / "embeddings").resolve()
    a1111 = tmp_path / "a1111"
    (a1111 / "Stable-diffusion").mkdir(parents=True)
    (a1111 / "LyCORIS").mkdir()
    assert ModelFolders(a1111).save_folder("loras") == (a1111 / "LyCORIS").resolve()  # an existing one first
    assert ModelFolders(a1111).save_folder("controlnet") == (a1111 / "ControlNet").resolve()


def test_the_routes_are_described_in_the_openapi_page(tmp_path, models):
    with client(tmp_path, models) as c:
        paths = c.get("/openapi.json").json()["paths"]
    for path in ("/opensd/v1/models", "/opensd/v1/models/{kind}/info", "/opensd/v1/models/hash",
                 "/opensd/v1/models/merge", "/opensd/v1/models/convert", "/opensd/v1/datasets",
                 "/opensd/v1/datasets/{name}/images", "/opensd/v1/datasets/{name}/images/{file}/caption",
                 "/opensd/v1/train", "/opensd/v1/train/jobs/{job_id}", "/opensd/v1/train/jobs/{job_id}/resume"):
        assert path in paths, path
    assert "multipart/form-data" in paths["/opensd/v1/datasets/{name}/images"]["post"]["requestBody"]["content"]


def test_listing_says_when_no_models_folder_is_set(tmp_path):
    """The Models tab tells a first-time user that only the built-in model is listed, and how to add theirs."""
    with client(tmp_path, None, start_worker=False) as c:
        listed = c.get("/opensd/v1/models").json()
    assert listed["models_dir"] is None
    assert [m["name"] for m in listed["checkpoints"]] == [BUILTIN]
