"""ComfyUI's scaled float8 files (t5xxl_fp8_e4m3fn_scaled, qwen_3_8b_fp8mixed, *_fp8_scaled networks),
written here from random weights in both of ComfyUI's layouts: the older `scaled_fp8` marker with
`scale_weight`/`scale_input` beside each weight, and the per-layer `comfy_quant` JSON with
`weight_scale`/`input_scale` ("mixed": some layers left in float), or that JSON in the file's metadata.
Each scale is a different, non-trivial number. A network, T5 and Qwen3 loaded from such a file keep
their float8 weights stored with the scale and equal the same model loaded from the dequantised
weights (float8 * scale); the header-only listing still recognises the files; a per-block format
opensd cannot do is refused in one line naming it."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from torch import nn

from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.checkpoints.keymap_qwen3 import qwen3_state_dict
from opensd.checkpoints.keymap_t5 import t5_state_dict
from opensd.checkpoints.part_files import _read_kind
from opensd.errors import CheckpointError
from opensd.models.qwen3 import Qwen3TextEncoder
from opensd.models.stored_weights import Scaled, StoredLinear
from opensd.models.t5 import T5EncoderModel
from opensd.pipeline import parts
from opensd.pipeline.weights import assign
from reference import assert_close_scaled

LAYOUTS = ["marker", "comfy_quant", "metadata"]
F8 = torch.float8_e4m3fn


def linear_weights(module: nn.Module) -> list[str]:
    return [f"{n}.weight" for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def write_scaled(path, sd: dict[str, torch.Tensor], linears: list[str], layout: str,
                 metadata: dict | None = None) -> dict[str, torch.Tensor]:
    """`sd` as ComfyUI lays out a scaled float8 file, its Linear weights float8 with a scale each (with
    "comfy_quant"/"metadata", every third left in float, as "mixed" files do); returns the weights the
    file holds, dequantised (float8 * scale, in float32)."""
    out, held, layers = {}, {}, {}
    metadata = dict(metadata or {})
    for i, (key, w) in enumerate(sd.items()):
        w = w.detach().float().contiguous()
        if key not in linears or (layout != "marker" and i % 3 == 0):
            out[key] = held[key] = w
            continue
        scale = (w.abs().max() / 448 * (1.5 + 0.37 * (i % 5))).reshape(())  # float8 uses part of its range
        data = (w / scale).to(F8)
        out[key], held[key] = data, data.float() * scale
        layer = key[:-len(".weight")]
        if layout == "marker":
            out[f"{layer}.scale_weight"] = scale
            out[f"{layer}.scale_input"] = torch.tensor(1.0 + i)
        else:
            out[f"{layer}.weight_scale"] = scale
            out[f"{layer}.input_scale"] = torch.tensor(0.5 + i)
            layers[layer] = {"format": "float8_e4m3fn"}
            if layout == "comfy_quant":
                out[f"{layer}.comfy_quant"] = torch.tensor(list(json.dumps(layers[layer]).encode()), dtype=torch.uint8)
    if layout == "marker":
        out["scaled_fp8"] = torch.empty(0, dtype=F8)
    elif layout == "metadata":
        metadata["_quantization_metadata"] = json.dumps({"format_version": "1.0", "layers": layers})
    save_safetensors(out, path, metadata)
    return held


def network(family: str):
    from test_stored_weights import network as tiny
    return tiny(family)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("family", ["flux", "sd3", "z_image"])
def test_a_scaled_network_equals_its_dequantised_weights(tmp_path, family, layout):
    from opensd import families
    from opensd.checkpoints.files import read_safetensors_header
    from test_stored_weights import run, stored
    net, metadata = network(family)
    held = write_scaled(tmp_path / "scaled.safetensors", net.state_dict(), linear_weights(net), layout, metadata)
    entries, meta = read_safetensors_header(tmp_path / "scaled.safetensors")  # as listings judge files
    found, _ = families.detect({k: tuple(v["shape"]) for k, v in entries.items()}, meta, "scaled.safetensors")
    assert found.name == {"flux": "flux", "sd3": "sd3", "z_image": "z_image"}[family]
    save_safetensors(held, tmp_path / "dequantised.safetensors", metadata)
    ours = parts.load_unet(tmp_path / "scaled.safetensors", device="cpu", precision="fp32")
    kinds = set(stored(ours).values())
    assert kinds == {"scaled float8_e4m3fn"}
    linear = next(m for m in ours.family.network(ours.model).modules() if isinstance(m, StoredLinear))
    assert linear.weight.dtype == F8 and linear.scale.ndim == 0 and "weight_scale" not in linear.state_dict()
    out = run(ours, family)
    plain = parts.load_unet(tmp_path / "dequantised.safetensors", device="cpu", precision="fp32")
    torch.testing.assert_close(out, run(plain, family), rtol=1e-5, atol=1e-5)
    bf16 = parts.load_unet(tmp_path / "scaled.safetensors", device="cpu", precision="bf16")
    plain16 = parts.load_unet(tmp_path / "dequantised.safetensors", device="cpu", precision="bf16")
    torch.testing.assert_close(run(bf16, family), run(plain16, family), rtol=1e-2, atol=1e-2)


def test_readers_of_plain_tensors_get_the_dequantised_weights(tmp_path):
    net, metadata = network("flux")
    held = write_scaled(tmp_path / "scaled.safetensors", net.state_dict(), linear_weights(net), "marker", metadata)
    sd = read_state_dict(tmp_path / "scaled.safetensors")
    assert sd.keys() == held.keys()  # the marker and scales are taken out
    for k, v in held.items():
        assert torch.equal(sd[k], v), k
    kept = read_state_dict(tmp_path / "scaled.safetensors", keep_quantized=True)
    assert isinstance(kept["img_in.weight"], Scaled) and kept["img_in.weight"].dtype == F8


def stored_and_plain(build, cfg, sd: dict, plain_sd: dict):
    """(the model of `sd` as the loaders place it, Linear weights kept stored; the model of `plain_sd`)."""
    with torch.device("meta"):
        ours = build(cfg).eval()
    assert sd.keys() == ours.state_dict().keys()
    assign(ours, sd, list(sd), lambda key: torch.float32, "cpu", keeps_stored=lambda key: True)
    assert any(isinstance(m, StoredLinear) and m.scale is not None for m in ours.modules())
    plain = build(cfg).eval()
    plain.load_state_dict(plain_sd, strict=True)
    return ours, plain


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_a_scaled_t5_equals_its_dequantised_weights(tmp_path, layout):
    from opensd.families.flux import FLUX
    from opensd.checkpoints import detect_dit as DD
    from test_t5 import TINY, _hf, _ids
    ref = _hf(TINY, seed=5)
    held = write_scaled(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors", ref.state_dict(), linear_weights(ref),
                        layout)
    assert _read_kind(tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors") == ("t5xxl", 0)  # from its header
    tensors = FLUX.encoder_tensors([tmp_path / "t5xxl_fp8_e4m3fn_scaled.safetensors"])  # as load_model reads it
    sd = {k[len(DD.T5):]: v for k, v in tensors.items()}
    assert any(isinstance(v, Scaled) for v in sd.values())
    ours, plain = stored_and_plain(T5EncoderModel, TINY, sd, t5_state_dict(held))
    assert_close_scaled(ours(_ids()), plain(_ids()), 1e-6)


@pytest.mark.parametrize("layout", LAYOUTS)
@torch.no_grad()
def test_a_scaled_qwen3_equals_its_dequantised_weights(tmp_path, layout):
    from opensd.checkpoints import detect_dit as DD
    from opensd.families.z_image import Z_IMAGE_FAMILY
    from qwen_fixtures import hf_qwen3
    from test_qwen3 import TINY, _batch
    ref = hf_qwen3(TINY, seed=4)
    held = write_scaled(tmp_path / "qwen_3_4b_fp8mixed.safetensors", ref.state_dict(), linear_weights(ref), layout)
    tensors = Z_IMAGE_FAMILY.encoder_tensors([tmp_path / "qwen_3_4b_fp8mixed.safetensors"])
    sd = {k[len(DD.QWEN3):]: v for k, v in tensors.items()}
    ours, plain = stored_and_plain(Qwen3TextEncoder, TINY, sd, qwen3_state_dict(held))
    ids, mask = _batch(False)
    assert_close_scaled(ours(ids, mask), plain(ids, mask), 1e-6)


@pytest.mark.parametrize("fmt", ["nvfp4", "mxfp8", "int8_tensorwise"])
def test_a_block_format_is_refused_naming_it(tmp_path, fmt):
    net, metadata = network("flux")
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    sd["img_in.comfy_quant"] = torch.tensor(list(json.dumps({"format": fmt}).encode()), dtype=torch.uint8)
    sd["img_in.weight_scale"] = torch.ones(4)
    save_safetensors(sd, tmp_path / "net.safetensors", metadata)
    with pytest.raises(CheckpointError, match=f"net.safetensors.*layer img_in is stored in ComfyUI's '{fmt}' "
                                              "format, which opensd does not read"):
        parts.load_unet(tmp_path / "net.safetensors", device="cpu", precision="fp32")


def test_scaled_files_are_listed_and_detected_from_headers(tmp_path):
    """A Z-Image network and its Qwen3 in ComfyUI's folders, both scaled: the listing finds the network
    whole from headers alone, and the model generates the image of its dequantised twin."""
    from opensd.library.models_dir import ModelFolders
    from opensd.library.network_models import whole_models
    from test_network_models import _generate
    from z_image_fixtures import z_image_models
    models, _ = z_image_models(tmp_path / "src", seed=7)
    scaled, plain = tmp_path / "scaled", tmp_path / "plain"
    for root in (scaled, plain):
        shutil.copytree(models, root)
    for sub, name in (("diffusion_models", "z_image_turbo_bf16.safetensors"),
                      ("text_encoders", "qwen_3_4b.safetensors")):
        sd = read_state_dict(models / sub / name)
        linears = [k for k, v in sd.items() if v.ndim == 2 and k.endswith(".weight") and "embed" not in k
                   and not k.startswith(("x_embedder", "cap_embedder"))]
        (scaled / sub / name).unlink()
        held = write_scaled(scaled / sub / name.replace(".safetensors", "_fp8_scaled.safetensors"), sd, linears,
                            "comfy_quant" if sub == "text_encoders" else "marker")
        save_safetensors(held, plain / sub / name)
    assert [m.name for m in whole_models(ModelFolders(scaled, include_builtin=False))] == [
        "z_image_turbo_bf16_fp8_scaled.safetensors"]
    got = _generate("z_image_turbo_bf16_fp8_scaled", scaled, tmp_path / "a.png")
    want = _generate("z_image_turbo_bf16", plain, tmp_path / "b.png")
    assert abs(got - want).max() <= 1


def test_a_scale_per_row_multiplies_each_row():
    g = torch.Generator().manual_seed(2)
    w = torch.randn(6, 8, generator=g)
    scale = torch.linspace(0.01, 0.2, 6)
    data = (w / scale[:, None]).to(F8)
    layer = StoredLinear(nn.Linear(8, 6), Scaled(data, scale), "cpu")
    want = data.float() * scale[:, None]
    x = torch.randn(3, 8, generator=g)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, want, layer.bias), rtol=1e-6, atol=1e-6)
    assert torch.equal(layer.state_dict()["weight"], want) and layer.state_dict().keys() == {"weight", "bias"}
    with pytest.raises(ValueError, match="with 4 scales"):
        StoredLinear(nn.Linear(8, 6), Scaled(data, torch.ones(4)), "cpu")
