"""Networks whose weights stay as their files store them: GGUF blocks (Q8_0, a K-quant), written here
with the gguf package from random weights in city96's layout (bare original keys, dimensions
fastest first), and float8 safetensors. Each loads through UNETLoader's path and through a whole
model found in a ComfyUI models folder, keeps its Linear weights stored (StoredLinear), and gives
the output of the same network loaded from the dequantised weights, close to the float original."""
import gguf
import numpy as np
import pytest
import torch

from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.errors import CheckpointError
from opensd.models.config_dit import FluxConfig, MMDiTConfig, ZImageConfig
from opensd.models.flux import Flux
from opensd.models.mmdit import MMDiT
from opensd.models.z_image import ZImage
from opensd.models.stored_weights import StoredLinear
from opensd.pipeline import parts
from opensd.pipeline.offload import module_bytes
from reference import randomize_
from test_ggml_quants import random_blocks

Q = gguf.GGMLQuantizationType
# widths of 256 so that K-quant blocks (256 weights) fit the rows
NETWORKS = {
    "flux": (lambda: Flux(FluxConfig(in_channels=64, out_channels=64, vec_in_dim=32, context_in_dim=64,
                                      hidden_size=256, num_heads=16, depth=1, depth_single_blocks=1,
                                      axes_dim=(4, 6, 6))),
             {DD.META_HEAD_DIM: "16", DD.META_AXES: "4,6,6"}),
    "sd3": (lambda: MMDiT(MMDiTConfig(depth=2, num_heads=4, head_dim=64, adm_in_channels=64, context_dim=64,
                                      pos_embed_max_size=16, qk_norm=True, x_block_self_attn_layers=(0,))),
            {DD.META_HEAD_DIM: "64"}),
    "z_image": (lambda: ZImage(ZImageConfig(dim=256, n_layers=2, n_heads=8, ffn_hidden=512, cap_feat_dim=64,
                                            axes_dims=(8, 12, 12), t_hidden=256)), {}),
}


def network(family: str) -> tuple[torch.nn.Module, dict]:
    build, metadata = NETWORKS[family]
    return randomize_(build(), seed=3, std=0.04).eval(), metadata


def write_gguf(path, sd: dict[str, torch.Tensor], qtype, metadata: dict, arch: str) -> dict[str, torch.Tensor]:
    """city96's layout: 2-D weights whose rows fit `qtype`'s blocks quantised (Q8_0 from the weights;
    a K-quant, which gguf cannot write, as random blocks), the rest F32. Returns the weights the
    file holds, dequantised by gguf's own code."""
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    writer = gguf.GGUFWriter(str(path), arch)
    for k, v in metadata.items():
        writer.add_string(k, v)
    held = {}
    for i, (name, t) in enumerate(sd.items()):
        a = t.float().numpy()
        if a.ndim == 2 and a.shape[1] % block == 0 and a.size > 1024:
            data = (gguf.quants.quantize(a, qtype) if qtype == Q.Q8_0 else
                    random_blocks(qtype, a.shape[0], a.shape[1], seed=i, scale=(5e-5, 2e-4)))
            writer.add_tensor(name, data, raw_dtype=qtype)
            held[name] = torch.from_numpy(gguf.quants.dequantize(data, qtype).reshape(a.shape).copy())
        else:
            writer.add_tensor(name, a)
            held[name] = t.float()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return held


def inputs(family: str):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 16, 8, 8, generator=g)
    t = torch.tensor([600.0 if family == "sd3" else 0.6])
    return x, t, torch.randn(1, 5, 64, generator=g), torch.randn(1, 32 if family == "flux" else 64, generator=g)


def run(pipe, family: str) -> torch.Tensor:
    with torch.no_grad():
        return pipe.family.net_fn(pipe.model)(*inputs(family)).float()


def stored(pipe) -> dict[str, str]:
    return {n: m.kind for n, m in pipe.family.network(pipe.model).named_modules() if isinstance(m, StoredLinear)}


def write_qkv_lora(path) -> None:
    """A kohya LoRA of rank 4 on the tiny Flux network's first double block's image q/k/v."""
    g = torch.Generator().manual_seed(1)
    name = "lora_unet_double_blocks_0_img_attn_qkv"
    save_safetensors({f"{name}.lora_down.weight": torch.randn(4, 256, generator=g),
                      f"{name}.lora_up.weight": 0.05 * torch.randn(768, 4, generator=g),
                      f"{name}.alpha": torch.tensor(4.0)}, path)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("family", ["flux", "sd3", "z_image"])
@pytest.mark.parametrize("qtype", [Q.Q8_0, Q.Q4_K])
def test_gguf_network_equals_its_dequantised_weights(tmp_path, family, qtype):
    net, metadata = network(family)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    held = write_gguf(tmp_path / "net.gguf", sd, qtype, metadata, family)
    save_safetensors(held, tmp_path / "dequantised.safetensors", metadata)
    ours = parts.load_unet(tmp_path / "net.gguf", device="cpu", precision="fp32")
    plain = parts.load_unet(tmp_path / "dequantised.safetensors", device="cpu", precision="fp32")
    kinds = stored(ours)
    assert kinds and set(kinds.values()) == {qtype.name}, kinds
    assert not stored(plain)
    held_bytes = module_bytes(ours.family.network(ours.model))
    assert held_bytes < 0.3 * module_bytes(plain.family.network(plain.model))  # memory modes count the blocks
    out = run(ours, family)
    torch.testing.assert_close(out, run(plain, family), rtol=1e-5, atol=1e-5)
    if qtype == Q.Q8_0:  # from the float weights: within Q8_0's error
        save_safetensors(sd, tmp_path / "float.safetensors", metadata)
        assert rel(out, run(parts.load_unet(tmp_path / "float.safetensors", device="cpu", precision="fp32"),
                            family)) < 0.02


@pytest.mark.parametrize("family", ["flux", "sd3", "z_image"])
def test_fp8_network_is_cast_per_layer(tmp_path, family):
    net, metadata = network(family)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    fp8 = {k: v.to(torch.float8_e4m3fn) if v.ndim == 2 else v for k, v in sd.items()}
    save_safetensors(fp8, tmp_path / "fp8.safetensors", metadata)
    save_safetensors({k: v.float() for k, v in fp8.items()}, tmp_path / "dequantised.safetensors", metadata)
    save_safetensors(sd, tmp_path / "float.safetensors", metadata)
    ours = parts.load_unet(tmp_path / "fp8.safetensors", device="cpu", precision="fp32")
    assert set(stored(ours).values()) == {"float8_e4m3fn"}
    linear = next(m for m in ours.family.network(ours.model).modules() if isinstance(m, StoredLinear))
    assert linear.weight.dtype == torch.float8_e4m3fn and linear.bias.dtype == torch.float32
    out = run(ours, family)
    torch.testing.assert_close(out, run(parts.load_unet(tmp_path / "dequantised.safetensors", device="cpu",
                                                         precision="fp32"), family), rtol=1e-5, atol=1e-5)
    full = run(parts.load_unet(tmp_path / "float.safetensors", device="cpu", precision="fp32"), family)
    assert rel(out, full) < 0.1  # e4m3 keeps 3 mantissa bits
    bf16 = parts.load_unet(tmp_path / "fp8.safetensors", device="cpu", precision="bf16")
    assert rel(run(bf16, family), out) < 0.05  # cast into the compute dtype of the run


def test_a_quantised_gguf_is_refused_by_readers_of_plain_tensors(tmp_path):
    net, metadata = network("flux")
    write_gguf(tmp_path / "net.gguf", net.state_dict(), Q.Q8_0, metadata, "flux")
    with pytest.raises(CheckpointError, match=r"quantised GGUF file \(Q8_0\)"):
        read_state_dict(tmp_path / "net.gguf")
    sd = read_state_dict(tmp_path / "net.gguf", keep_quantized=True)
    assert tuple(sd["double_blocks.0.img_attn.qkv.weight"].shape) == (768, 256)  # GGUF's order reversed
    assert sd["img_in.bias"].dtype == torch.float32


def _city96(path, half: bool = False):
    """An SD3 network as city96 writes it: x_embedder's conv weight, (256, 16, 2, 2), stored as rows of
    256 with its shape in comfy.gguf.orig_shape.<name> (`half`: only the first half of the rows)."""
    net, metadata = network("sd3")
    sd = {f"model.diffusion_model.{k}": v.contiguous() for k, v in net.state_dict().items()}
    name = "model.diffusion_model.x_embedder.proj.weight"  # (256, 16, 2, 2): 16384 weights
    writer = gguf.GGUFWriter(str(path), "sd3")
    for k, v in metadata.items():
        writer.add_string(k, v)
    writer.add_array(f"comfy.gguf.orig_shape.{name}", list(sd[name].shape))
    for k, v in sd.items():
        a = v.numpy().reshape(-1, 256)[:32 if half else None] if k == name else v.numpy()
        writer.add_tensor(k, gguf.quants.quantize(a, Q.Q8_0) if k == name else a,
                          raw_dtype=Q.Q8_0 if k == name else None)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return net


def test_city96_flattened_shapes_and_sd_cpp_prefix(tmp_path):
    """city96 stores some tensors as rows of 256 with their shape in comfy.gguf.orig_shape.<name>;
    stable-diffusion.cpp keeps the checkpoint's model.diffusion_model. prefix."""
    net = _city96(tmp_path / "net.gguf")
    pipe = parts.load_unet(tmp_path / "net.gguf", device="cpu", precision="fp32")
    conv = pipe.family.network(pipe.model).x_embedder.proj.weight  # a conv: unpacked on load
    assert conv.shape == (256, 16, 2, 2)
    assert rel(conv, net.x_embedder.proj.weight) < 0.01


def test_an_orig_shape_claiming_more_than_is_stored_is_one_line(tmp_path):
    """Hostile file: the claimed shape was taken as told; unpacking the conv failed with PyTorch's bare
    RuntimeError (shape invalid for 8192 values), and a weight kept quantised would fail at the first step."""
    _city96(tmp_path / "net.gguf", half=True)
    with pytest.raises(CheckpointError, match=r"net.gguf: tensor 'model.diffusion_model.x_embedder.proj.weight': "
                                              r"shape \[256, 16, 2, 2\] does not match its 8192 stored values"):
        parts.load_unet(tmp_path / "net.gguf", device="cpu", precision="fp32")


def test_a_damaged_gguf_file_is_one_line(tmp_path):
    net, metadata = network("flux")
    write_gguf(tmp_path / "net.gguf", net.state_dict(), Q.Q8_0, metadata, "flux")
    raw = (tmp_path / "net.gguf").read_bytes()
    for n in (8, 200, len(raw) // 2):
        (tmp_path / "bad.gguf").write_bytes(raw[:n])
        with pytest.raises(CheckpointError, match="bad.gguf"):
            read_state_dict(tmp_path / "bad.gguf", keep_quantized=True)
