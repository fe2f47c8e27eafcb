"""InstantX's Qwen-Image ControlNets against diffusers on tiny random weights: the network's residuals
equal QwenImageControlNetModel's and the base network with them equals QwenImageTransformer2DModel's
with controlnet_block_samples; txt2img with a ControlNet (single file and diffusers folder, a
start window, two units of one Union file as QwenImageMultiControlNetModel) equals
QwenImageControlNetPipeline step by step. Other families' ControlNets are refused on Qwen-Image and
a Qwen-Image one elsewhere."""
from __future__ import annotations

import pytest
import torch
from diffusers import (FlowMatchEulerDiscreteScheduler, QwenImageControlNetModel, QwenImageControlNetPipeline,
                       QwenImageMultiControlNetModel)
from transformers import Qwen2TokenizerFast

from dit_fixtures import spy_euler
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.checkpoints.qwen_image_controlnet_files import qwen_image_controlnet_config
from opensd.errors import CheckpointError, InvalidArgument
from opensd.models.config_dit import QwenImageConfig
from opensd.models.qwen_image import QwenImage
from opensd.models.qwen_image_controlnet import QwenImageControlNet
from opensd.pipeline.pipeline import load
from qwen_image_fixtures import (QI_AXES, QI_DIM, QI_HEADS, QI_LATENT, SCHEDULER, qwen_image_parts,
                                 qwen_image_transformer, write_qwen_image_folder)
from reference import assert_close_scaled, randomize_
from test_flux_controlnet import _control_image

PROMPT = "A photograph of an astronaut riding a horse on the moon"
STEPS, SEED, SIZE, WEIGHT = 4, 99, 64, 0.75
CTX = 128  # the tiny pipeline's text width (qwen_image_parts)


def _controlnet(layers: int = 1, ctx: int = CTX, seed: int = 7) -> QwenImageControlNetModel:
    cn = QwenImageControlNetModel(in_channels=4 * QI_LATENT, out_channels=QI_LATENT, num_layers=layers,
                                  attention_head_dim=QI_DIM // QI_HEADS, num_attention_heads=QI_HEADS,
                                  joint_attention_dim=ctx, axes_dims_rope=QI_AXES)
    return randomize_(cn, seed=seed, std=0.1).eval()


def _ours(cn: QwenImageControlNetModel, base: QwenImageConfig) -> QwenImageControlNet:
    sd = cn.state_dict()
    net = QwenImageControlNet(qwen_image_controlnet_config({k: tuple(v.shape) for k, v in sd.items()}, base))
    net.load_state_dict(sd, strict=True)
    return net.eval()


@pytest.mark.parametrize("layers,n_main", [(1, 2), (2, 3), (3, 3)])
def test_network_equals_diffusers(layers, n_main):
    ref_base = qwen_image_transformer(layers=n_main)
    cfg = QwenImageConfig(in_channels=64, out_channels=16, num_layers=n_main, attention_head_dim=QI_DIM // QI_HEADS,
                          num_attention_heads=QI_HEADS, joint_attention_dim=24, axes_dims_rope=QI_AXES)
    base = QwenImage(cfg).eval()
    base.load_state_dict(ref_base.state_dict(), strict=True)
    cn = _controlnet(layers, ctx=24)
    ours = _ours(cn, cfg)
    g = torch.Generator().manual_seed(0)
    x, cond = torch.randn(2, 16, 6, 8, generator=g), torch.randn(2, 16, 6, 8, generator=g)
    ctx, t = torch.randn(2, 5, 24, generator=g), torch.tensor([0.7, 0.3])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]).bool()
    pack = lambda z: QwenImageControlNetPipeline._pack_latents(z, 2, 16, 6, 8)  # noqa: E731
    shapes = [(1, 3, 4)] * 2
    with torch.no_grad():
        want = cn(pack(x), pack(cond), 0.6, ctx, mask.float(), t, shapes, return_dict=False)
        got = ours(x, t, ctx, mask, cond)
        assert len(got) == layers
        for a, b in zip(got, want):
            assert_close_scaled(a * 0.6, b, rel=1e-5)
        out = ref_base(pack(x), ctx, mask.float(), t, shapes, controlnet_block_samples=want, return_dict=False)[0]
        mine = base(x, t, ctx, mask, control=[[r * 0.6 for r in got]])
        plain = base(x, t, ctx, mask)
    assert_close_scaled(pack(mine), out, rel=1e-5)
    assert (mine - plain).abs().max() > 1e-3


@pytest.fixture(scope="module")
def qwen_image(tmp_path_factory):
    root = tmp_path_factory.mktemp("qwen_image_cn")
    parts = qwen_image_parts()
    folder = write_qwen_image_folder(root / "model", parts)
    return load(folder, precision="fp32", device="cpu"), parts, folder, root


def _reference(qwen_image, monkeypatch, controlnet, **call) -> list[torch.Tensor]:
    """QwenImageControlNetPipeline's latents after each step, unpacked, from our seed's noise; the
    control latent the VAE's mean (diffusers samples it; opensd's DiT ControlNets take the mean)."""
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_controlnet as M
    monkeypatch.setattr(M, "retrieve_latents", lambda out, generator=None: out.latent_dist.mode())
    ours, parts, folder, _ = qwen_image
    ref = QwenImageControlNetPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=parts["vae"], text_encoder=parts["text_encoder"],
        tokenizer=Qwen2TokenizerFast.from_pretrained(str(folder / "tokenizer")), transformer=parts["transformer"],
        controlnet=controlnet)
    ref.set_progress_bar_config(disable=True)
    noise = ours.noise([SEED], SIZE // 8, SIZE // 8)
    steps = []

    def on_step_end(p, i, t, kwargs):
        steps.append(QwenImageControlNetPipeline._unpack_latents(kwargs["latents"].clone(), SIZE, SIZE, 8)[:, :, 0])
        return {}

    with torch.no_grad():
        ref(PROMPT, height=SIZE, width=SIZE, num_inference_steps=STEPS, output_type="latent",
            latents=QwenImageControlNetPipeline._pack_latents(noise, 1, 16, SIZE // 8, SIZE // 8),
            callback_on_step_end=on_step_end, **call)
    return steps


def _assert_steps(seen, want):
    assert len(seen["steps"]) == len(want) == STEPS
    for got, expected in zip(seen["steps"], want):
        assert_close_scaled(got, expected, rel=1e-4)


@pytest.mark.parametrize("as_folder,start", [(False, 0.0), (True, 0.0), (False, 0.5)])
def test_txt2img_equals_qwen_image_controlnet_pipeline_step_by_step(qwen_image, monkeypatch, as_folder, start):
    ours, _, _, root = qwen_image
    cn = _controlnet()
    path = root / "cn_folder" if as_folder else root / "cn.safetensors"
    if as_folder:
        cn.save_pretrained(path)
    else:
        save_safetensors({k: v.contiguous() for k, v in cn.state_dict().items()}, path)
    seen = spy_euler(monkeypatch)
    spec = ControlSpec(load_controlnet(path, ours), _control_image(), weight=WEIGHT, start=start)
    ours.txt2img(PROMPT, "", steps=STEPS, cfg=1.0, seed=SEED, width=SIZE, height=SIZE, controls=[spec])
    _assert_steps(seen, _reference(qwen_image, monkeypatch, cn, control_image=_control_image(), control_guidance_start=start,
                                   controlnet_conditioning_scale=WEIGHT))
    controlled = seen["steps"][-1]
    seen.clear()
    ours.txt2img(PROMPT, "", steps=STEPS, cfg=1.0, seed=SEED, width=SIZE, height=SIZE)
    assert (seen["steps"][-1] - controlled).abs().max() > 1e-3  # the ControlNet changed the image


def test_two_units_of_one_union_file_equal_the_multi_controlnet(qwen_image, monkeypatch):
    ours, _, _, root = qwen_image
    cn = _controlnet(layers=2, seed=9)
    save_safetensors({k: v.contiguous() for k, v in cn.state_dict().items()}, root / "union.safetensors")
    loaded = load_controlnet(root / "union.safetensors", ours)
    second = _control_image().transpose(0)  # another picture
    seen = spy_euler(monkeypatch)
    ours.txt2img(PROMPT, "", steps=STEPS, cfg=1.0, seed=SEED, width=SIZE, height=SIZE,
                 controls=[ControlSpec(loaded, _control_image(), weight=0.5), ControlSpec(loaded, second, weight=0.8)])
    _assert_steps(seen, _reference(qwen_image, monkeypatch, QwenImageMultiControlNetModel([cn]),
                                   control_image=[_control_image(), second], controlnet_conditioning_scale=[0.5, 0.8]))


def test_other_families_controlnets_are_refused(qwen_image, tmp_path):
    ours, *_ = qwen_image
    save_safetensors({"input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}, tmp_path / "sd.safetensors")
    with pytest.raises(CheckpointError, match="is not a Qwen-Image ControlNet.*loaded model is Qwen-Image"):
        load_controlnet(tmp_path / "sd.safetensors", ours)
    from test_sd3_controlnet import _controlnet as sd3_controlnet
    sd3_controlnet(1).save_pretrained(tmp_path / "sd3")
    with pytest.raises(CheckpointError, match="SD3 ControlNet; the loaded model is not SD3"):
        load_controlnet(tmp_path / "sd3", ours)


def test_a_qwen_image_controlnet_is_refused_elsewhere(qwen_image, tmp_path):
    from dit_fixtures import write_diffusers_folder
    from test_sd3_controlnet import sd3_parts
    ours, *_ = qwen_image
    save_safetensors({k: v.contiguous() for k, v in _controlnet().state_dict().items()}, tmp_path / "cn.safetensors")
    sd3 = load(write_diffusers_folder(tmp_path / "model", "sd3", sd3_parts()), precision="fp32", device="cpu")
    with pytest.raises(CheckpointError, match="is a Qwen-Image ControlNet .* the loaded model is not Qwen-Image"):
        load_controlnet(tmp_path / "cn.safetensors", sd3)
    spec = ControlSpec(load_controlnet(tmp_path / "cn.safetensors", ours), _control_image())
    with pytest.raises(InvalidArgument, match="is a Qwen-Image ControlNet; the model is not of that family"):
        spec.validate(sd3.config)


def test_a_misfit_or_inpainting_file_is_refused(qwen_image, tmp_path):
    ours, *_ = qwen_image
    sd = _controlnet().state_dict()
    wide = {**sd, "controlnet_x_embedder.weight": torch.zeros(QI_DIM, 68)}
    save_safetensors({k: v.contiguous() for k, v in wide.items()}, tmp_path / "inpaint.safetensors")
    with pytest.raises(CheckpointError, match="4 extra control channels .*Inpainting\\): not supported"):
        load_controlnet(tmp_path / "inpaint.safetensors", ours)
    narrow = _controlnet(ctx=24).state_dict()
    save_safetensors({k: v.contiguous() for k, v in narrow.items()}, tmp_path / "narrow.safetensors")
    with pytest.raises(CheckpointError, match="does not fit the loaded model: its text width 24 \\(the model's: 128\\)"):
        load_controlnet(tmp_path / "narrow.safetensors", ours)
