"""The server uses the embeddings folder as it is at each job: a textual inversion copied in while it
serves changes the next image whose prompt names it (as A1111 rescans before each generation), and
/sdapi/v1/embeddings lists each file with its width and vector count, split by whether the loaded
model can use it."""
from __future__ import annotations

import base64

import pytest
import torch
from fastapi.testclient import TestClient
from safetensors import safe_open
from safetensors.torch import save_file
from server_live import BASE, models_dir

from opensd.server.app import create_app
from opensd.server.settings import Settings

T2I = {"prompt": "a zqword on a table", "steps": 1, "width": 64, "height": 64, "seed": 7, "cfg_scale": 1}


def text_width(checkpoint) -> int:
    with safe_open(str(checkpoint), "pt") as f:
        return next(f.get_slice(k).get_shape()[1] for k in f.keys() if k.endswith("token_embedding.weight"))


@pytest.fixture()
def served(tmp_path):
    models = models_dir(tmp_path)
    emb = tmp_path / "models" / "embeddings"
    emb.mkdir()
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as c:
        assert c.post("/sdapi/v1/options", json={"sd_model_checkpoint": "tiny.safetensors"}).status_code == 200
        yield c, emb, text_width(models / "Stable-diffusion" / "tiny.safetensors")


def image(client) -> bytes:
    r = client.post("/sdapi/v1/txt2img", json=T2I)
    assert r.status_code == 200, r.text
    return base64.b64decode(r.json()["images"][0])


def vectors(n: int, width: int, seed: int) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * 3


def test_an_embedding_copied_in_while_serving_is_used_by_the_next_job(served):
    client, folder, width = served
    before = image(client)  # loads the model; "zqword" is plain words
    assert image(client) == before  # same seed, same image
    save_file({"emb_params": vectors(2, width, 1)}, folder / "zqword.safetensors")
    with_embedding = image(client)
    assert with_embedding != before
    # replaced by another file of the same name: the new vectors are used
    save_file({"emb_params": vectors(2, width, 2)}, folder / "zqword.safetensors")
    assert image(client) not in (before, with_embedding)
    (folder / "zqword.safetensors").unlink()
    assert image(client) == before  # gone again: plain words


def test_the_token_count_sees_a_new_embedding(served):
    client, folder, width = served
    count = lambda: client.post("/opensd/v1/tokens", json={"prompt": "zqword"}).json()  # noqa: E731
    plain = count()
    save_file({"emb_params": vectors(5, width, 1)}, folder / "zqword.safetensors")
    assert count() != plain


def test_embeddings_list_has_widths_and_counts_and_skips_other_families(served):
    client, folder, width = served
    save_file({"emb_params": vectors(3, width, 1)}, folder / "mine.safetensors")
    save_file({"clip_l": vectors(2, 768, 1), "clip_g": vectors(2, 1280, 2)}, folder / "xl_only.safetensors")
    save_file({"emb_params": vectors(4, width + 8, 1)}, folder / "other_width.safetensors")
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    item = lambda shape, n: {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None,  # noqa: E731
                             "shape": shape, "vectors": n}
    # the model is not loaded yet: nothing is known to misfit, and the list does not load it
    listed = client.get("/sdapi/v1/embeddings").json()
    assert listed == {"loaded": {"mine": item(width, 3), "xl_only": item(2048, 2),
                                 "other_width": item(width + 8, 4)}, "skipped": {}}
    image(client)
    listed = client.get("/sdapi/v1/embeddings").json()
    assert listed == {"loaded": {"mine": item(width, 3)},
                      "skipped": {"xl_only": item(2048, 2), "other_width": item(width + 8, 4)}}
    r = client.post("/sdapi/v1/refresh-embeddings")
    assert r.status_code == 200 and r.json() is None


def test_embeddings_in_every_embeddings_folder_are_used(tmp_path):
    models = models_dir(tmp_path)
    (tmp_path / "models" / "embeddings").mkdir()
    beside = tmp_path / "embeddings"  # A1111 keeps them beside models/, in the webui folder
    beside.mkdir()
    width = text_width(models / "Stable-diffusion" / "tiny.safetensors")
    save_file({"emb_params": vectors(1, width, 1)}, tmp_path / "models" / "embeddings" / "first.safetensors")
    save_file({"emb_params": vectors(1, width, 2)}, beside / "second.safetensors")
    save_file({"emb_params": vectors(1, width, 3)}, beside / "first.safetensors")  # the name is taken
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as c:
        assert set(c.get("/sdapi/v1/embeddings").json()["loaded"]) == {"first", "second"}
