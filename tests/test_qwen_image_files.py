"""Qwen-Image's files: the released network and VAE on the meta device detected from their shapes
(not taken for SD3, Flux, Z-Image or FLUX.2, nor those for Qwen-Image); ComfyUI's split files (the
network bare or under ComfyUI's prefix, its VAE found in vae/), float8 and GGUF networks kept stored;
a QwenImagePipeline folder with its scheduler settings; Edit and Layered refused in one line."""
from __future__ import annotations

import json

import pytest
import torch

from opensd import families
from opensd.checkpoints import detect as D
from opensd.checkpoints import detect_dit as DD
from opensd.errors import CheckpointError
from opensd.families.qwen_image import QWEN_IMAGE_FAMILY
from opensd.models.config_dit import QWEN_IMAGE, FlowShiftConfig, QwenImageModelConfig
from opensd.models.dit_models import QwenImageModel
from opensd.models.qwen3 import QWEN25_VL_7B
from opensd.models.qwen_vae import QWEN_IMAGE_VAE
from qwen_image_fixtures import qwen_image_transformer, qwen_image_vae, write_qwen_image_split_files
from reference import assert_close_scaled


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


@pytest.fixture(scope="module")
def released():
    with torch.device("meta"):
        model = QwenImageModel(QwenImageModelConfig(QWEN_IMAGE, QWEN_IMAGE_VAE, QWEN25_VL_7B))
    return model.state_dict()


def test_released_whole_model_on_meta_is_detected_with_every_key(released):
    shapes = _shapes(released)
    family, found = families.detect(shapes, {}, "qwen_image.safetensors")
    assert family is QWEN_IMAGE_FAMILY and found == QwenImageModelConfig(QWEN_IMAGE, QWEN_IMAGE_VAE, QWEN25_VL_7B)
    assert sum(v.numel() for k, v in released.items() if k.startswith(DD.QWEN25)) == pytest.approx(7.07e9, rel=0.01)
    assert found.resolution == 1328 and found.schedule == FlowShiftConfig() and found.size_multiple == 16
    assert set(family.canonical(dict(released), found)) == set(released)
    family.check_complete(found, shapes, "x")
    network_only = {k: v for k, v in shapes.items() if k.startswith(DD.NET)}
    assert family.missing_parts(network_only) == ["qwen_vae", "qwen25vl"]
    with pytest.raises(CheckpointError, match="no VAE .* and no Qwen2.5-VL-7B text encoder"):
        family.check_complete(found, network_only, "x")


def test_other_families_released_networks_are_not_qwen_image_and_the_reverse(released):
    from opensd.models import config_dit as C
    from opensd.models.flux import Flux
    from opensd.models.flux2 import Flux2
    from opensd.models.mmdit import MMDiT
    from opensd.models.z_image import ZImage
    qwen = {k[len(DD.NET):]: v for k, v in _shapes(released).items() if k.startswith(DD.NET)}
    for fam in families.FAMILIES:
        if fam is not QWEN_IMAGE_FAMILY and fam.name != "unet":
            assert fam.detect(qwen, {}, "x") is None, fam.name
    with torch.device("meta"):
        others = [Flux(C.FLUX_DEV), Flux2(C.FLUX2_KLEIN_4B), ZImage(C.Z_IMAGE), MMDiT(C.SD35_LARGE)]
    for net in others:
        assert QWEN_IMAGE_FAMILY.detect(_shapes(net.state_dict()), {}, "x") is None


def _variant(cfg):
    return cfg.qwen_image.edit_plus, cfg.qwen_image.zero_cond_t


def test_edit_plus_by_name_and_2511_marker_layered_refused(released):
    """Qwen-Image-Edit's files are Qwen-Image's network and load (the edit is the reference image);
    Edit-2509/2511 (several images) are told by name, 2511's zero_cond_t by its name or ComfyUI's
    `__index_timestep_zero__` marker (under the network's prefix); Layered is refused by its extra
    time input."""
    shapes = {k[len(DD.NET):]: v for k, v in _shapes(released).items() if k.startswith(DD.NET)}
    for name, want in (("qwen_image_edit_2509_fp8_e4m3fn.safetensors", (True, False)),
                       ("Qwen-Image-Edit-2509-Q4_K_M.gguf", (True, False)),
                       ("QwenImageEditPlus_bf16.safetensors", (True, False)),
                       ("qwen_image_edit_2511_bf16.safetensors", (True, True)),
                       ("Qwen-Image-Edit-2511-Q8_0.gguf", (True, True)),
                       ("qwen_image_edit_fp8_e4m3fn.safetensors", (False, False)),
                       ("QwenImageEdit_bf16.safetensors", (False, False)),
                       ("qwen_image_2511_style.safetensors", (False, False)),  # not an Edit name
                       ("qwen_image_reddit_style.safetensors", (False, False))):
        assert _variant(QWEN_IMAGE_FAMILY.detect(shapes, {}, name)) == want, name
    for prefix in ("", "model.diffusion_model."):
        marked = {**{prefix + k: v for k, v in shapes.items()}, prefix + "__index_timestep_zero__": (0,)}
        assert _variant(QWEN_IMAGE_FAMILY.detect(marked, {}, "renamed.safetensors")) == (True, True)
    layered = {**shapes, "time_text_embed.addition_t_embedding.weight": (2, 3072)}
    with pytest.raises(CheckpointError, match="Qwen-Image-Layered"):
        QWEN_IMAGE_FAMILY.detect(layered, {}, "qwen_image_layered.safetensors")


@pytest.fixture(scope="module")
def tiny():
    return qwen_image_transformer(seed=7), qwen_image_vae(seed=8)


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
def test_comfyui_loaders_take_the_split_network_and_vae(tiny, tmp_path, prefix):
    """UNETLoader's and VAELoader's paths: the network (bare or under ComfyUI's prefix) and the VAE in
    Wan's names, which encodes as diffusers' does; a network alone is refused with what it lacks."""
    from opensd.pipeline import parts
    from opensd.pipeline.pipeline import load
    net, vae = tiny
    files = write_qwen_image_split_files(tmp_path / "models", net, vae, prefix=prefix)
    unet = parts.load_unet(files["unet"], device="cpu", precision="fp32")
    assert unet.config.family == "qwen_image"
    got = unet.model.network.state_dict()
    assert all(torch.equal(got[k], v) for k, v in net.state_dict().items())
    decoder = parts.load_vae(files["vae"], device="cpu", precision="fp32")
    assert decoder.config.family == "qwen_image" and decoder.config.vae.latents_mean == QWEN_IMAGE_VAE.latents_mean
    image = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        want = vae.encode(image[:, :, None]).latent_dist.mean[:, :, 0]
        assert_close_scaled(decoder.model.vae.encode(image)[0], want, rel=1e-5)
    with pytest.raises(CheckpointError, match="no Qwen2.5-VL-7B text encoder"):
        load(files["unet"], precision="fp32", device="cpu")


def test_float8_and_gguf_networks_stay_stored(tiny, tmp_path):
    """ComfyUI's qwen_image_fp8_e4m3fn (Linear weights in float8) and a city96 GGUF (Q8_0) through the
    UNETLoader path: their Linears stay stored and compute what the rounded weights do."""
    import gguf
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.qwen_image import QwenImage
    from opensd.models.stored_weights import StoredLinear
    from opensd.pipeline import parts
    net, _ = tiny
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    linears = {n + ".weight" for n, m in net.named_modules() if isinstance(m, torch.nn.Linear)}
    fp8 = {k: v.to(torch.float8_e4m3fn) if k in linears else v for k, v in sd.items()}
    save_safetensors(fp8, tmp_path / "qwen_image_fp8_e4m3fn.safetensors")
    writer = gguf.GGUFWriter(str(tmp_path / "qwen-image-Q8_0.gguf"), "qwen_image")
    held = {}
    for k, v in sd.items():
        a = v.float().numpy()
        quantise = k in linears and a.shape[1] % 32 == 0
        writer.add_tensor(k, gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0) if quantise else a,
                          raw_dtype=gguf.GGMLQuantizationType.Q8_0 if quantise else None)
        held[k] = (torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0),
                                                           gguf.GGMLQuantizationType.Q8_0).reshape(a.shape).copy())
                   if quantise else v.float())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    g = torch.Generator().manual_seed(5)
    x, ctx, t = torch.randn(1, 16, 6, 4, generator=g), torch.randn(1, 5, 24, generator=g), torch.tensor([0.4])
    for name, weights in (("qwen_image_fp8_e4m3fn.safetensors", {k: v.float() for k, v in fp8.items()}),
                          ("qwen-image-Q8_0.gguf", held)):
        pipe = parts.load_unet(tmp_path / name, device="cpu", precision="fp32")
        stored = pipe.model.network
        assert isinstance(stored.transformer_blocks[1].attn.to_q, StoredLinear), name
        rounded = QwenImage(stored.cfg).eval()
        rounded.load_state_dict(weights)
        with torch.no_grad():
            assert_close_scaled(stored(x, t, ctx), rounded(x, t, ctx), rel=1e-5)


def _folder(root, tiny, class_name="QwenImagePipeline", scheduler=None):
    net, vae = tiny
    root.mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": class_name}), encoding="utf-8")
    net.save_pretrained(root / "transformer")
    vae.save_pretrained(root / "vae")
    if scheduler is not None:
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler), encoding="utf-8")
    return root


@pytest.mark.parametrize("scheduler", [
    {"base_shift": 0.6, "max_shift": 1.1, "max_image_seq_len": 4096, "shift_terminal": None, "use_dynamic_shifting": True},
    {"use_dynamic_shifting": True, "shift_terminal": 0.05},  # the rest at the scheduler's defaults
    {"use_dynamic_shifting": False, "shift": 3.0, "shift_terminal": 0.02},
], ids=["no-terminal", "defaults", "fixed"])
def test_pipeline_folder_keeps_its_scheduler_settings(tiny, tmp_path, scheduler):
    """A folder's scheduler config is the schedule: ours equals FlowMatchEulerDiscreteScheduler's made from
    the same config, as QwenImagePipeline drives it (mu from the image's tokens)."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler

    from opensd.pipeline.loader import read_model
    from opensd.sampling.schedules import make_sigmas
    config = {"_class_name": "FlowMatchEulerDiscreteScheduler", **scheduler}
    family, sd, _, cfg = read_model(_folder(tmp_path / "qi", tiny, scheduler=config))
    assert family is QWEN_IMAGE_FAMILY
    assert cfg.vae.latents_std == pytest.approx(tiny[1].config.latents_std)
    assert set(sd) >= {D.VAE + "encoder.conv1.weight", DD.NET + "txt_norm.weight"}
    ref = FlowMatchEulerDiscreteScheduler.from_config(config)
    steps, side = 12, 768
    c = ref.config
    slope = (c.max_shift - c.base_shift) / (c.max_image_seq_len - c.base_image_seq_len)
    tokens = (side // 16) ** 2
    ref.set_timesteps(sigmas=[1 - i / steps for i in range(steps)], mu=tokens * slope + c.base_shift - slope * c.base_image_seq_len)
    sampling = family.sampling(SimpleNamespace(config=cfg), side, side, None, steps)
    sigmas = make_sigmas("simple", sampling.schedule, steps, sampler="euler", family="qwen_image")
    torch.testing.assert_close(sigmas, ref.sigmas.float(), rtol=2e-6, atol=2e-6)


def test_a_linear_time_shift_is_refused(tiny, tmp_path):
    from opensd.pipeline.loader import read_model
    with pytest.raises(CheckpointError, match="time_shift_type 'linear'"):
        read_model(_folder(tmp_path / "qi", tiny, scheduler={"use_dynamic_shifting": True, "time_shift_type": "linear"}))


def test_edit_plus_folders_by_class_and_zero_cond_t(tiny, tmp_path):
    """QwenImageEditPlusPipeline folders are Edit Plus; 2511's transformer config (zero_cond_t) sets
    the network's flag; QwenImageEditInpaintPipeline's are Edit; other Edit pipelines and Layered are
    refused naming what is supported."""
    from diffusers import QwenImageTransformer2DModel
    from opensd.pipeline.loader import read_model
    net, vae = tiny
    seen = {}
    for name, cls, zero in (("edit", "QwenImageEditPipeline", False), ("plus", "QwenImageEditPlusPipeline", False),
                            ("2511", "QwenImageEditPlusPipeline", True), ("inpaint", "QwenImageEditInpaintPipeline", False)):
        net2511 = QwenImageTransformer2DModel.from_config(net.config, zero_cond_t=zero)
        net2511.load_state_dict(net.state_dict())
        root = _folder(tmp_path / name, (net2511, vae), class_name=cls)
        seen[name] = _variant(read_model(root)[3])
    assert seen == {"edit": (False, False), "plus": (True, False), "2511": (True, True), "inpaint": (False, False)}
    with pytest.raises(CheckpointError, match="QwenImageEditOtherPipeline: not supported.*Edit-2509/2511"):
        read_model(_folder(tmp_path / "other", tiny, class_name="QwenImageEditOtherPipeline"))
    with pytest.raises(CheckpointError, match="Qwen-Image-Layered"):
        read_model(_folder(tmp_path / "layered", tiny, class_name="QwenImageLayeredPipeline"))


def test_a_model_too_big_for_the_ram_is_refused_naming_the_smaller_files(tiny, tmp_path, monkeypatch):
    from opensd.errors import OutOfMemoryForModel
    from opensd.pipeline import parts, peak_memory
    net, vae = tiny
    files = write_qwen_image_split_files(tmp_path / "models", net, vae)
    monkeypatch.setattr(peak_memory, "free_memory", lambda: (1000, 0))
    with pytest.raises(OutOfMemoryForModel, match=r"GGUF Q8_0/Q4_K or float8; for Qwen-Image .*"
                                                  r"qwen_image_fp8_e4m3fn\.safetensors .*qwen_2\.5_vl_7b_fp8_scaled"):
        parts.load_unet(files["unet"], device="cpu", precision="fp32")


@pytest.mark.parametrize("layout", ["marker", "comfy_quant"])
@torch.no_grad()
def test_a_scaled_float8_text_encoder_as_comfyui_ships_it(tmp_path, layout):
    """text_encoders/qwen_2.5_vl_7b_fp8_scaled.safetensors (ComfyUI's names, the vision tower in the file):
    its language model's Linears stay float8 with their scales and compute what the dequantised weights do."""
    from opensd.checkpoints.keymap_qwen25vl import qwen25vl_state_dict
    from opensd.models.qwen3 import Qwen3TextEncoder
    from test_qwen25vl import TINY, _comfy, hf_qwen25vl
    from test_scaled_fp8 import linear_weights, stored_and_plain, write_scaled
    ref = hf_qwen25vl(TINY, seed=4)
    sd = _comfy(ref.state_dict())
    linears = [k for k in _comfy({k: None for k in linear_weights(ref)}) if not k.startswith("visual.")]
    path = tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors"
    held = write_scaled(path, sd, linears, layout)
    tensors = QWEN_IMAGE_FAMILY.encoder_tensors([path])
    ours, plain = stored_and_plain(Qwen3TextEncoder, TINY, {k[len(DD.QWEN25):]: v for k, v in tensors.items()
                                                            if k.startswith(DD.QWEN25)},
                                   qwen25vl_state_dict(held)[0])
    ids = torch.randint(0, TINY.vocab_size, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    assert_close_scaled(ours(ids, mask, -1), plain(ids, mask, -1), 1e-6)


def test_a_scaled_float8_vision_tower_is_read_in_plain_floats(tmp_path):
    """A text encoder whose vision tower's Linears are scaled float8 too: the tower comes out as the
    dequantised weights (it is built with plain Linears)."""
    from opensd.checkpoints.keymap_qwen25vl_vision import qwen25vl_vision_state_dict
    from opensd.models.stored_weights import is_stored
    from test_qwen25vl import TINY, _comfy, hf_qwen25vl
    from test_scaled_fp8 import linear_weights, write_scaled
    ref = hf_qwen25vl(TINY, seed=4)
    sd = _comfy(ref.state_dict())
    linears = list(_comfy({k: None for k in linear_weights(ref)}))
    path = tmp_path / "qwen_2.5_vl_7b_fp8_scaled.safetensors"
    held = write_scaled(path, sd, linears, "marker")
    tensors = QWEN_IMAGE_FAMILY.encoder_tensors([path])
    visual = {k[len(DD.QWEN25_VISUAL):]: v for k, v in tensors.items() if k.startswith(DD.QWEN25_VISUAL)}
    want = qwen25vl_vision_state_dict(held)  # the file's weights, dequantised
    assert set(visual) == set(want) and not any(is_stored(v) for v in visual.values())
    assert all(torch.equal(visual[k].float(), want[k]) for k in want)
    assert any(k.startswith("visual.") for k in linears)
