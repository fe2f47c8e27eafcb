"""Z-Image's keys: the released single file's (ComfyUI's diffusion_models/, our module's) against
diffusers' ZImageTransformer2DModel (separate q, k, v; `to_out.0`, `norm_q`/`norm_k`; the patch
embedder and final layer under `all_x_embedder.2-1.` / `all_final_layer.2-1.`)."""
from __future__ import annotations

from torch import Tensor

from ..models.config_dit import ZImageConfig
from .keymap_dit import Row, from_diffusers, linear, to_diffusers

# a key some released single files carry that no network reads (diffusers' converter drops it too)
UNUSED_KEYS = ("norm_final.weight",)


def _patch(cfg: ZImageConfig) -> str:
    return f"{cfg.patch_size}-1"  # diffusers' "{patch size}-{frame patch size}"


def block_rows(p: str, cfg: ZImageConfig, modulated: bool) -> list[Row]:
    a = p + "attention."
    rows = [Row(a + "qkv.weight", tuple(f"{a}to_{n}.weight" for n in "qkv"), (cfg.dim,) * 3),
            Row(a + "out.weight", (a + "to_out.0.weight",)),
            Row(a + "q_norm.weight", (a + "norm_q.weight",)), Row(a + "k_norm.weight", (a + "norm_k.weight",))]
    rows += [Row(f"{p}feed_forward.w{i}.weight", (f"{p}feed_forward.w{i}.weight",)) for i in (1, 2, 3)]
    rows += [Row(f"{p}{n}.weight", (f"{p}{n}.weight",))
             for n in ("attention_norm1", "attention_norm2", "ffn_norm1", "ffn_norm2")]
    return rows + (linear(p + "adaLN_modulation.0", p + "adaLN_modulation.0") if modulated else [])


def z_image_rows(cfg: ZImageConfig) -> list[Row]:
    patch = _patch(cfg)
    rows = linear("x_embedder", f"all_x_embedder.{patch}")
    rows += linear("final_layer.linear", f"all_final_layer.{patch}.linear")
    rows += linear("final_layer.adaLN_modulation.1", f"all_final_layer.{patch}.adaLN_modulation.1")
    rows += linear("t_embedder.mlp.0", "t_embedder.mlp.0") + linear("t_embedder.mlp.2", "t_embedder.mlp.2")
    rows += [Row("cap_embedder.0.weight", ("cap_embedder.0.weight",))] + linear("cap_embedder.1", "cap_embedder.1")
    rows += [Row(k, (k,)) for k in ("x_pad_token", "cap_pad_token")]
    for name, count, modulated in (("noise_refiner", cfg.n_refiner_layers, True),
                                   ("context_refiner", cfg.n_refiner_layers, False), ("layers", cfg.n_layers, True)):
        for i in range(count):
            rows += block_rows(f"{name}.{i}.", cfg, modulated)
    return rows


def z_image_from_diffusers(sd: dict[str, Tensor], cfg: ZImageConfig, lazy: bool = False) -> dict[str, Tensor]:
    return from_diffusers(sd, z_image_rows(cfg), "Z-Image", lazy)


def z_image_to_diffusers(sd: dict[str, Tensor], cfg: ZImageConfig) -> dict[str, Tensor]:
    return to_diffusers(sd, z_image_rows(cfg), "Z-Image")
