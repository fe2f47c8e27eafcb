"""Upscaler models through our safe reader and spandrel, tiled inference, and A1111's upscaler rules."""
from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from upscaler_files import rrdbnet, srvgg, srvgg_reference, write_pth, write_safetensors

from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.upscale import Upscalers, load_upscale_model, tiled_scale
from opensd.upscale.tiles import tile_positions


@pytest.mark.parametrize("layout,wrapper,fmt", [("old", None, "pth"), ("new", "params_ema", "pth"),
                                                ("new", None, "safetensors")])
def test_rrdbnet_files_load_in_their_original_layouts(tmp_path, layout, wrapper, fmt):
    sd = rrdbnet(nf=8, nb=1, layout=layout)
    path = write_pth(tmp_path / "m.pth", sd, wrapper) if fmt == "pth" else \
        write_safetensors(tmp_path / "m.safetensors", sd)
    model = load_upscale_model(path)
    assert model.architecture.name == "ESRGAN" and model.scale == 4 and model.tags == ["8nf", "1nb"]
    first = "model.0.weight" if layout == "old" else "conv_first.weight"
    assert torch.equal(model.model.state_dict()["model.0.weight"], sd[first])  # our weights, not fresh ones
    with torch.no_grad():
        assert model(torch.rand(1, 3, 6, 5)).shape == (1, 3, 24, 20)


@pytest.mark.parametrize("fmt,scale", [("pth", 4), ("safetensors", 2)])
def test_srvgg_compact_equals_its_forward_written_out(tmp_path, fmt, scale):
    sd = srvgg(feat=8, num_conv=2, scale=scale, seed=3)
    path = write_pth(tmp_path / "c.pth", sd, "params") if fmt == "pth" else \
        write_safetensors(tmp_path / "c.safetensors", sd)
    model = load_upscale_model(path)
    assert model.architecture.name == "RealESRGAN Compact" and model.scale == scale
    x = torch.rand(1, 3, 9, 11)
    with torch.no_grad():
        assert torch.allclose(model(x), srvgg_reference(sd, x, scale), atol=1e-5)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save({"params_ema": srvgg(), "hook": _Payload(marker)}, path)
    with pytest.raises(CheckpointError) as e:
        load_upscale_model(path)
    assert "evil.pth" in str(e.value) and "system" in str(e.value)
    assert not marker.exists()


def test_a_file_that_is_no_upscaler_is_named_as_such(tmp_path):
    path = write_safetensors(tmp_path / "x.safetensors", {"foo.weight": torch.zeros(2, 2)})
    with pytest.raises(CheckpointError, match="x.safetensors: is not an upscaler model we know"):
        load_upscale_model(path)


def test_tile_positions_are_comfyuis_layout():
    assert tile_positions(1000, 512, 32) == [(0, 512), (480, 512), (960, 40)]
    assert tile_positions(512, 512, 32) == [(0, 512)]
    assert tile_positions(100, 40, 10) == [(0, 40), (30, 40), (60, 40)]  # the last tile reaches the edge


def test_tiles_blend_back_exactly_for_a_pointwise_model():
    x = torch.rand(2, 3, 37, 53)

    def fn(t):  # each output pixel depends on one input pixel: tiling must not change anything
        return F.interpolate(t, scale_factor=3, mode="nearest") * 0.5 + 0.25

    assert torch.allclose(tiled_scale(x, fn, 3, tile=16, overlap=4), fn(x), atol=1e-6)


def test_tiled_model_output_is_close_to_the_untiled_one(tmp_path):
    model = load_upscale_model(write_safetensors(tmp_path / "c.safetensors", srvgg(scale=2)))
    x = torch.rand(1, 3, 70, 50)
    calls = []
    with torch.no_grad():
        whole = model(x)
        tiled = tiled_scale(x, model, 2, tile=32, overlap=8, progress=lambda i, n: calls.append((i, n)))
    diff = (whole - tiled).abs()
    assert tiled.shape == whole.shape == (1, 3, 140, 100)
    assert diff.mean() < 1 / 255 and diff.max() < 0.1  # only the conv padding at tile edges differs
    assert calls[-1] == (6, 6)  # 3 rows x 2 columns


def test_tile_overlap_must_be_smaller_than_the_tile():
    with pytest.raises(InvalidArgument, match="tile overlap: 32"):
        tiled_scale(torch.rand(1, 3, 64, 64), lambda t: t, 1, tile=32, overlap=32)


@pytest.fixture
def folders(tmp_path):
    write_pth(tmp_path / "ESRGAN" / "4x_tiny.pth", rrdbnet(), "params_ema")
    write_safetensors(tmp_path / "upscale_models" / "2x-compact.safetensors", srvgg(scale=2))
    return ModelFolders(tmp_path, include_builtin=False)


def test_the_listing_has_the_classic_upscalers_and_each_model(folders):
    ups = Upscalers(folders)
    listing = ups.listing()
    assert [u["name"] for u in listing] == ["None", "Lanczos", "Nearest", "2x-compact", "4x_tiny"]
    assert listing[3]["scale"] == 2 and listing[4]["scale"] == 4
    assert listing[3]["model_path"].endswith("2x-compact.safetensors")


def test_a1111_upscale_rounds_to_multiples_of_8_and_models_run_at_their_own_scale(folders):
    ups = Upscalers(folders, tile=0)
    image = Image.new("RGB", (30, 21), (10, 200, 30))
    assert ups.upscale(image, 2, "lanczos").size == (56, 40)   # 60x42 rounded down to 8s
    assert ups.upscale(image, 2, "None").size == (56, 40)
    out = ups.upscale(image, 3, "2x-compact")                  # 2x twice, then Lanczos down to 88x56
    assert out.size == (88, 56)
    direct = ups.run_model(ups.model(ups.find("2x-compact")), image)
    assert direct.size == (60, 42)


def test_hires_resize_uses_the_upscaler_then_lanczos(folders):
    ups = Upscalers(folders, tile=0)
    image = Image.new("RGB", (16, 16), (120, 50, 30))
    assert ups.resize(image, 40, 24, "4x_tiny").size == (40, 24)
    assert ups.resize(image, 40, 24, "None").size == (40, 24)


def test_unknown_and_latent_names_are_refused_naming_the_field(folders):
    ups = Upscalers(folders)
    with pytest.raises(InvalidArgument, match=r"upscaler_1: no upscaler named 'R-ESRGAN 4x\+' \(available: None, "
                                              r"Lanczos, Nearest, 2x-compact, 4x_tiny\)"):
        ups.find("R-ESRGAN 4x+", "upscaler_1")
    with pytest.raises(InvalidArgument, match="upscaler_2: 'Latent' is a latent upscale mode"):
        ups.find("latent", "upscaler_2")


def test_paths_are_names_only_where_allowed(folders, tmp_path):
    path = str(tmp_path / "ESRGAN" / "4x_tiny.pth")
    with pytest.raises(InvalidArgument, match="no upscaler named"):
        Upscalers(folders).find(path)
    assert Upscalers(None, allow_paths=True).find(path) == tmp_path / "ESRGAN" / "4x_tiny.pth"
