"""SD3 ControlNets (diffusers' SD3ControlNetModel layout): our network's residuals equal diffusers' on
tiny random weights, and the MMDiT with those residuals equals SD3Transformer2DModel's (fewer
ControlNet blocks than its own: diffusers' floor rule, none after the last block)."""
from __future__ import annotations

import torch
from diffusers import SD3ControlNetModel

from dit_fixtures import META_SD3, SD3_HEAD, sd3_parts
from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.keymap_mmdit import mmdit_from_diffusers
from opensd.checkpoints.sd3_controlnet_files import read_sd3_controlnet
from opensd.models.mmdit import MMDiT
from opensd.models.sd3_controlnet import SD3ControlNet
from reference import assert_close_scaled, randomize_


def _controlnet(layers=1):
    net = SD3ControlNetModel(sample_size=16, patch_size=2, in_channels=16, num_layers=layers,
                             attention_head_dim=SD3_HEAD, num_attention_heads=2, joint_attention_dim=128,
                             caption_projection_dim=2 * SD3_HEAD, pooled_projection_dim=96, out_channels=16,
                             pos_embed_max_size=16)
    return randomize_(net, seed=4, std=0.1).eval()


def _inputs():
    g = torch.Generator().manual_seed(2)
    return (torch.randn(1, 16, 8, 8, generator=g), torch.randn(1, 16, 8, 8, generator=g),
            torch.randn(1, 6, 128, generator=g), torch.randn(1, 96, generator=g), torch.tensor([700.0]))


def test_residuals_and_controlled_mmdit_equal_diffusers():
    ref_cn = _controlnet(1)
    sd, cfg = read_sd3_controlnet(dict(ref_cn.state_dict()), SD3_HEAD)
    ours_cn = SD3ControlNet(cfg)
    ours_cn.load_state_dict(sd, strict=True)
    x, cond, ctx, y, t = _inputs()
    with torch.no_grad():
        want = ref_cn(x, cond, encoder_hidden_states=ctx, pooled_projections=y, timestep=t, return_dict=False)[0]
        got = ours_cn.eval()(x, t, ctx, y, cond)
    assert len(got) == len(want) == 1
    assert_close_scaled(got[0], want[0], rel=1e-5)
    transformer = sd3_parts()["transformer"]
    tsd = dict(transformer.state_dict())
    mcfg = DD.mmdit_config_diffusers({k: tuple(v.shape) for k, v in tsd.items()}, "", META_SD3)
    mmdit = MMDiT(mcfg)
    mmdit.load_state_dict(mmdit_from_diffusers(tsd, mcfg), strict=True)
    with torch.no_grad():
        ref = transformer(x, ctx, y, t, block_controlnet_hidden_states=want, return_dict=False)[0]
        plain = transformer(x, ctx, y, t, return_dict=False)[0]
        out = mmdit.eval()(x, t, ctx, y, control=[list(got)])
    assert_close_scaled(out, ref, rel=1e-5)
    assert (ref - plain).abs().max() > 0.01 * plain.abs().max()


PROMPT, NEGATIVE, STEPS, CFG, SEED, SIZE, WEIGHT = "a photo of a cat", "blurry", 3, 5.0, 11, 64, 0.7


def diffusers_steps(tmp_path, monkeypatch, parts: dict, controlnet, latents) -> list[torch.Tensor]:
    """StableDiffusion3ControlNetPipeline's latents after each step, the control image's latent the
    posterior mean as ours (diffusers samples it)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3ControlNetPipeline
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from dit_fixtures import hf_tokenizers
    from test_flux_controlnet import _control_image
    monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
    tok = hf_tokenizers(tmp_path)
    ref = StableDiffusion3ControlNetPipeline(
        transformer=parts["transformer"], scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=parts["vae"],
        text_encoder=parts["text_encoder"], tokenizer=tok["clip"], text_encoder_2=parts["text_encoder_2"],
        tokenizer_2=tok["clip_g"], text_encoder_3=parts["text_encoder_3"], tokenizer_3=tok["t5"], controlnet=controlnet)
    ref.set_progress_bar_config(disable=True)
    want = []
    with torch.no_grad():
        ref(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE,
            latents=latents, control_image=_control_image(), controlnet_conditioning_scale=WEIGHT,
            output_type="latent", callback_on_step_end=lambda p, i, t, kw: want.append(kw["latents"].clone()) or {})
    return want


def ours_steps(tmp_path, monkeypatch, parts: dict, controlnet_path) -> tuple[list[torch.Tensor], object]:
    """(our latents after each step, the pipeline) with the ControlNet at `controlnet_path`."""
    from dit_fixtures import write_diffusers_folder
    from opensd.adapters.controlnet import ControlSpec, load_controlnet
    from opensd.pipeline.pipeline import load
    from test_flux_controlnet import _control_image, euler_steps
    ours = load(write_diffusers_folder(tmp_path / "model", "sd3", parts), precision="fp32", device="cpu")
    seen = euler_steps(monkeypatch)
    spec = ControlSpec(load_controlnet(controlnet_path, ours), _control_image(), weight=WEIGHT)
    ours.txt2img(PROMPT, NEGATIVE, steps=STEPS, cfg=CFG, seed=SEED, width=SIZE, height=SIZE, controls=[spec])
    return seen, ours


def test_txt2img_with_controlnet_equals_diffusers_step_by_step(tmp_path, monkeypatch):
    parts = sd3_parts()
    cn = _controlnet(1)
    cn.save_pretrained(tmp_path / "cn")  # a diffusers folder
    seen, ours = ours_steps(tmp_path, monkeypatch, parts, tmp_path / "cn")
    want = diffusers_steps(tmp_path, monkeypatch, parts, cn, ours.noise([SEED], SIZE // 8, SIZE // 8))
    assert len(seen) == len(want) == STEPS
    for a, b in zip(seen, want):
        assert_close_scaled(a, b, rel=1e-4)


def test_listed_as_an_sd3_controlnet(tmp_path):
    from opensd.library.model_catalog import _controlnet as describe
    shapes = {k: {"shape": list(v.shape)} for k, v in _controlnet(2).state_dict().items()}
    assert describe(shapes, {}, tmp_path / "cn.safetensors") == ("sd3", "SD3 ControlNet (2 blocks)")


def test_instantx_size_key_set_loads_on_meta():
    """InstantX's SD3-Controlnet-Canny shape: 6 blocks of SD3 Medium's width (24 heads of 64)."""
    from opensd.checkpoints.sd3_controlnet_files import compatible_sd3_controlnet
    from opensd.models.config_dit import SD3_MEDIUM
    with torch.device("meta"):
        ref = SD3ControlNetModel(num_layers=6, num_attention_heads=24, caption_projection_dim=1536,
                                 pos_embed_max_size=192)
    sd = dict(ref.state_dict())
    ours_sd, cfg = read_sd3_controlnet(sd)
    assert (cfg.depth, cfg.hidden_size, cfg.pos_embed_max_size) == (6, 1536, 192)
    compatible_sd3_controlnet(cfg, SD3_MEDIUM)
    with torch.device("meta"):
        ours = SD3ControlNet(cfg)
    ours.load_state_dict(ours_sd, strict=True, assign=True)
    assert sum(t.numel() for t in sd.values()) == sum(t.numel() for t in ours.state_dict().values())
