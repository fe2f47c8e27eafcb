"""DiT networks kept in ComfyUI's diffusion_models/ (or unet/) are whole models by name where the models
folder holds their text encoders and VAE (library/network_models.py): `opensd generate -m NAME`, the
A1111 API's sd-models and sd_model_checkpoint, and /opensd/v1/checkpoints (the web UI's picker) list
and take them as checkpoints, and give the image the network gives loaded by its path. Files there
that are no whole model we complete (a UNet alone, a video model, a ControlNet, a LoRA, a network
whose VAE is missing) are not listed, judged from their headers alone. On a tiny random Z-Image
model in ComfyUI's layout (z_image_fixtures)."""
from __future__ import annotations

import base64
import hashlib
import io
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from opensd.checkpoints import files as checkpoint_files
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.library.hashes import shorthash
from opensd.library.models_dir import ModelFolders
from opensd.library.network_models import resolve_model, whole_models
from opensd.server.app import create_app
from opensd.server.settings import Settings
from z_image_fixtures import z_image_models

SIZE, SEED, STEPS, PROMPT = 64, 5, 2, "a photo of a cat"
NET = "z_image_turbo_bf16.safetensors"
# files a diffusion_models/ folder holds that are no whole-image model we complete, as header shapes
NOT_MODELS = {
    "sd15_unet_only.safetensors": {"input_blocks.0.0.weight": (32, 4, 3, 3), "input_blocks.0.0.bias": (32,),
                                   "out.2.weight": (4, 32, 3, 3), "out.2.bias": (4,),
                                   "time_embed.0.weight": (128, 32)},
    "wan_video.safetensors": {"patch_embedding.weight": (64, 16, 1, 2, 2), "blocks.0.self_attn.q.weight": (64, 64),
                              "blocks.0.cross_attn.k.weight": (64, 64), "head.head.weight": (64, 64)},
    "flux_lora.safetensors": {"lora_unet_double_blocks_0_img_attn_proj.lora_down.weight": (4, 64),
                              "lora_unet_double_blocks_0_img_attn_proj.lora_up.weight": (64, 4)},
    "controlnet_canny.safetensors": {"input_blocks.0.0.weight": (32, 4, 3, 3), "zero_convs.0.0.weight": (32, 32, 1, 1),
                                     "input_hint_block.0.weight": (16, 3, 3, 3), "middle_block_out.0.weight": (32, 32, 1, 1)},
}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("netmodels")
    models, _ = z_image_models(tmp, seed=7)
    for name, shapes in NOT_MODELS.items():
        save_safetensors({k: torch.zeros(s) for k, s in shapes.items()}, models / "diffusion_models" / name)
    (models / "checkpoints").mkdir()
    return models, tmp


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def _generate(model: str, models, out) -> np.ndarray:
    assert main(["generate", PROMPT, "-m", model, "--models-dir", str(models), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--precision", "fp32", "--device", "cpu", "-o", str(out)]) == 0
    return _pixels(Image.open(out))


def test_only_the_completable_network_is_listed_from_headers_alone(env, monkeypatch):
    models, _ = env

    def no_tensor_reads(*a, **k):
        raise AssertionError("listing read tensor data")
    monkeypatch.setattr(checkpoint_files, "_load_safetensors", no_tensor_reads)
    folders = ModelFolders(models, include_builtin=False)
    assert [(m.kind, m.name) for m in whole_models(folders)] == [("unet", NET)]
    assert {m.name for m in folders.list("unet")} == {NET, *NOT_MODELS}  # ComfyUI's UNETLoader still has all
    assert resolve_model(folders, "z_image_turbo_bf16") == (models / "diffusion_models" / NET).resolve()
    for name in NOT_MODELS:
        with pytest.raises(InvalidArgument, match="no model named"):
            resolve_model(folders, name)


def test_a_network_without_its_vae_is_listed_once_the_vae_is_there(env, tmp_path):
    models, _ = env
    other = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders"):
        shutil.copytree(models / sub, other / sub)
    folders = ModelFolders(other, include_builtin=False)
    assert whole_models(folders) == []
    with pytest.raises(InvalidArgument, match=r"is the network diffusion_models/z_image_turbo_bf16.safetensors, "
                                              r"but the models folder has no VAE for it"):
        resolve_model(folders, "z_image_turbo_bf16")
    shutil.copytree(models / "vae", other / "vae")
    assert [m.name for m in whole_models(folders)] == [NET]


def test_a_gguf_network_in_unet_is_listed(env, tmp_path):
    import gguf
    from test_stored_weights import write_gguf

    models, _ = env
    other = tmp_path / "models"
    for sub in ("text_encoders", "vae"):
        shutil.copytree(models / sub, other / sub)
    (other / "unet").mkdir()
    sd = checkpoint_files.read_state_dict(models / "diffusion_models" / NET)
    write_gguf(other / "unet" / "z-image-Q8_0.gguf", sd, gguf.GGMLQuantizationType.Q8_0, {}, "lumina2")
    assert [m.name for m in whole_models(ModelFolders(other, include_builtin=False))] == ["z-image-Q8_0.gguf"]


def test_cli_by_name_gives_the_image_by_path(env, tmp_path):
    models, _ = env
    by_path = _generate(str(models / "diffusion_models" / NET), models, tmp_path / "path.png")
    by_name = _generate("z_image_turbo_bf16", models, tmp_path / "name.png")
    assert np.array_equal(by_name, by_path)
    assert by_name.std() > 0


def test_a1111_and_opensd_lists_and_switching_by_title(env, tmp_path):
    models, _ = env
    path = (models / "diffusion_models" / NET).resolve()
    want = _generate(str(path), models, tmp_path / "want.png")
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
        listed = {m["model_name"]: m for m in client.get("/sdapi/v1/sd-models").json()}
        assert listed["z_image_turbo_bf16"]["filename"] == str(path)
        assert "sd15_unet_only" not in listed and "flux_lora" not in listed
        ours = {c["name"]: c for c in client.get("/opensd/v1/checkpoints").json()["items"]}
        assert NET in ours and not set(NOT_MODELS) & set(ours)
        r = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": listed["z_image_turbo_bf16"]["title"]})
        assert r.status_code == 200, r.text
        request = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "cfg_scale": 1, "width": SIZE, "height": SIZE,
                   "sampler_name": "Euler", "scheduler": "Simple"}
        r = client.post("/sdapi/v1/txt2img", json=request)
        assert r.status_code == 200, r.text
        got = _pixels(Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))))
        options = client.get("/sdapi/v1/options").json()
        entry = next(m for m in client.get("/sdapi/v1/sd-models").json() if m["model_name"] == "z_image_turbo_bf16")
        current = client.get("/opensd/v1/checkpoints").json()["current"]
    assert np.abs(got - want).max() <= 1
    full = _sha256(path)
    assert entry["sha256"] == full and entry["hash"] == full[:10]  # hashed at load, as for checkpoints
    assert entry["title"] == options["sd_model_checkpoint"] == f"{NET} [{shorthash(full)}]"
    assert current == NET


def test_a_checkpoint_of_the_same_name_wins(env, tmp_path):
    models, _ = env
    other = tmp_path / "models"
    for sub in ("diffusion_models", "text_encoders", "vae"):
        shutil.copytree(models / sub, other / sub)
    (other / "checkpoints").mkdir()
    shutil.copyfile(other / "diffusion_models" / NET, other / "checkpoints" / NET)
    folders = ModelFolders(other, include_builtin=False)
    assert [(m.kind, m.name) for m in whole_models(folders)] == [("checkpoints", NET)]
    assert resolve_model(folders, NET) == (other / "checkpoints" / NET).resolve()


def _sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_flux_is_listed_only_with_every_part_it_cannot_run_without(tmp_path):
    """Flux.1 needs CLIP-L, T5-XXL and its VAE (the family's `required`): without T5 it is not listed."""
    from dit_fixtures import META_FLUX, flux_parts, load_tiny, write_split_files

    flux = load_tiny(tmp_path / "flux", "flux", flux_parts())
    files = write_split_files(tmp_path / "models", flux.model, "flux1", META_FLUX)
    folders = ModelFolders(tmp_path / "models", include_builtin=False)
    assert [m.name for m in whole_models(folders)] == ["flux1.safetensors"]
    files["t5xxl_fp16"].unlink()
    assert whole_models(folders) == []


def test_ray_workers_are_sent_the_network_by_name(env):
    from opensd.distributed.wire import from_wire, models_of

    models, _ = env
    folders = ModelFolders(models, include_builtin=False)
    path = (models / "diffusion_models" / NET).resolve()
    name, vae, _ = models_of(folders, {"model_path": str(path), "prompt": PROMPT})
    assert (name, vae) == (NET, None)
    payload, _ = from_wire(folders, {"model": name})
    assert payload["model_path"] == str(path)


def test_missing_parts_are_named_in_words():
    from opensd.checkpoints.part_files import label
    assert [label(p) for p in ("qwen3:2560", "qwen3:4096", "qwen3:1024", "flux2_vae", "t5xxl", "vae")] == [
        "Qwen3-4B text encoder", "Qwen3-8B text encoder", "Qwen3 (1024 wide) text encoder", "FLUX.2 VAE",
        "T5-XXL text encoder", "VAE"]
