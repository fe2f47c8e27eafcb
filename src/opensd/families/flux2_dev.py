"""FLUX.2 [dev]'s text encoder as the FLUX.2 family reads it: Mistral Small 3.1's language model under
`text_encoders.mistral3_24b.` (ComfyUI's name), from its own file (text_encoders/
mistral_3_small_flux2_{fp8,bf16}.safetensors, transformers' Mistral3 names, a llama.cpp GGUF), the
tokenizer found beside the files, and the completeness check of a [dev] model. A mixin of
families.flux2.Flux2Family: what is not [dev]'s goes on to klein's (QwenDiTFamily)."""
from __future__ import annotations

import logging

from ..checkpoints import detect_dit as DD
from ..checkpoints.files import read_state_dict
from ..checkpoints.keymap_mistral import is_mistral, mistral_config, mistral_state_dict
from ..checkpoints.mistral_vocab import load_mistral_tokenizer
from ..errors import CheckpointError
from ..text.flux2_dev_prompts import LAYERS
from .qwen_dit import has_qwen3, has_vae, require_parts

log = logging.getLogger(__name__)

DEV_GUIDANCE = 4.0  # Flux2Pipeline's guidance_scale default: [dev]'s distilled guidance
MISTRAL_FILE = "Mistral Small 3.1 text encoder (text_encoders/mistral_3_small_flux2_fp8.safetensors or _bf16)"


def has_mistral(shapes) -> bool:
    return DD.MISTRAL + "model.embed_tokens.weight" in shapes


class MistralEncoder:
    def check_dev(self, cfg, shapes, path):
        """A [dev] model's parts are there and fit: the VAE, a Mistral (not a Qwen3) of the network's
        width, deep enough for the hidden states read (the VAE's kind is the family's to check)."""
        if has_qwen3(shapes):
            raise CheckpointError(path, "the text encoder is a Qwen3 (FLUX.2 [klein]'s); FLUX.2 [dev] takes the "
                                        + MISTRAL_FILE)
        require_parts(path, "FLUX.2 [dev]", (("VAE (--vae; flux2-vae.safetensors in vae/)", has_vae(shapes)),
                                             (MISTRAL_FILE + " (--text-encoder)", has_mistral(shapes))))
        width = shapes[DD.MISTRAL + "model.embed_tokens.weight"][1]
        if 3 * width != cfg.flux2.context_in_dim:
            raise CheckpointError(path, f"the Mistral text encoder is {width} wide; this FLUX.2 [dev] network takes "
                                        f"{cfg.flux2.context_in_dim // 3}-wide features (Mistral Small 3.1: 5120)")
        depth = cfg.mistral.num_hidden_layers
        if depth < max(LAYERS):
            raise CheckpointError(path, f"the Mistral text encoder has {depth} layers; FLUX.2 [dev] reads hidden state "
                                        f"{max(LAYERS)}")

    def encoder_config(self, name, shapes, path):
        if name == "mistral":
            return mistral_config(shapes, DD.MISTRAL, path)
        return super().encoder_config(name, shapes, path)

    def present_encoders(self, shapes):
        return ["mistral"] if has_mistral(shapes) else super().present_encoders(shapes)

    def encoder_tensors(self, files):
        """[klein]'s Qwen3 (QwenDiTFamily's), or [dev]'s Mistral Small 3.1 from its own file
        (ComfyUI's mistral_3_small_flux2_*.safetensors, transformers' Mistral3 names): the language
        model; the vision tower, projector and tokenizer tensor are left out."""
        if len(files) != 1:
            return super().encoder_tensors(files)
        sd = read_state_dict(files[0], keep_quantized=True)
        if not is_mistral({k: tuple(v.shape) for k, v in sd.items()}):
            return super().encoder_tensors(files)
        language, other = mistral_state_dict(sd)
        if other:
            log.info("%s: %d tensors besides the language model (vision tower, projector) not loaded: FLUX.2's "
                     "prompts are text", files[0], len(other))
        return {DD.MISTRAL + k: v for k, v in language.items()}

    def finish(self, loaded, explicit_prediction) -> None:
        if loaded.config.mistral is not None:
            loaded.tokenizers["mistral"] = load_mistral_tokenizer(loaded.path, *loaded.part_paths)
        super().finish(loaded, explicit_prediction)

