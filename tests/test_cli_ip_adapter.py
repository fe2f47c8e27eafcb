"""`opensd generate --ip-adapter FILE --ip-adapter-image IMG --ip-adapter-scale S --clip-vision FILE` on
the tiny test model: paths and names in the models folder, scale 0 equal to no adapter, and one-line
errors for missing flags and refused files."""
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from opensd.cli import main
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.ip_adapter import IPAdapter, cross_attentions
from opensd.models.unet import UNetModel
from reference import randomize_
from test_ip_adapter_plus import plus_adapter
from vision_fixtures import clip_vision, save_vision


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("ip")
    write_random_checkpoint(root / "m.safetensors", dtype=torch.float32)
    save_vision(clip_vision(), root / "models" / "clip_vision" / "tiny_vit.safetensors")
    unet = UNetModel(TINY.unet)
    inners = [a.to_k.out_features for a in cross_attentions(unet)]
    adapter = randomize_(IPAdapter(24, TINY.unet.context_dim, inners), seed=4, std=0.3)
    (root / "models" / "ipadapter").mkdir()
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
              str(root / "models" / "ipadapter" / "ip-adapter_tiny.safetensors"))
    save_file({k: v.contiguous() for k, v in plus_adapter(unet).state_dict().items()},
              str(root / "models" / "ipadapter" / "ip-adapter-plus_tiny.safetensors"))
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)).save(root / "face.png")
    return root


def _run(files, out, *extra):
    argv = ["generate", "a cat", "-m", str(files / "m.safetensors"), "--steps", "2", "--seed", "3",
            "-o", str(out), *extra]
    assert main(argv) == 0
    return np.asarray(Image.open(out).convert("RGB"), dtype=np.int16)


def test_flags_end_to_end(files, tmp_path):
    by_path = ["--ip-adapter", str(files / "models" / "ipadapter" / "ip-adapter_tiny.safetensors"),
               "--clip-vision", str(files / "models" / "clip_vision" / "tiny_vit.safetensors"),
               "--ip-adapter-image", str(files / "face.png")]
    by_name = ["--models-dir", str(files / "models"), "--ip-adapter", "ip-adapter_tiny", "--clip-vision", "tiny_vit",
               "--ip-adapter-image", str(files / "face.png")]
    plain = _run(files, tmp_path / "plain.png")
    zero = _run(files, tmp_path / "zero.png", *by_path, "--ip-adapter-scale", "0")
    full = _run(files, tmp_path / "full.png", *by_path, "--ip-adapter-scale", "2")
    named = _run(files, tmp_path / "named.png", *by_name, "--ip-adapter-scale", "2")
    assert np.array_equal(zero, plain) and np.array_equal(named, full)
    assert not np.array_equal(full, plain)
    plus = [*by_name[:3], "ip-adapter-plus_tiny", *by_name[4:]]
    assert np.array_equal(_run(files, tmp_path / "plus0.png", *plus, "--ip-adapter-scale", "0"), plain)
    plus_full = _run(files, tmp_path / "plus.png", *plus, "--ip-adapter-scale", "2")
    assert not np.array_equal(plus_full, plain) and not np.array_equal(plus_full, full)


def test_an_adapter_in_the_controlnet_folder_is_found_by_name(files, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(files / "models" / "clip_vision", models / "clip_vision")
    (models / "ControlNet").mkdir()
    shutil.copy(files / "models" / "ipadapter" / "ip-adapter_tiny.safetensors", models / "ControlNet")
    image = _run(files, tmp_path / "a.png", "--models-dir", str(models), "--ip-adapter", "ip-adapter_tiny",
                 "--clip-vision", "tiny_vit", "--ip-adapter-image", str(files / "face.png"), "--ip-adapter-scale", "2")
    assert np.array_equal(image, _run(files, tmp_path / "b.png", "--models-dir", str(files / "models"),
                                      "--ip-adapter", "ip-adapter_tiny", "--clip-vision", "tiny_vit",
                                      "--ip-adapter-image", str(files / "face.png"), "--ip-adapter-scale", "2"))


@pytest.mark.parametrize("extra, words", [
    (["--ip-adapter", "ADAPTER", "--ip-adapter-image", "IMAGE"], "--clip-vision"),
    (["--ip-adapter", "ADAPTER", "--clip-vision", "VISION"], "--ip-adapter-image"),
    (["--ip-adapter-image", "IMAGE"], "needs --ip-adapter"),
    (["--ip-adapter", "BIN", "--clip-vision", "VISION", "--ip-adapter-image", "IMAGE"], "not a PyTorch checkpoint"),
    (["--ip-adapter", "ADAPTER", "--clip-vision", "VISION", "--ip-adapter-image", "IMAGE", "--insightface", "x"],
     "not an IP-Adapter FaceID"),
    (["--ip-adapter", "ADAPTER", "--clip-vision", "VISION", "--ip-adapter-image", "IMAGE",
      "--ip-adapter-scale", "3"], "ip-adapter-scale"),
    (["--ip-adapter", "ADAPTER", "--clip-vision", "missing_vit", "--ip-adapter-image", "IMAGE"], "clip-vision"),
])
def test_mistakes_are_one_line(files, tmp_path, capsys, extra, words):
    (tmp_path / "ip-adapter_sd15.bin").write_bytes(b"\x80\x02}q\x00.")
    names = {"ADAPTER": str(files / "models" / "ipadapter" / "ip-adapter_tiny.safetensors"),
             "VISION": str(files / "models" / "clip_vision" / "tiny_vit.safetensors"),
             "IMAGE": str(files / "face.png"), "BIN": str(tmp_path / "ip-adapter_sd15.bin")}
    argv = ["generate", "a cat", "-m", str(files / "m.safetensors"), "--steps", "1",
            "-o", str(tmp_path / "x.png"), *(names.get(a, a) for a in extra)]
    rc = main(argv)
    err = [s for s in capsys.readouterr().err.splitlines() if s.strip() and "opensd: ip-adapter" not in s]
    assert rc == 2 and len(err) == 1 and words in err[0], err
    assert not (tmp_path / "x.png").exists()


def test_a_faceid_adapter_with_the_insightface_pack(files, tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from test_insightface import write_pack
    from test_ip_adapter_faceid import _face_picture, faceid_adapter, write_faceid

    models = tmp_path / "models"
    (models / "ipadapter").mkdir(parents=True)
    write_faceid(faceid_adapter(UNetModel(TINY.unet)), models / "ipadapter" / "ip-adapter-faceid_tiny.bin", True)
    _face_picture().save(tmp_path / "face.png")
    flags = ["--models-dir", str(models), "--ip-adapter", "ip-adapter-faceid_tiny", "--ip-adapter-image",
             str(tmp_path / "face.png")]
    argv = ["generate", "a cat", "-m", str(files / "m.safetensors"), "--steps", "2", "--seed", "3",
            "-o", str(tmp_path / "x.png"), *flags]
    assert main(argv) == 2 and "buffalo_l" in capsys.readouterr().err  # the pack is not installed yet
    write_pack(models)
    plain = _run(files, tmp_path / "plain.png")
    face = _run(files, tmp_path / "face_out.png", *flags)  # no --clip-vision: plain FaceID reads no CLIP output
    zero = _run(files, tmp_path / "zero.png", *flags, "--ip-adapter-scale", "0")
    assert np.array_equal(zero, plain) and not np.array_equal(face, plain)
