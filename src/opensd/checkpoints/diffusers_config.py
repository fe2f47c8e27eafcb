"""diffusers / transformers config.json -> our typed configs, refusing every field whose value would
make the file's network compute something other than what ours computes.

A field is either honoured (it sets a config field, or the weights' shapes carry it), checked
against the one value our modules implement (the tables below; an absent field means its default,
which is that value), or irrelevant to inference (dropout, initialisers, sampling-time scheduler
options). A value outside that raises ValueError naming the field; callers add the file.
"""
from __future__ import annotations

import math

from ..models import config as C

# UNet2DConditionModel (and ControlNetModel, which shares these) fields with the one value our UNet
# computes. upcast_attention needs no entry: it changes half-precision rounding only (SD2.1 sets it
# against fp16 overflow), not the function the network computes.
_UNET_FIXED = {
    "act_fn": ("silu",), "norm_num_groups": (32,), "norm_eps": (1e-5,), "center_input_sample": (False,),
    "flip_sin_to_cos": (True,), "freq_shift": (0,), "time_embedding_type": ("positional",),
    "resnet_time_scale_shift": ("default",), "class_embed_type": (None,), "num_class_embeds": (None,),
    "addition_embed_type": (None, "text_time"), "addition_time_embed_dim": (None, 256),
    "encoder_hid_dim": (None,), "encoder_hid_dim_type": (None,), "time_cond_proj_dim": (None,),
    "conv_in_kernel": (3,), "conv_out_kernel": (3,), "dual_cross_attention": (False,),
    "only_cross_attention": (False,), "attention_type": ("default",),
    "mid_block_type": ("UNetMidBlock2DCrossAttn",), "reverse_transformer_layers_per_block": (None,),
    "mid_block_only_cross_attention": (None, False), "cross_attention_norm": (None,),
    "timestep_post_act": (None,), "time_embedding_act_fn": (None,), "time_embedding_dim": (None,),
    "resnet_skip_time_act": (False,), "resnet_out_scale_factor": (1,), "class_embeddings_concat": (False,),
    "downsample_padding": (1,), "mid_block_scale_factor": (1,),
}
_VAE_FIXED = {
    "act_fn": ("silu",), "norm_num_groups": (32,), "mid_block_add_attention": (True,),
}
# transformers' CLIPTextConfig. eos_token_id 2 (the original OpenAI configs) and 49407 both pool at
# the end-of-text token our tokenizer writes, which is what our argmax pooling picks.
_CLIP_FIXED = {
    "hidden_act": ("quick_gelu", "gelu"), "layer_norm_eps": (1e-5,), "eos_token_id": (None, 2, 49407),
    "model_type": (None, "clip_text_model"),
}
# The noise schedule every SD release was trained with; options that only shape sampling (spacing,
# offsets, Karras sigmas) are the sampler's business and not checked.
_SCHEDULER_FIXED = {
    "beta_schedule": ("scaled_linear",), "beta_start": (0.00085,), "beta_end": (0.012,),
    "num_train_timesteps": (1000,), "trained_betas": (None,),
    "rescale_betas_zero_snr": (False, True),  # True: the zero-terminal-SNR rescale (markers.META_ZSNR)
    "prediction_type": (None, "epsilon", "v_prediction"),
}


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return math.isclose(a, b, rel_tol=1e-6)
    return a == b


def require(j: dict, fixed: dict, what: str) -> None:
    for field, allowed in fixed.items():
        if field not in j:
            continue  # absent means the default, which is an allowed value
        value = j[field]
        values = value if isinstance(value, list) else [value]  # some fields may be given per block
        if not values or not all(any(_same(v, a) for a in allowed) for v in values):
            shown = " or ".join("none" if a is None else repr(a) for a in allowed)
            raise ValueError(f"{field} = {value!r} is not supported (only {shown}, as in {what}); refusing "
                             "rather than computing a different model")


def _uniform(j: dict, field: str, default):
    value = j.get(field, default)
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise ValueError(f"{field} = {value!r} differs per block, which is not supported")
        return value[0]
    return value


def unet_config(j: dict) -> C.UNetConfig:
    require(j, _UNET_FIXED, "our UNet")
    channels = list(j["block_out_channels"])
    mc = channels[0]
    layers = j.get("transformer_layers_per_block", 1)
    layers = [layers] * len(channels) if isinstance(layers, int) else list(layers)
    down = list(j["down_block_types"])
    if any(t not in ("CrossAttnDownBlock2D", "DownBlock2D") for t in down):
        raise ValueError(f"down_block_types = {down!r}: only CrossAttnDownBlock2D and DownBlock2D are supported")
    up = j.get("up_block_types")
    mirror = [t.replace("Down", "Up") for t in reversed(down)]
    if up is not None and list(up) != mirror:
        raise ValueError(f"up_block_types = {list(up)!r} does not mirror down_block_types (expected {mirror!r})")
    depth = tuple(layers[i] if t == "CrossAttnDownBlock2D" else 0 for i, t in enumerate(down))
    head_cfg = _head_config(j, channels)
    return C.UNetConfig(
        in_channels=j.get("in_channels", 4), out_channels=j.get("out_channels", 4), model_channels=mc,
        channel_mult=tuple(c // mc for c in channels), num_res_blocks=_uniform(j, "layers_per_block", 2),
        transformer_depth=depth, transformer_depth_middle=layers[-1],
        context_dim=_uniform(j, "cross_attention_dim", 768),
        use_linear_in_transformer=bool(j.get("use_linear_projection", False)),
        adm_in_channels=j.get("projection_class_embeddings_input_dim") or 0, **head_cfg)


def _head_config(j: dict, channels: list[int]) -> dict:
    # diffusers' "attention_head_dim" is really a head COUNT unless num_attention_heads is given
    # (a historical misnomer kept for SD1's configs).
    heads = j.get("num_attention_heads") or j.get("attention_head_dim", 8)
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(channels)
    if len(set(heads)) == 1:
        return dict(num_heads=heads[0], num_head_channels=-1)
    widths = {c // h for c, h in zip(channels, heads)}
    if len(widths) == 1:
        return dict(num_head_channels=widths.pop())
    raise ValueError(f"unsupported attention head layout {heads} for channels {channels}")


def vae_config(j: dict) -> C.VAEConfig:
    require(j, _VAE_FIXED, "our VAE")
    channels = list(j["block_out_channels"])
    for field, block in (("down_block_types", "DownEncoderBlock2D"), ("up_block_types", "UpDecoderBlock2D")):
        if any(t != block for t in j.get(field, [block])):
            raise ValueError(f"{field} = {j[field]!r}: only {block} is supported")
    quant = j.get("use_quant_conv", True)  # SD3's and Flux's 16-channel VAEs have none
    if j.get("use_post_quant_conv", True) != quant:
        raise ValueError("use_quant_conv and use_post_quant_conv differ: not supported")
    if j.get("decoder_block_out_channels") not in (None, channels):
        raise ValueError("decoder_block_out_channels differ from block_out_channels: not supported")
    return C.VAEConfig(
        in_channels=j.get("in_channels", 3), out_ch=j.get("out_channels", 3), ch=channels[0],
        ch_mult=tuple(c // channels[0] for c in channels), num_res_blocks=j.get("layers_per_block", 2),
        z_channels=j.get("latent_channels", 4), embed_dim=j.get("latent_channels", 4),
        # AutoencoderKLFlux2 has no scaling_factor: its latent is normalised by its statistics
        scaling_factor=float(j.get("scaling_factor", 1.0 if _flux2_batch_norm(j) else 0.18215)), shift_factor=float(j.get("shift_factor") or 0.0),
        use_quant_conv=bool(quant), **latent_stats(j), **_flux2_batch_norm(j))


def _flux2_batch_norm(j: dict) -> dict:
    """AutoencoderKLFlux2's latent statistics over 2x2 patches (FLUX.2); {} for other VAEs."""
    if j.get("_class_name") != "AutoencoderKLFlux2" and "batch_norm_eps" not in j:
        return {}
    if list(j.get("patch_size", (2, 2))) != [2, 2]:
        raise ValueError(f"patch_size = {j['patch_size']!r}: only (2, 2) is supported (as in FLUX.2)")
    return dict(latent_batch_norm=True, batch_norm_eps=float(j.get("batch_norm_eps", 1e-4)))


def latent_stats(j: dict) -> dict:
    """latents_mean / latents_std (Playground v2.5's VAE config, Qwen-Image's AutoencoderKLQwenImage
    config, whose channel count is `z_dim`): both or neither, one per channel."""
    mean, std = j.get("latents_mean"), j.get("latents_std")
    if mean is None and std is None:
        return {}
    channels = j.get("latent_channels", j.get("z_dim", 4))
    if not all(isinstance(v, list) and len(v) == channels for v in (mean, std)):
        raise ValueError(f"latents_mean / latents_std must be lists of {channels} numbers")
    return {"latents_mean": tuple(float(v) for v in mean), "latents_std": tuple(float(v) for v in std)}


def text_encoder_config(j: dict, naming: str) -> C.TextEncoderConfig:
    require(j, _CLIP_FIXED, "our CLIP text encoder")
    architectures = j.get("architectures") or ["CLIPTextModel"]
    if any(a not in ("CLIPTextModel", "CLIPTextModelWithProjection") for a in architectures):
        raise ValueError(f"architectures = {architectures!r}: only CLIP text encoders are supported")
    width = j["hidden_size"]
    return C.TextEncoderConfig(
        naming=naming, vocab_size=j.get("vocab_size", 49408), width=width,
        layers=j["num_hidden_layers"], heads=j["num_attention_heads"],
        max_length=j.get("max_position_embeddings", 77), act=j.get("hidden_act", "quick_gelu"),
        intermediate_size=0 if j.get("intermediate_size", 4 * width) == 4 * width else j["intermediate_size"],
        projection_dim=j.get("projection_dim", 0) if "CLIPTextModelWithProjection" in architectures else 0)


# diffusers' EDM schedulers (Playground v2.5): continuous sigmas; their "epsilon" is EDM's F output.
_EDM_SCHEDULERS = ("EDMDPMSolverMultistepScheduler", "EDMEulerScheduler")
_EDM_FIXED = {"prediction_type": (None, "epsilon", "v_prediction"), "sigma_schedule": (None, "karras", "exponential")}


def check_scheduler(j: dict) -> C.ContinuousEDM | None:
    """Checks a scheduler config we can sample like; returns the EDM bounds for an EDM scheduler."""
    name = str(j.get("_class_name", ""))
    if name in _EDM_SCHEDULERS:
        require(j, _EDM_FIXED, "EDM's continuous noise schedule")
        return C.ContinuousEDM(sigma_min=float(j.get("sigma_min", 0.002)), sigma_max=float(j.get("sigma_max", 80.0)),
                               sigma_data=float(j.get("sigma_data", 0.5)))
    require(j, _SCHEDULER_FIXED, "SD's discrete noise schedule")
    if name.startswith(("EDM", "FlowMatch")):
        raise ValueError(f"_class_name = {name!r}: an {name[:3] if name.startswith('EDM') else 'flow-matching'} "
                         "schedule, not SD's discrete one; not supported")
    return None
