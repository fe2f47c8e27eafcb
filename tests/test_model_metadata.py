"""Model metadata: `opensd info FILE.safetensors` shows kind, family, every hash (SHA-256, AutoV1/V2/V3) and the
training metadata (ss_*, modelspec.*, the tag frequencies summarised); `opensd info IMAGE` still prints an
image's parameters; /sdapi/v1/loras gives the metadata in A1111's shape, with the trainer's name as alias."""
import hashlib
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from safetensors import safe_open
from server_live import BASE, models_dir

from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.library.models_dir import ModelFolders
from opensd.pipeline.infotext import save_image
from opensd.server.app import create_app
from opensd.server.settings import Settings
from test_lora_pipeline import write_random_lora

TAGS = {"10_ink style": {"ink": 30, "1girl": 12, "monochrome": 30}, "5_reg": {"1girl": 40, "solo": 7}}
META = {"ss_network_module": "networks.lora", "ss_output_name": "inkStyle", "ss_network_dim": "4",
        "ss_tag_frequency": json.dumps(TAGS), "ss_resolution": "(512, 512)", "ss_sd_model_name": "v1-5.safetensors",
        "ss_dataset_dirs": json.dumps({"10_ink style": {"n_repeats": 10, "img_count": 30}}),
        "ss_base_model_version": "sd_v1", "modelspec.architecture": "stable-diffusion-v1/lora",
        "modelspec.title": "Ink style", "ss_training_comment": "x" * 500}


@pytest.fixture(autouse=True)
def own_hash_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSD_CACHE_DIR", str(tmp_path / "cache"))


def write_trained_lora(path):
    write_random_lora(path, 1)
    with safe_open(path, "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    save_safetensors(tensors, path, metadata=META)
    return path


def test_info_of_a_lora_shows_hashes_and_training_metadata(tmp_path, capsys):
    lora = write_trained_lora(tmp_path / "ink_v2.safetensors")
    data = lora.read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert main(["info", str(lora)]) == 0
    out = capsys.readouterr().out.splitlines()
    sha = hashlib.sha256(data).hexdigest()
    legacy = hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    for line in ("kind: LoRA", "family: sd1", "detail: rank 4, 96 modules", f"sha256: {sha}",
                 f"AutoV1 (A1111 legacy hash): {legacy}", f"AutoV2 (A1111 model hash): {sha[:10]}",
                 f"AutoV3 (tensor data): {hashlib.sha256(data[header:]).hexdigest()[:12]}",
                 "  ss_tag_frequency: 2 folder(s), 4 distinct tags; most used: 1girl (52), ink (30), monochrome (30), "
                 "solo (7)", "  ss_dataset_dirs: 10_ink style: 30 images x 10", "modelspec:",
                 "  modelspec.title: Ink style"):
        assert line in out, (line, out)
    comment = next(line for line in out if line.startswith("  ss_training_comment"))
    assert comment.endswith("(500 characters)") and len(comment) < 220


def test_info_of_a_checkpoint_and_of_an_image(tmp_path, capsys):
    models = models_dir(tmp_path)
    assert main(["info", str(models / "Stable-diffusion" / "tiny.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "kind: checkpoint" in out and "family: small" in out and "64 px, eps" in out
    image = tmp_path / "x.png"
    save_image(Image.fromarray(np.zeros((8, 8, 3), np.uint8)), image, "a cat\nSteps: 3, Seed: 1")
    assert main(["info", str(image)]) == 0
    assert capsys.readouterr().out.strip() == "a cat\nSteps: 3, Seed: 1"
    (tmp_path / "note.txt").write_text("hello")
    assert main(["info", str(tmp_path / "note.txt")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_sdapi_loras_returns_a1111_metadata_and_the_alias_resolves(tmp_path):
    models = models_dir(tmp_path)
    write_trained_lora(models / "Lora" / "ink_v2.safetensors")
    write_random_lora(models / "Lora" / "plain.safetensors", 2)
    settings = Settings(models_dir=models, outputs_dir=tmp_path / "out", start_worker=False)
    with TestClient(create_app(settings), base_url=BASE) as c:
        entries = {e["name"]: e for e in c.get("/sdapi/v1/loras").json()}
    ink = entries["ink_v2"]
    assert ink["alias"] == "inkStyle" and ink["path"] == str((models / "Lora" / "ink_v2.safetensors").resolve())
    assert ink["metadata"]["ss_tag_frequency"] == TAGS  # a JSON object, as A1111 parses it
    assert ink["metadata"]["ss_network_dim"] == "4"
    assert list(ink["metadata"])[:4] == ["ss_sd_model_name", "ss_resolution", "ss_tag_frequency", "ss_network_module"]
    assert entries["plain"] == {"name": "plain", "alias": "plain", "path": str((models / "Lora" / "plain.safetensors")
                                                                                .resolve()),
                                "metadata": {"ss_network_module": "networks.lora"}}
    assert ModelFolders(models).resolve("loras", "inkStyle") == (models / "Lora" / "ink_v2.safetensors").resolve()
