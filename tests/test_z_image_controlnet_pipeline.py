"""Z-Image txt2img with a Fun ControlNet equals diffusers' ZImageControlNetPipeline step by step on tiny
random weights (1.0's 16-channel layout and 2.1's 33 channels, the 17 past the control latent zero),
without and with CFG; the ControlNet file written in the released (diffusers single-file) naming.
ControlNets of other families are refused on a Z-Image model, and a Z-Image one on other models."""
from __future__ import annotations

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, ZImageControlNetModel, ZImageControlNetPipeline
from transformers import AutoTokenizer

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError, InvalidArgument
from opensd.pipeline.pipeline import load
from reference import assert_close_scaled, randomize_
from test_flux_controlnet import _control_image, euler_steps
from z_image_fixtures import Z_DIM, Z_HEADS, write_z_image_folder, z_image_parts

PROMPT, NEGATIVE = "A photograph of an astronaut riding a horse on the moon", "blurry, lowres"
STEPS, SEED, SIZE, WEIGHT = 4, 99, 64, 0.75  # 4 steps: the simple schedule hits diffusers' sigmas exactly
LAYOUTS = {"1.0": (16, None), "2.1": (33, "control_noise_refiner")}


@pytest.fixture(scope="module")
def z_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("z_image_cn")
    parts = z_image_parts()
    folder = write_z_image_folder(root / "model", parts)
    return load(folder, precision="fp32", device="cpu"), parts, folder, root


def _controlnet(version: str, path):
    in_dim, mode = LAYOUTS[version]
    cn = ZImageControlNetModel(control_layers_places=[0, 1], control_refiner_layers_places=[0, 1],
                               control_in_dim=in_dim, add_control_noise_refiner=mode, dim=Z_DIM,
                               n_refiner_layers=2, n_heads=Z_HEADS, n_kv_heads=Z_HEADS)
    cn = randomize_(cn, seed=7, std=0.1).eval()
    save_safetensors({k: v.contiguous() for k, v in cn.state_dict().items()}, path)
    return cn


def _assert_equals_reference(z_image, cls, cn, seen, **call):
    """`seen` (our latents after each step) equal to those of diffusers' `cls` pipeline called with
    `call` on the same parts, noise, control image and scale."""
    ours, parts, folder, _ = z_image
    ref = cls(scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False),
              vae=parts["vae"], text_encoder=parts["text_encoder"], transformer=parts["transformer"], controlnet=cn,
              tokenizer=AutoTokenizer.from_pretrained(str(folder / "tokenizer")))
    ref.set_progress_bar_config(disable=True)
    want = []
    with torch.no_grad():
        ref(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, latents=ours.noise([SEED], SIZE // 8, SIZE // 8),
            control_image=_control_image(), controlnet_conditioning_scale=WEIGHT, output_type="latent",
            callback_on_step_end=lambda p, i, t, kw: want.append(kw["latents"].clone()) or {}, **call)
    assert len(seen) == len(want) == STEPS
    for a, b in zip(seen, want):
        assert_close_scaled(a, b, rel=1e-4)


@pytest.mark.parametrize("version,cfg", [("1.0", 1.0), ("2.1", 1.0), ("2.1", 3.0)])
def test_txt2img_equals_z_image_controlnet_pipeline_step_by_step(z_image, monkeypatch, version, cfg):
    ours, _, _, root = z_image
    path = root / f"cn_{version}.safetensors"
    cn = _controlnet(version, path)
    seen = euler_steps(monkeypatch)
    spec = ControlSpec(load_controlnet(path, ours), _control_image(), weight=WEIGHT)
    negative = NEGATIVE if cfg > 1 else ""
    ours.txt2img(PROMPT, negative, steps=STEPS, cfg=cfg, seed=SEED, width=SIZE, height=SIZE, controls=[spec])
    _assert_equals_reference(z_image, ZImageControlNetPipeline, cn, seen, negative_prompt=negative or None,
                             guidance_scale=cfg - 1)
    controlled = seen[-1]
    ours.txt2img(PROMPT, negative, steps=STEPS, cfg=cfg, seed=SEED, width=SIZE, height=SIZE)
    assert (seen[-1] - controlled).abs().max() > 1e-3  # the ControlNet changed the image


def test_other_families_controlnets_are_refused(z_image, tmp_path):
    ours, *_ = z_image
    from test_sd3_controlnet import _controlnet as sd3_controlnet
    sd3_controlnet(1).save_pretrained(tmp_path / "sd3")
    with pytest.raises(CheckpointError, match="SD3 ControlNet; the loaded model is not SD3"):
        load_controlnet(tmp_path / "sd3", ours)
    save_safetensors({"input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "sd.safetensors")
    with pytest.raises(CheckpointError, match="is not a Z-Image ControlNet.*loaded model is Z-Image"):
        load_controlnet(tmp_path / "sd.safetensors", ours)


def test_a_z_image_controlnet_is_refused_elsewhere(z_image, tmp_path):
    from dit_fixtures import write_diffusers_folder
    from test_sd3_controlnet import sd3_parts
    ours, *_ = z_image
    _controlnet("1.0", tmp_path / "cn.safetensors")
    sd3 = load(write_diffusers_folder(tmp_path / "model", "sd3", sd3_parts()), precision="fp32", device="cpu")
    with pytest.raises(CheckpointError, match="is a Z-Image ControlNet .* the loaded model is not Z-Image"):
        load_controlnet(tmp_path / "cn.safetensors", sd3)
    spec = ControlSpec(load_controlnet(tmp_path / "cn.safetensors", ours), _control_image())
    with pytest.raises(InvalidArgument, match="is a Z-Image ControlNet; the model is not of that family"):
        spec.validate(sd3.config)


def test_listed_as_a_z_image_controlnet(tmp_path):
    from opensd.library.model_catalog import _controlnet as describe
    cn = _controlnet("2.1", tmp_path / "cn.safetensors")
    shapes = {k: {"shape": list(v.shape)} for k, v in cn.state_dict().items()}
    assert describe(shapes, {}, tmp_path / "cn.safetensors") == (
        "z_image", "Z-Image Fun ControlNet Union 2.x (2 control blocks, 33 input channels)")


def _mask():
    from PIL import Image
    m = torch.zeros(SIZE, SIZE, dtype=torch.uint8)
    m[8:40, 16:56] = 255
    return Image.fromarray(m.numpy()).convert("RGB")


def test_inpainting_equals_z_image_controlnet_inpaint_pipeline_step_by_step(z_image, monkeypatch):
    """A 2.1 ControlNet with a mask (white = repaint) and the image to inpaint: the 17 channels are
    1 - the mask at the latent's size and the latent of the image with its masked pixels grey."""
    from diffusers import ZImageControlNetInpaintPipeline
    from PIL import Image
    ours, _, _, root = z_image
    path = root / "cn_inpaint.safetensors"
    cn = _controlnet("2.1", path)
    image = Image.fromarray(torch.randint(0, 256, (SIZE, SIZE, 3), generator=torch.Generator().manual_seed(5),
                                          dtype=torch.uint8).numpy())
    seen = euler_steps(monkeypatch)
    spec = ControlSpec(load_controlnet(path, ours), _control_image(), weight=WEIGHT, mask=_mask(), inpaint_image=image)
    ours.txt2img(PROMPT, "", steps=STEPS, cfg=1.0, seed=SEED, width=SIZE, height=SIZE, controls=[spec])
    _assert_equals_reference(z_image, ZImageControlNetInpaintPipeline, cn, seen, image=image, mask_image=_mask(),
                             guidance_scale=0.0)
    controlled = seen[-1]
    ours.txt2img(PROMPT, "", steps=STEPS, cfg=1.0, seed=SEED, width=SIZE, height=SIZE,
                 controls=[ControlSpec(spec.model, _control_image(), weight=WEIGHT)])
    assert (seen[-1] - controlled).abs().max() > 1e-3  # the mask and image changed it


def test_inpainting_inputs_are_checked(z_image):
    ours, _, _, root = z_image
    _controlnet("1.0", root / "cn_v1.safetensors")
    v1 = load_controlnet(root / "cn_v1.safetensors", ours)
    with pytest.raises(InvalidArgument, match="1.0, which has no inpainting channels"):
        ControlSpec(v1, _control_image(), mask=_mask()).validate(ours.config)
    _controlnet("2.1", root / "cn_v2.safetensors")
    v2 = load_controlnet(root / "cn_v2.safetensors", ours)
    with pytest.raises(InvalidArgument, match="a mask is required"):
        ControlSpec(v2, _control_image(), inpaint_image=_control_image()).validate(ours.config)
    ControlSpec(v2, _control_image(), mask=_mask()).validate(ours.config)  # the image to inpaint defaults to grey
