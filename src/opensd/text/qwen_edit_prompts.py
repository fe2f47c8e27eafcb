"""Prompts with a condition image -> Qwen-Image-Edit's text features, as diffusers'
QwenImageEditPipeline.encode_prompt makes them (with the multimodal positions Qwen2.5-VL was
trained with; see below); with several (`pictures`), as QwenImageEditPlusPipeline's (Edit-2509/2511):
the user turn starts with "Picture 1: " and the image, "Picture 2: " and the next, ..., then the
prompt; the same template otherwise, the same 64 tokens dropped.

* each prompt goes into EDIT_TEMPLATE, whose user turn starts with the image:
  <|vision_start|><|image_pad|><|vision_end|>, the one <|image_pad|> repeated once per merged
  token of that prompt's image (text/qwen_vl_image: the processor's patches and grid);
* the texts are tokenized and padded to the longest (no length cut);
* the language model's input embeddings have the vision tower's features (models.qwen25vl_vision)
  in place of the pads, in order; the rotary positions are the multimodal ones
  (models.qwen25vl_mrope: the image's tokens by row and column);
* the last hidden state (after the final norm), each prompt's real tokens minus the first EDIT_DROP
  (64: the system turn and the user turn's header up to the image), zero-padded to the longest.

transformers >= 5 builds the multimodal positions only when given `mm_token_type_ids`, which
diffusers (0.42) does not pass, so there every token gets plain 1-D positions; older transformers
built them from the image-pad ids, as here (and as the model was trained).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from PIL import Image

from ..errors import InvalidArgument
from ..models.qwen25vl_mrope import MROPE_SECTION, mrope_cos_sin, mrope_positions
from .qwen_image_prompts import trim_features
from .qwen_tokenizer import QwenTokenizer
from .qwen_vl_image import merged_tokens, vl_patches

VISION_START, IMAGE_PAD, VISION_END = "<|vision_start|>", "<|image_pad|>", "<|vision_end|>"
# the Edit pipelines' template; the user turn ({}) holds the image(s) and the prompt
SYSTEM_TEMPLATE = ("<|im_start|>system\nDescribe the key features of the input image (color, shape, size, texture, "
                   "objects, background), then explain how the user's text instruction should alter or modify the "
                   "image. Generate a new image that meets the user's requirements while maintaining consistency with "
                   "the original input where appropriate.<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
                   "<|im_start|>assistant\n")
EDIT_TEMPLATE = SYSTEM_TEMPLATE.format(VISION_START + IMAGE_PAD + VISION_END + "{}")
PICTURE = "Picture {}: "  # Edit Plus: each image's label before it
EDIT_DROP = 64  # QwenImageEditPipeline.prompt_template_encode_start_idx
UNLIMITED = 1 << 30


def special_id(tokenizer: QwenTokenizer, token: str) -> int:
    ids = tokenizer.encode(token)
    if len(ids) != 1:
        raise InvalidArgument(f"the tokenizer has no {token} token: Qwen-Image-Edit needs Qwen2.5-VL's tokenizer "
                              "(a Qwen-Image or Qwen2.5-VL tokenizer/ folder)")
    return ids[0]


def comfy_drop(tokenizer: QwenTokenizer, ids: list[int]) -> int:
    """ComfyUI's cut of the template (its QwenImageTEModel): up to the second <|im_start|>, and past
    the "user" and newline that follow it."""
    start = special_id(tokenizer, "<|im_start|>")
    seen = [i for i, t in enumerate(ids) if t == start][:2]
    if not seen:
        return 0
    end = seen[-1]
    user, newline = tokenizer.encode("user"), tokenizer.encode("\n")
    if len(ids) > end + 3 and ids[end + 1:end + 2] == user and ids[end + 2:end + 3] == newline:
        end += 3
    return end


def image_text(grid, picture: int | None = None) -> str:
    """An image's run in the prompt: its label (Edit Plus), the vision start, one pad per merged token, the end."""
    label = "" if picture is None else PICTURE.format(picture)
    return label + VISION_START + IMAGE_PAD * merged_tokens(grid) + VISION_END


def _prepared(image):
    return image if isinstance(image, tuple) else vl_patches(image)


@torch.no_grad()
def encode_qwen_edit_prompts(encoder, vision, tokenizer: QwenTokenizer, prompts: list[str] | str,
                             images: Sequence | Image.Image, padding_side: str = "right",
                             sections: Sequence[int] = MROPE_SECTION, device: torch.device | None = None,
                             drop: int | str = EDIT_DROP,
                             pictures: Sequence[int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (n, L, hidden_size) in the encoder's dtype, mask (n, L) long).

    `encoder`: models.qwen3.Qwen3TextEncoder built as Qwen2.5-VL's language model; `vision`:
    models.qwen25vl_vision.QwenVisionTower; `images`: one per prompt, or one for all: PIL images
    (already fitted: pipeline/qwen_edit_image), or (patches, grid) pairs already prepared
    (text/qwen_vl_image); `sections`: the multimodal rotary sections; `drop`: the template tokens
    dropped, or "comfy" for ComfyUI's rule (comfy_drop); `pictures`: Edit Plus's labels, one per
    image of `images`, which then all go with every prompt (none: the prompts in the template alone)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise InvalidArgument("no prompts to encode")
    if pictures is None:
        images = [images] * len(prompts) if isinstance(images, (Image.Image, tuple)) else list(images)
        if len(images) != len(prompts):
            raise InvalidArgument(f"{len(images)} condition images for {len(prompts)} prompts")
    elif len(pictures) != len(images):
        raise InvalidArgument(f"{len(pictures)} picture labels for {len(images)} condition images")
    if any(t in p for p in prompts for t in (VISION_START, IMAGE_PAD, VISION_END)):
        raise InvalidArgument("a prompt may not contain the vision tokens (<|vision_start|>, <|image_pad|>, ...)")
    pad_id = special_id(tokenizer, IMAGE_PAD)
    for token in (VISION_START, VISION_END):
        special_id(tokenizer, token)
    if pictures is None:
        prepared = [_prepared(image) for image in images]
        texts = [SYSTEM_TEMPLATE.format(image_text(g) + p) for p, (_, g) in zip(prompts, prepared)]
    else:
        shared = [_prepared(image) for image in images]
        head = "".join(image_text(g, n) for n, (_, g) in zip(pictures, shared))
        texts = [SYSTEM_TEMPLATE.format(head + p) for p in prompts]
        prepared = shared * len(prompts)
    patches, grids = [p for p, _ in prepared], [g for _, g in prepared]
    ids, mask = tokenizer.batch(texts, UNLIMITED, padding_side)
    device = device if device is not None else next(encoder.parameters()).device
    ids = torch.tensor(ids, dtype=torch.long)
    mask = torch.tensor(mask, dtype=torch.bool)
    merge = vision.cfg.spatial_merge_size if vision is not None else 2
    positions = mrope_positions(ids, mask, pad_id, grids, merge).to(device)
    ids, mask = ids.to(device), mask.to(device)
    embeds = encoder.model.embed_tokens(ids)
    if patches:
        features = vision(torch.cat(patches).to(device), grids)
        embeds = embeds.masked_scatter((ids == pad_id)[..., None], features.to(embeds.dtype))
    cfg = encoder.cfg
    rope = mrope_cos_sin(positions, cfg.head_dim, cfg.rope_theta, sections, embeds.dtype)
    hidden = encoder(ids, mask, layer=-1, inputs_embeds=embeds, rope=rope)
    if drop == "comfy":
        drop = comfy_drop(tokenizer, ids[0][mask[0]].tolist())
    return trim_features(hidden, mask, drop)
