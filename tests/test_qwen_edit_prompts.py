"""Qwen-Image-Edit's prompt encoding with the condition image (text/qwen_edit_prompts): equal to
diffusers' QwenImageEditPipeline.encode_prompt on a tiny random Qwen2.5-VL (vision tower included)
with a trained-like tokenizer carrying the vision tokens, images of several sizes, prompts of
different lengths padded either side. The multimodal positions are the trained ones: the oracle's
text encoder is handed the image-token types that diffusers 0.42 leaves out (without them
transformers 5 gives every token 1-D positions, which the last test shows differ)."""
from __future__ import annotations

import json
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from diffusers import QwenImageEditPipeline
from tokenizers import AddedToken
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2TokenizerFast
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor
from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

from opensd.checkpoints.keymap_qwen25vl import qwen25vl_state_dict
from opensd.checkpoints.keymap_qwen25vl_vision import qwen25vl_vision_state_dict
from opensd.errors import InvalidArgument
from opensd.models.qwen25vl_vision import QwenVisionConfig, QwenVisionTower
from opensd.models.qwen3 import Qwen3Config, Qwen3TextEncoder
from opensd.text.qwen_edit_prompts import EDIT_DROP, EDIT_TEMPLATE, encode_qwen_edit_prompts
from opensd.text.qwen_tokenizer import QwenTokenizer
from opensd.text.qwen_vl_image import MAX_PIXELS, MIN_PIXELS
from qwen_fixtures import build_tokenizer, write_folder
from reference import assert_close_scaled

VISION_SPECIALS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>"]
SECTIONS = (2, 3, 3)
VISION = QwenVisionConfig(depth=2, hidden_size=32, intermediate_size=40, num_heads=2, out_hidden_size=64,
                          window_size=112, fullatt_block_indexes=(1,))


def write_vl_tokenizer(folder):
    """A tiny Qwen tokenizer folder with Qwen2.5-VL's vision tokens as special tokens."""
    tok = build_tokenizer()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in VISION_SPECIALS])
    write_folder(folder, tok, vocab_files=False)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    for t in VISION_SPECIALS:
        cfg["added_tokens_decoder"][str(tok.token_to_id(t))] = {
            "content": t, "lstrip": False, "rstrip": False, "normalized": False, "single_word": False, "special": True}
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg))
    return folder


def hf_vl_model(vocab: int, image_id: int, start_id: int, width: int = 64, heads: int = 4, sections=SECTIONS,
                vision: dict | None = None, seed: int = 0) -> Qwen2_5_VLForConditionalGeneration:
    """transformers' Qwen2.5-VL, tiny and random: a `width`-wide language model of `heads` heads (two
    key/value heads when it has more), the vision tower `vision` (VISION's by default)."""
    text = dict(vocab_size=vocab, hidden_size=width, intermediate_size=96, num_hidden_layers=2, num_attention_heads=heads,
                num_key_value_heads=min(heads, 2), rms_norm_eps=1e-6,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": list(sections)})
    vision = {**dict(depth=VISION.depth, hidden_size=VISION.hidden_size, intermediate_size=VISION.intermediate_size,
                     num_heads=VISION.num_heads, window_size=VISION.window_size,
                     fullatt_block_indexes=list(VISION.fullatt_block_indexes)), **(vision or {}), "out_hidden_size": width}
    cfg = Qwen2_5_VLConfig(text_config=text, vision_config=vision, image_token_id=image_id,
                           vision_start_token_id=start_id, bos_token_id=None, eos_token_id=None,
                           attn_implementation="sdpa")
    torch.manual_seed(seed)
    ref = Qwen2_5_VLForConditionalGeneration(cfg)
    with torch.no_grad():
        for name, p in ref.named_parameters():
            if "norm" in name or "ln_q" in name:
                p.copy_(1 + 0.3 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn_like(p))
            elif "visual" in name:
                p.copy_(0.1 * torch.randn_like(p))
    return ref.eval()


class WithTokenTypes:
    """The text encoder handed the image-token types (what older transformers derived itself)."""

    def __init__(self, model, image_id):
        self.model, self.image_id, self.dtype = model, image_id, model.dtype

    def __call__(self, **kw):
        return self.model(**kw, mm_token_type_ids=(kw["input_ids"] == self.image_id).int())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = write_vl_tokenizer(tmp_path_factory.mktemp("vltok"))
    hf_tok = Qwen2TokenizerFast.from_pretrained(str(folder))
    image_id = hf_tok.convert_tokens_to_ids("<|image_pad|>")
    ref = hf_vl_model(len(hf_tok), image_id, hf_tok.convert_tokens_to_ids("<|vision_start|>"))
    kept, _ = qwen25vl_state_dict(ref.state_dict())
    cfg = Qwen3Config(vocab_size=len(hf_tok), hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, qkv_bias=True, qk_norm=False)
    encoder = Qwen3TextEncoder(cfg).eval()
    encoder.load_state_dict(kept, strict=True)
    vision = QwenVisionTower(VISION).eval()
    vision.load_state_dict(qwen25vl_vision_state_dict(ref.state_dict()), strict=True)
    return SimpleNamespace(folder=folder, ref=ref, image_id=image_id, encoder=encoder, vision=vision,
                           tokenizer=QwenTokenizer.from_folder(folder))


def _pipe(s, padding_side, types=True):
    tok = Qwen2TokenizerFast.from_pretrained(str(s.folder), padding_side=padding_side)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS),
                                    tokenizer=tok, video_processor=Qwen2VLVideoProcessor())
    encoder = WithTokenTypes(s.ref, s.image_id) if types else s.ref
    pipe = SimpleNamespace(processor=processor, text_encoder=encoder, prompt_template_encode=EDIT_TEMPLATE,
                           prompt_template_encode_start_idx=EDIT_DROP, _execution_device=torch.device("cpu"))
    pipe._extract_masked_hidden = partial(QwenImageEditPipeline._extract_masked_hidden, pipe)
    pipe._get_qwen_prompt_embeds = partial(QwenImageEditPipeline._get_qwen_prompt_embeds, pipe)
    return pipe


def _image(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_template_is_the_pipelines():
    src = QwenImageEditPipeline.__init__.__code__.co_consts
    assert EDIT_TEMPLATE in src and EDIT_DROP in src


@pytest.mark.parametrize("padding_side", ["right", "left"])
@torch.no_grad()
def test_equal_to_the_pipeline(setup, padding_side):
    s = setup
    pipe = _pipe(s, padding_side)
    images = [_image(120, 90, 1), _image(70, 200, 2)]
    prompts = ["make the horse blue", "一只可爱的猫坐在窗台上 — café ✓ " * 3]
    want, want_mask = QwenImageEditPipeline.encode_prompt(pipe, prompts, image=images)
    got, mask = encode_qwen_edit_prompts(s.encoder, s.vision, s.tokenizer, prompts, images, padding_side, SECTIONS)
    assert got.shape == want.shape
    assert_close_scaled(got, want, 1e-5)
    assert torch.equal(mask, want_mask)
    alone, alone_mask = QwenImageEditPipeline.encode_prompt(pipe, prompts[0], image=images[0])
    got1, mask1 = encode_qwen_edit_prompts(s.encoder, s.vision, s.tokenizer, prompts[0], images[0], padding_side,
                                           SECTIONS)
    assert alone_mask is None and mask1.all()
    assert_close_scaled(got1, alone, 1e-5)


@torch.no_grad()
def test_the_image_positions_matter(setup):
    """diffusers 0.42 on transformers 5 as is (1-D positions) differs from the trained positions."""
    s = setup
    image = _image(150, 150, 4)
    plain, _ = QwenImageEditPipeline.encode_prompt(_pipe(s, "right", types=False), "x", image=image)
    got, _ = encode_qwen_edit_prompts(s.encoder, s.vision, s.tokenizer, "x", image, sections=SECTIONS)
    assert (got - plain).abs().max() > 1e-3


def test_arguments_are_checked(setup, tmp_path):
    s = setup
    image = _image(60, 60, 0)
    with pytest.raises(InvalidArgument, match="condition images"):
        encode_qwen_edit_prompts(s.encoder, s.vision, s.tokenizer, ["a", "b"], [image], sections=SECTIONS)
    with pytest.raises(InvalidArgument, match="vision tokens"):
        encode_qwen_edit_prompts(s.encoder, s.vision, s.tokenizer, "<|image_pad|>", image, sections=SECTIONS)
    with pytest.raises(InvalidArgument, match="no prompts"):
        encode_qwen_edit_prompts(s.encoder, s.vision, s.tokenizer, [], image, sections=SECTIONS)
    plain = QwenTokenizer.from_folder(write_folder(tmp_path, build_tokenizer(), vocab_files=False))
    with pytest.raises(InvalidArgument, match="no <|image_pad|> token"):
        encode_qwen_edit_prompts(s.encoder, s.vision, plain, "a", image, sections=SECTIONS)
