"""VAE key map between the diffusers layout and the original LDM layout (our attribute names).

The table is generated from a VAEConfig, so it lists exactly the keys that config has; nothing is
hand-listed per key. Differences between the two layouts:
  * names: down.{i}.block.{j} <-> down_blocks.{i}.resnets.{j}, nin_shortcut <-> conv_shortcut,
    mid.block_1/2 <-> mid_block.resnets.0/1, mid.attn_1.{norm,q,k,v,proj_out} <->
    mid_block.attentions.0.{group_norm,to_q,to_k,to_v,to_out.0}, norm_out <-> conv_norm_out;
  * diffusers numbers decoder up_blocks from the lowest resolution, LDM by resolution level;
  * diffusers' attention projections are Linear [C, C], LDM's are 1x1 Conv2d [C, C, 1, 1].
Assumes ch_mult[0] == 1 (true for every SD VAE): diffusers ties conv_in's width to the first
level's, LDM to `ch`.

FLUX.2's VAE adds `bn.running_mean` / `bn.running_var` (same names in both layouts; BatchNorm2d's
`bn.num_batches_tracked` counter is dropped on reading). Black Forest Labs' single file keeps the
quant convs inside the encoder and decoder (`encoder.quant_conv.*`, `decoder.post_quant_conv.*`);
`fix_ldm_vae_keys` moves them to the top level, where ComfyUI-saved files and ours have them.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from opensd.models.config import VAEConfig

_RESNET = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
_SHORTCUT = ("nin_shortcut", "conv_shortcut")
_ATTN = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"),
         ("proj_out", "to_out.0"))
_ATTN_LINEAR = frozenset({"q", "k", "v", "proj_out"})
# Diffusers files written before its attention refactor (~0.14) use these names; diffusers
# itself still renames them on load, so we accept them as aliases when reading.
_LEGACY_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def _module_pairs(cfg: VAEConfig) -> list[tuple[str, str]]:
    """(our module path, diffusers module path) for every parameterised module."""
    pairs = [("quant_conv", "quant_conv"), ("post_quant_conv", "post_quant_conv")] if cfg.use_quant_conv else []

    def resnet(ours: str, theirs: str, c_in: int, c_out: int) -> None:
        names = _RESNET + ((_SHORTCUT,) if c_in != c_out else ())
        pairs.extend((f"{ours}.{a}", f"{theirs}.{b}") for a, b in names)

    def mid(side: str, c: int) -> None:
        for n in (1, 2):
            resnet(f"{side}.mid.block_{n}", f"{side}.mid_block.resnets.{n - 1}", c, c)
        pairs.extend((f"{side}.mid.attn_1.{a}", f"{side}.mid_block.attentions.0.{b}")
                     for a, b in _ATTN)

    ch, mults, n_levels = cfg.ch, tuple(cfg.ch_mult), len(cfg.ch_mult)
    top = ch * mults[-1]

    for side in ("encoder", "decoder"):
        pairs += [(f"{side}.conv_in", f"{side}.conv_in"), (f"{side}.conv_out", f"{side}.conv_out"),
                  (f"{side}.norm_out", f"{side}.conv_norm_out")]
        mid(side, top)

    for i, mult in enumerate(mults):
        c_in, c_out = ch * ((1,) + mults)[i], ch * mult
        for j in range(cfg.num_res_blocks):
            resnet(f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}",
                   c_in if j == 0 else c_out, c_out)
        if i != n_levels - 1:
            pairs.append((f"encoder.down.{i}.downsample.conv",
                          f"encoder.down_blocks.{i}.downsamplers.0.conv"))

    for i, mult in enumerate(mults):
        d = n_levels - 1 - i  # diffusers runs up_blocks from the lowest resolution
        c_in, c_out = ch * (mults[i + 1] if i + 1 < n_levels else mults[-1]), ch * mult
        for j in range(cfg.num_res_blocks + 1):
            resnet(f"decoder.up.{i}.block.{j}", f"decoder.up_blocks.{d}.resnets.{j}",
                   c_in if j == 0 else c_out, c_out)
        if i != 0:
            pairs.append((f"decoder.up.{i}.upsample.conv",
                          f"decoder.up_blocks.{d}.upsamplers.0.conv"))
    return pairs


def _key_pairs(cfg: VAEConfig) -> list[tuple[str, str, bool]]:
    """(our key, diffusers key, is an attention projection weight) for every tensor."""
    out = []
    for ours, theirs in _module_pairs(cfg):
        is_attn_proj = ".mid.attn_1." in ours and ours.rsplit(".", 1)[1] in _ATTN_LINEAR
        out.append((f"{ours}.weight", f"{theirs}.weight", is_attn_proj))
        out.append((f"{ours}.bias", f"{theirs}.bias", False))
    out += [(k, k, False) for k in _BN_STATS] if cfg.latent_batch_norm else []
    return out


_BN_STATS = ("bn.running_mean", "bn.running_var")
_BN_COUNTER = "bn.num_batches_tracked"  # BatchNorm2d's training counter: not used, not kept
_BFL_QUANT = {"encoder.quant_conv.": "quant_conv.", "decoder.post_quant_conv.": "post_quant_conv."}


def _raise_unknown(unknown: list[str], source: str) -> None:
    if unknown:
        shown = ", ".join(sorted(unknown)[:20])
        more = f" (+{len(unknown) - 20} more)" if len(unknown) > 20 else ""
        raise KeyError(f"unknown {source} VAE keys: {shown}{more}")


def vae_from_diffusers(sd: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Diffusers AutoencoderKL state dict -> our (LDM-layout) keys.

    Raises KeyError naming any key the config does not account for. Missing keys are left to
    the strict load_state_dict that follows.
    """
    table: dict[str, tuple[str, bool]] = {}
    for ours, theirs, attn in _key_pairs(cfg):
        table[theirs] = (ours, attn)
        for new, old in _LEGACY_ATTN.items():
            if f".attentions.0.{new}." in theirs:
                table[theirs.replace(new, old)] = (ours, attn)
    out, unknown = {}, []
    for k, v in sd.items():
        if k not in table:
            if k != _BN_COUNTER or not cfg.latent_batch_norm:
                unknown.append(k)
            continue
        ours, attn = table[k]
        out[ours] = v[:, :, None, None] if attn and v.ndim == 2 else v  # views, no copies
    _raise_unknown(unknown, "diffusers")
    return out


def vae_to_diffusers(sd: dict[str, Tensor], cfg: VAEConfig) -> dict[str, Tensor]:
    """Our (LDM-layout) VAE state dict -> diffusers keys, attention projections as Linear."""
    table = {ours: (theirs, attn) for ours, theirs, attn in _key_pairs(cfg)}
    out, unknown = {}, []
    for k, v in sd.items():
        if k not in table:
            unknown.append(k)
            continue
        theirs, attn = table[k]
        out[theirs] = v[:, :, 0, 0] if attn and v.ndim == 4 else v
    _raise_unknown(unknown, "LDM")
    if cfg.latent_batch_norm:  # diffusers' BatchNorm2d expects its counter
        out[_BN_COUNTER] = torch.zeros((), dtype=torch.long)
    return out


_LDM_ATTN_WEIGHT = re.compile(r"(^|\.)(encoder|decoder)\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def fix_ldm_vae_shapes(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """Give 2-D (or Conv1d 3-D) mid-attention weights their 1x1 Conv2d shape [C, C, 1, 1].

    Some original-layout single files were re-saved by tools that store these as Linear.
    Works with or without a `first_stage_model.` prefix; everything else passes untouched.
    Returns a new dict; the input dict is not modified.
    """
    out = dict(sd)
    for k, v in sd.items():
        if v.ndim in (2, 3) and _LDM_ATTN_WEIGHT.search(k):
            out[k] = v.reshape(v.shape[0], v.shape[1], 1, 1)
    return out


def fix_ldm_vae_keys(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    """A VAE state dict (no `first_stage_model.` prefix) with FLUX.2's single-file names made ours:
    the quant convs Black Forest Labs' file keeps inside the encoder/decoder moved to the top level,
    BatchNorm2d's `bn.num_batches_tracked` dropped. Other keys pass untouched; returns a new dict."""
    out = {}
    for k, v in sd.items():
        if k == _BN_COUNTER:
            continue
        old = next((o for o in _BFL_QUANT if k.startswith(o)), None)
        out[_BFL_QUANT[old] + k[len(old):] if old else k] = v
    return out
