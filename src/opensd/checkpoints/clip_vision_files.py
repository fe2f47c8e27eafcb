"""Read the image-encoder files of models/clip_vision and the style models of models/style_models.

A CLIP vision file is transformers' layout (``vision_model.*``, CLIP's ``visual_projection.weight``),
the files ComfyUI's CLIPVisionLoader takes, or OpenCLIP's (``visual.*``, a whole OpenCLIP model's
image tower), which is renamed onto transformers' as ComfyUI renames it. Which encoder it holds is read from the keys and shapes,
as ComfyUI does: a class embedding means CLIP, none SigLIP; the width and layer count name the
released model (ViT-L/14 24 layers of 1024, ViT-H/14 32 of 1280, ViT-bigG/14 48 of 1664, SigLIP
so400m 27 of 1152); the position table gives the image size (577 positions: ViT-L/14 at 336). The
head count, which no shape shows, comes from that table; an encoder of another size must say it in
its safetensors metadata (``num_attention_heads``, and ``hidden_act``), as our test files do.

A style model is Flux.1 Redux (``redux_up``/``redux_down``); other files are refused in one line
naming what they look like.
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.clip_vision import VisionConfig, VisionModel
from .files import read_metadata, read_state_dict
from .keymap_clip import _OPENCLIP_LAYER

VISION = "vision_model."
PROJECTION = "visual_projection.weight"
# (kind, width, layers) -> (heads, activation, name): the released encoders ComfyUI has configs for
KNOWN = {
    ("clip", 1024, 24): (16, "quick_gelu", "CLIP ViT-L/14"),
    ("clip", 1280, 32): (16, "gelu", "CLIP ViT-H/14"),
    ("clip", 1664, 48): (16, "gelu", "CLIP ViT-bigG/14"),
    ("siglip", 1152, 27): (16, "gelu_pytorch_tanh", "SigLIP so400m"),
}
NAMES = "CLIP ViT-L/14, ViT-H/14, ViT-bigG/14 or SigLIP so400m"
# (patch, grid side) -> image size, where the image is not a whole number of patches: SigLIP so400m
# reads 384 x 384 images with 14-pixel patches (27 x 27; the convolution drops the last 6 pixels)
IMAGE_SIZES = {(14, 27): 384}
MAX_LAYERS = 100  # bigG has 48; a file naming more layers is not an image encoder we could build


def what_it_is(keys) -> str:
    """Words for a weight file that is not what a loader wanted, from its key names."""
    keys = list(keys)
    has = lambda *prefixes: any(k.startswith(prefixes) for k in keys)  # noqa: E731
    if "redux_down.weight" in keys:
        return "a Flux Redux style model (it belongs in models/style_models, for StyleModelLoader)"
    if "style_embedding" in keys:
        return "a T2I-Adapter style model (SD1), which opensd does not run"
    if has(VISION):
        return "a CLIP vision model (it belongs in models/clip_vision, for CLIPVisionLoader)"
    if has("text_model.", "transformer.resblocks."):
        return "a CLIP text encoder"
    if has("encoder.block.", "shared."):
        return "a T5 text encoder"
    if has("double_blocks.", "model.diffusion_model.", "down_blocks.", "transformer_blocks."):
        return "a diffusion model or checkpoint"
    shown = ", ".join(repr(k) for k in sorted(keys)[:3])
    return f"an unknown file (keys like {shown})" if keys else "an empty file"


OPENCLIP = "visual."
# OpenCLIP image-tower names (below visual.) -> transformers', for the tensors outside the layers
_OPENCLIP_TOP = {"class_embedding": "embeddings.class_embedding", "conv1.weight": "embeddings.patch_embedding.weight",
                 "positional_embedding": "embeddings.position_embedding.weight",
                 "ln_pre.weight": "pre_layrnorm.weight", "ln_pre.bias": "pre_layrnorm.bias",
                 "ln_post.weight": "post_layernorm.weight", "ln_post.bias": "post_layernorm.bias"}
_OPENCLIP_PARTS = {theirs: ours for ours, theirs in _OPENCLIP_LAYER.items()}


def from_openclip(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An OpenCLIP model's image tower (``visual.*``) in transformers' names: the fused attention
    projection split into q, k, v (stacked in that order, as nn.MultiheadAttention does), ``proj``
    (applied as x @ proj) transposed into visual_projection's Linear weight. Other keys (the text
    tower, a ResNet tower's) are dropped, for detection to judge what is left."""
    out = {}
    for key, value in sd.items():
        if not key.startswith(OPENCLIP):
            continue
        name = key[len(OPENCLIP):]
        if name in _OPENCLIP_TOP:
            out[VISION + _OPENCLIP_TOP[name]] = value
        elif name == "proj":
            out[PROJECTION] = value.t().contiguous()
        elif name.startswith("transformer.resblocks."):
            index, part = name[len("transformer.resblocks."):].split(".", 1)
            layer = f"{VISION}encoder.layers.{index}."
            if part in _OPENCLIP_PARTS:
                out[layer + _OPENCLIP_PARTS[part]] = value
            elif part in ("attn.in_proj_weight", "attn.in_proj_bias") and value.shape[0] % 3 == 0:
                kind = part.rsplit("_", 1)[1]
                for qkv, third in zip("qkv", value.chunk(3)):
                    out[f"{layer}self_attn.{qkv}_proj.{kind}"] = third
    return out


def _count_layers(shapes: dict) -> int:
    prefix = VISION + "encoder.layers."
    return len({k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)})


def detect_vision(shapes: dict[str, tuple[int, ...]], metadata: dict[str, str], path="<state dict>") -> VisionConfig:
    """The encoder's config from its key shapes (transformers layout) and, for a size that is not a
    released one, its metadata; CheckpointError in one line otherwise."""
    def need(key: str) -> tuple[int, ...]:
        if key not in shapes:
            raise CheckpointError(path, f"a CLIP vision model needs {key!r}, which this file lacks")
        return shapes[key]

    if not any(k.startswith(VISION) for k in shapes):
        raise CheckpointError(path, f"is not a CLIP vision model: it looks like {what_it_is(shapes)}")
    kind = "clip" if VISION + "embeddings.class_embedding" in shapes else "siglip"
    hidden = need(VISION + "post_layernorm.weight")[0]
    layers = _count_layers(shapes)
    patch = need(VISION + "embeddings.patch_embedding.weight")
    positions = need(VISION + "embeddings.position_embedding.weight")[0] - (kind == "clip")
    side = math.isqrt(max(positions, 0))
    if not 2 <= layers <= MAX_LAYERS:
        raise CheckpointError(path, f"names {layers} encoder layers; the image encoders opensd builds have 2 to "
                                    f"{MAX_LAYERS}")
    if len(patch) != 4 or side * side != positions or positions < 1:
        raise CheckpointError(path, f"its {kind} vision encoder has {positions} patch positions and a {len(patch)}-D "
                                    "patch embedding, not the square grid of patches of a ViT")
    known = KNOWN.get((kind, hidden, layers))
    if known is None:
        try:
            heads, act = int(metadata["num_attention_heads"]), metadata.get("hidden_act", "quick_gelu")
        except (KeyError, ValueError):
            raise CheckpointError(path, f"is a {kind} vision encoder of {layers} layers of width {hidden}, not one of "
                                        f"the released sizes opensd knows ({NAMES})") from None
        known = (heads, act, f"{kind} {hidden}x{layers}")
    heads, act, label = known
    projection = shapes.get(PROJECTION)
    if kind == "clip" and projection is None:
        raise CheckpointError(path, f"a CLIP vision model needs {PROJECTION!r}, which this file lacks")
    if heads < 1 or hidden % heads or act not in ("quick_gelu", "gelu", "gelu_pytorch_tanh"):
        raise CheckpointError(path, f"its metadata asks for {heads} heads / {act!r}, which do not fit width {hidden}")
    return VisionConfig(kind=kind, hidden_size=hidden, layers=layers, heads=heads,
                        intermediate_size=need(VISION + "encoder.layers.0.mlp.fc1.weight")[0],
                        image_size=IMAGE_SIZES.get((patch[-1], side), side * patch[-1]), patch_size=patch[-1], hidden_act=act,
                        projection_dim=projection[0] if kind == "clip" else None,
                        layer_norm_eps=1e-5 if kind == "clip" else 1e-6, label=label)


def _expected(cfg: VisionConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in VisionModel(cfg).state_dict().items()}


def load_clip_vision(path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> VisionModel:
    """A CLIP vision or SigLIP file as a ready (eval) :class:`VisionModel`. Keys it does not use
    (a whole CLIP's text_model, SigLIP's pooling head) are ignored, as ComfyUI ignores them."""
    path = Path(path)
    return vision_model(read_state_dict(path), read_metadata(path), path, device, dtype)


# Where a Stable unCLIP checkpoint keeps the image encoder its embeddings were trained on: OpenCLIP's
# ViT-H image tower (unclip-h, under embedder.model.visual.) or transformers' CLIP ViT-L (unclip-l)
CHECKPOINT_ENCODER = "embedder.model."


def checkpoint_image_encoder(path, device: torch.device | str = "cpu",
                             dtype: torch.dtype = torch.float32) -> VisionModel | None:
    """The image encoder inside a checkpoint (Stable unCLIP's ``embedder.model.*``), or None when it has none."""
    path = Path(path)
    sd = read_state_dict(path)
    inner = {k[len(CHECKPOINT_ENCODER):]: v for k, v in sd.items() if k.startswith(CHECKPOINT_ENCODER)}
    if not any(k.startswith((VISION, OPENCLIP)) for k in inner):
        return None
    return vision_model(inner, read_metadata(path), path, device, dtype)


def vision_model(sd: dict[str, torch.Tensor], metadata: dict[str, str], path,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> VisionModel:
    """The encoder of a state dict in transformers' or OpenCLIP's layout (load_clip_vision's rules)."""
    if OPENCLIP + "transformer.resblocks.0.attn.in_proj_weight" in sd:
        sd = from_openclip(sd)
    cfg = detect_vision({k: tuple(v.shape) for k, v in sd.items()}, metadata, path)
    wanted = _expected(cfg)
    for key, shape in wanted.items():
        if key not in sd:
            raise CheckpointError(path, f"its {cfg.label} encoder lacks {key!r}")
        if tuple(sd[key].shape) != shape:
            raise CheckpointError(path, f"{key!r} is {tuple(sd[key].shape)}, but a {cfg.label} encoder has {shape}")
    with torch.device("meta"):
        model = VisionModel(cfg)
    model.load_state_dict({k: sd[k].to(device=device, dtype=dtype) for k in wanted}, assign=True)
    return model.eval()


def read_style_model(path) -> tuple[dict[str, torch.Tensor], int, int]:
    """A Flux Redux file: its state dict, the vision width it reads and the text width it makes."""
    path = Path(path)
    sd = read_state_dict(path)
    if "redux_down.weight" not in sd or "redux_up.weight" not in sd:
        raise CheckpointError(path, f"is not a Flux Redux style model: it looks like {what_it_is(sd)}")
    up, down = tuple(sd["redux_up.weight"].shape), tuple(sd["redux_down.weight"].shape)
    biases = (tuple(sd.get("redux_up.bias", torch.empty(0)).shape), tuple(sd.get("redux_down.bias", torch.empty(0)).shape))
    if (len(up) != 2 or len(down) != 2 or up[0] != 3 * down[0] or down[1] != up[0]
            or biases != ((up[0],), (down[0],)) or set(sd) != {"redux_up.weight", "redux_up.bias",
                                                              "redux_down.weight", "redux_down.bias"}):
        raise CheckpointError(path, f"its Redux layers do not fit together (redux_up {up}, redux_down {down}); "
                                    "expected redux_up (3 x D, V) and redux_down (D, 3 x D) with biases and nothing else")
    return sd, up[1], down[0]
