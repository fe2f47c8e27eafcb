"""Depth Anything V2 weight files: the authors' ``depth_anything_v2_vit{s,b,l}.pth`` (also sold as
.safetensors with the same keys, e.g. Forge's and kijai's copies) and transformers'
``DepthAnythingForDepthEstimation`` layout (``backbone.*`` / ``neck.*`` / ``head.*``, the "-hf" repos),
in its hub names (``attention.attention.query``) or transformers 5's (``attention.q_proj``).

The size is read from the shapes (ViT width -> S/B/L), never from the file name. Pickled .pth files
go through the restricted unpickler (checkpoints/files.read_state_dict), never plain torch.load.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError, InvalidArgument
from .depth_anything import VARIANTS, DepthAnythingV2, DepthConfig
from .preprocessor_files import cached, check_keys, match_file, preprocessor_dirs, shapes, torch_device

# the names ComfyUI's controlnet_aux offers (its DepthAnythingV2Preprocessor), and where they are published
CKPT_NAMES = ("depth_anything_v2_vitg.pth", "depth_anything_v2_vitl.pth", "depth_anything_v2_vitb.pth",
              "depth_anything_v2_vits.pth")
DEFAULT_CKPT = "depth_anything_v2_vitl.pth"
_REPOS = {"vits": "Small", "vitb": "Base", "vitl": "Large", "vitg": "Giant"}

# transformers' names -> the authors' (regex over the whole key; \1 etc. are layer numbers)
_HF_RULES = [(re.compile(a), b) for a, b in (
    (r"backbone\.embeddings\.cls_token", "pretrained.cls_token"),
    (r"backbone\.embeddings\.mask_token", "pretrained.mask_token"),
    (r"backbone\.embeddings\.position_embeddings", "pretrained.pos_embed"),
    (r"backbone\.embeddings\.patch_embeddings\.projection\.", "pretrained.patch_embed.proj."),
    (r"backbone\.encoder\.layer\.(\d+)\.(norm1|norm2|mlp\.fc1|mlp\.fc2)\.", r"pretrained.blocks.\1.\2."),
    (r"backbone\.encoder\.layer\.(\d+)\.layer_scale(\d)\.lambda1", r"pretrained.blocks.\1.ls\2.gamma"),
    (r"backbone\.encoder\.layer\.(\d+)\.attention\.(?:output\.dense|o_proj)\.", r"pretrained.blocks.\1.attn.proj."),
    (r"backbone\.layernorm\.", "pretrained.norm."),
    (r"neck\.reassemble_stage\.layers\.(\d)\.projection\.", r"depth_head.projects.\1."),
    (r"neck\.reassemble_stage\.layers\.(\d)\.resize\.", r"depth_head.resize_layers.\1."),
    (r"neck\.convs\.(\d)\.", lambda m: f"depth_head.scratch.layer{int(m[1]) + 1}_rn."),
    (r"neck\.fusion_stage\.layers\.(\d)\.projection\.", lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.out_conv."),
    (r"neck\.fusion_stage\.layers\.(\d)\.residual_layer(\d)\.convolution(\d)\.",
     lambda m: f"depth_head.scratch.refinenet{4 - int(m[1])}.resConfUnit{m[2]}.conv{m[3]}."),
    (r"head\.conv1\.", "depth_head.scratch.output_conv1."),
    (r"head\.conv2\.", "depth_head.scratch.output_conv2.0."),
    (r"head\.conv3\.", "depth_head.scratch.output_conv2.2."),
)]
_HF_QKV = re.compile(r"backbone\.encoder\.layer\.(\d+)\.attention\.(?:attention\.(query|key|value)|(q|k|v)_proj)\.(weight|bias)")


def from_transformers(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' DepthAnythingForDepthEstimation keys -> the authors' (q, k, v joined into qkv)."""
    out, qkv = {}, {}
    for key, value in sd.items():
        m = _HF_QKV.fullmatch(key)
        if m:
            which = "qkv".index((m[2] or m[3])[0])
            qkv.setdefault((m[1], m[4]), {})[which] = value
            continue
        for pattern, repl in _HF_RULES:
            if pattern.match(key):
                out[pattern.sub(repl, key, count=1)] = value
                break
        else:
            raise CheckpointError("<state dict>", f"unexpected key {key!r} in a transformers Depth Anything file")
    for (layer, kind), parts in qkv.items():
        if len(parts) != 3:
            raise CheckpointError("<state dict>", f"layer {layer}'s attention {kind} lacks query, key or value")
        out[f"pretrained.blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts[0], parts[1], parts[2]])
    return out


def detect_variant(sd: dict[str, torch.Tensor]) -> str:
    """vits / vitb / vitl from the ViT width and depth of an authors'-layout state dict."""
    pos = sd.get("pretrained.pos_embed")
    if pos is None:
        raise CheckpointError("<state dict>", "is not a Depth Anything V2 model (no pretrained.pos_embed)")
    width = pos.shape[-1]
    blocks = len({k.split(".")[2] for k in sd if k.startswith("pretrained.blocks.")})
    for name, cfg in VARIANTS.items():
        if cfg.dim == width and cfg.depth == blocks:
            return name
    if width == 1536:
        raise CheckpointError("<state dict>", "is Depth Anything V2 Giant (ViT-g), which is not supported "
                                              "(its weights were never released); use vitl, vitb or vits")
    raise CheckpointError("<state dict>", f"is a {blocks}-block ViT of width {width}, not a Depth Anything V2 "
                                          "size we know (vits 384, vitb 768, vitl 1024)")


def to_authors_layout(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if any(k.startswith("backbone.") for k in sd):
        return from_transformers(sd)
    return {k.removeprefix("module."): v for k, v in sd.items()}


def build(sd: dict[str, torch.Tensor], path="<state dict>", device="cpu",
          dtype: torch.dtype = torch.float32) -> DepthAnythingV2:
    """The model for a state dict in either layout, every key and shape checked."""
    try:
        sd = to_authors_layout(sd)
        cfg: DepthConfig = VARIANTS[detect_variant(sd)]
    except CheckpointError as e:
        raise CheckpointError(path, e.problem) from None
    net = DepthAnythingV2(cfg)
    check_keys(path, sd, shapes(net), "does not fit Depth Anything V2")
    net.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, strict=True)
    return net.to(device).eval().requires_grad_(False)


def load_depth_anything(path, device: str | torch.device | None = None) -> DepthAnythingV2:
    """The model in `path` (cached: one per file and device). device None: CUDA if there is one."""
    from ..checkpoints.files import read_state_dict

    device = torch_device(device)
    return cached(("depth_anything", str(Path(path).resolve()), str(device)),
                  lambda: build(read_state_dict(path), path, device))


def find_weights(folders, name: str = DEFAULT_CKPT) -> Path:
    """match_file's file for `name`, or a clear error naming where to put it."""
    found = match_file(folders, name)
    if found is not None:
        return found
    files = folders.list("preprocessors") if folders is not None else []
    size = next((k for k in _REPOS if k in name), "vitl")
    others = [m.name for m in files if "depth_anything" in m.name.lower()]
    have = f" (installed: {', '.join(others[:4])})" if others else ""
    raise InvalidArgument(f"ckpt_name: {name} is not installed{have}: put it in {preprocessor_dirs()} (any "
                          "subfolder); it is published at "
                          f"huggingface.co/depth-anything/Depth-Anything-V2-{_REPOS[size]}")


def installed_weights(folders) -> Path:
    """The Depth Anything V2 file a preprocessor uses when none is named: ViT-L, else B, else S."""
    for name in CKPT_NAMES[1:]:
        try:
            return find_weights(folders, name)
        except InvalidArgument:
            continue
    return find_weights(folders, DEFAULT_CKPT)  # the error naming the folders
