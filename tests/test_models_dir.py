"""ModelFolders: A1111 and ComfyUI layouts, names resolved only inside their folder."""
from __future__ import annotations

import os

import pytest

from opensd.errors import InvalidArgument
from opensd.library.models_dir import BUILTIN_CHECKPOINT, AmbiguousName, ModelFolders


def touch(path, data=b"x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def a1111(tmp_path):
    root = tmp_path / "models"
    touch(root / "Stable-diffusion" / "sd15" / "dream.safetensors")
    touch(root / "Stable-diffusion" / "base.ckpt")
    touch(root / "Stable-diffusion" / "notes.txt")
    touch(root / "Lora" / "styles" / "ink.safetensors")
    touch(root / "VAE" / "vae-ft.safetensors")
    (root / "Stable-diffusion" / "diffusers-model").mkdir()
    touch(root / "Stable-diffusion" / "diffusers-model" / "model_index.json", b"{}")
    return root


def test_a1111_layout_lists_weights_and_the_builtin(a1111):
    f = ModelFolders(a1111)
    names = [m.name for m in f.list("checkpoints")]
    assert names == sorted(names, key=str.lower)
    assert {"sd15/dream.safetensors", "base.ckpt", "diffusers-model", BUILTIN_CHECKPOINT.name} <= set(names)
    assert "notes.txt" not in names
    assert [m.name for m in f.list("loras")] == ["styles/ink.safetensors"]
    assert [m.name for m in f.list("vae")] == ["vae-ft.safetensors"]
    assert f.list("embeddings") == []
    assert BUILTIN_CHECKPOINT.name not in [m.name for m in ModelFolders(a1111, include_builtin=False).list("checkpoints")]


def test_comfyui_layout(tmp_path):
    root = tmp_path / "models"
    touch(root / "checkpoints" / "x.safetensors")
    touch(root / "loras" / "y.safetensors")
    f = ModelFolders(root, include_builtin=False)
    assert [m.name for m in f.list("checkpoints")] == ["x.safetensors"]
    assert f.resolve("loras", "y") == (root / "loras" / "y.safetensors").resolve()


def test_comfyui_part_and_config_folders(tmp_path):
    root = tmp_path / "models"
    touch(root / "unet" / "a.safetensors")
    touch(root / "diffusion_models" / "b.safetensors")
    touch(root / "text_encoders" / "clip_l.safetensors")
    touch(root / "configs" / "v1-inference.yaml")
    touch(root / "configs" / "notes.txt")
    f = ModelFolders(root, include_builtin=False)
    assert [m.name for m in f.list("unet")] == ["a.safetensors", "b.safetensors"]
    assert [m.name for m in f.list("clip")] == ["clip_l.safetensors"]
    assert [m.name for m in f.list("configs")] == ["v1-inference.yaml"]  # configs are yaml, not weights


@pytest.mark.parametrize("name,expected", [
    ("sd15/dream.safetensors", "Stable-diffusion/sd15/dream.safetensors"),
    ("SD15/DREAM.safetensors", "Stable-diffusion/sd15/dream.safetensors"),
    ("sd15/dream", "Stable-diffusion/sd15/dream.safetensors"),
    ("dream", "Stable-diffusion/sd15/dream.safetensors"),
    ("sd15\\dream.safetensors", "Stable-diffusion/sd15/dream.safetensors"),
    ("base", "Stable-diffusion/base.ckpt"),
])
def test_resolve_spellings(a1111, name, expected):
    assert ModelFolders(a1111).resolve("checkpoints", name) == (a1111 / expected).resolve()


@pytest.mark.parametrize("name", ["../Lora/styles/ink.safetensors", "/etc/passwd", "..\\..\\x", "a\x00b",
                                  "", "   ", "missing.safetensors", "notes.txt", None, 42])
def test_resolve_refuses_names_outside_or_unknown(a1111, name):
    with pytest.raises(InvalidArgument) as e:
        ModelFolders(a1111).resolve("checkpoints", name)
    assert "checkpoints" in str(e.value)


def test_symlink_leading_outside_is_not_listed(a1111, tmp_path):
    secret = touch(tmp_path / "secret" / "private.safetensors")
    os.symlink(secret, a1111 / "Stable-diffusion" / "link.safetensors")
    f = ModelFolders(a1111)
    assert "link.safetensors" not in [m.name for m in f.list("checkpoints")]
    with pytest.raises(InvalidArgument):
        f.resolve("checkpoints", "link.safetensors")


def test_bad_root_and_kind(tmp_path):
    with pytest.raises(InvalidArgument):
        ModelFolders(tmp_path / "nope")
    with pytest.raises(InvalidArgument):
        ModelFolders(tmp_path).list("photomaker")  # a ComfyUI folder opensd does not read
    assert [m.path for m in ModelFolders(None).list("checkpoints")] == [BUILTIN_CHECKPOINT]


def test_a_name_that_fits_several_files_is_refused_listing_them(tmp_path):
    root = tmp_path / "models"
    for name in ("Lora/a/ink.safetensors", "Lora/b/ink.safetensors", "Lora/ink.pt", "Lora/solo.ckpt"):
        touch(root / name)
    f = ModelFolders(root)
    with pytest.raises(AmbiguousName) as e:
        f.resolve("loras", "ink")
    assert "a/ink.safetensors, b/ink.safetensors, ink.pt" in str(e.value) and str(e.value).startswith("loras: ")
    assert f.resolve("loras", "ink.pt") == (root / "Lora" / "ink.pt").resolve()  # the exact name is no guess
    assert f.resolve("loras", "a/ink") == (root / "Lora" / "a" / "ink.safetensors").resolve()
    assert f.resolve("loras", "SOLO") == (root / "Lora" / "solo.ckpt").resolve()
