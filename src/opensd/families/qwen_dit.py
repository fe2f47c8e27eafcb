"""What the DiTs conditioned on one Qwen3 text encoder share (Z-Image, FLUX.2 [klein]): the encoder
under `text_encoders.qwen3_4b.transformer.` (its own file's `model.*` keys, whatever its size), read
from a file of its own (ComfyUI's text_encoders/qwen_3_*.safetensors or a llama.cpp GGUF), its
config from its shapes, the Qwen tokenizer found beside the files, the network's layouts and its
LoRA names."""
from __future__ import annotations

from torch import nn

from ..checkpoints import detect as D
from ..checkpoints import detect_dit as DD
from ..checkpoints.families import what_else
from ..checkpoints.files import read_state_dict
from ..checkpoints.keymap_qwen3 import is_qwen3, qwen3_config, qwen3_state_dict
from ..checkpoints.qwen_vocab import load_qwen_tokenizer
from ..errors import CheckpointError
from .dit import DiTFamily


def has_qwen3(shapes) -> bool:
    return DD.QWEN3 + "model.embed_tokens.weight" in shapes


def has_vae(shapes) -> bool:
    return D.VAE + "encoder.conv_in.weight" in shapes


def require_parts(path, label: str, parts) -> None:
    """CheckpointError naming each of `parts` ((what, present) pairs) that a `label` file lacks."""
    missing = [what for what, here in parts if not here]
    if missing:
        raise CheckpointError(path, f"this {label} file has no {' and no '.join(missing)}; pass the separate "
                                    "files or keep them in the models folder's vae/ and text_encoders/")


class QwenDiTFamily(DiTFamily):
    clip_names = ()
    required = ("vae", "qwen3")
    encoder_label = "the Qwen3 text encoder"  # what the model takes, for messages
    unused_keys: tuple[str, ...] = ()  # keys some released network files carry that no network reads

    def encoder_config(self, name, shapes, path):
        return qwen3_config(shapes, DD.QWEN3, path)

    def from_diffusers(self, net, cfg):
        raise NotImplementedError

    def canonical(self, sd, cfg):
        kind, p = self.layout({k: tuple(v.shape) for k, v in sd.items()})
        outside = (D.VAE, DD.TEXT)
        net = {k[len(p):]: v for k, v in sd.items() if k.startswith(p) and not k.startswith(outside)}
        for key in self.unused_keys:
            net.pop(key, None)
        if kind == "diffusers":
            net = self.from_diffusers(net, cfg)
        out = {k: v for k, v in sd.items() if k.startswith(outside)}
        out.update({DD.NET + k: v for k, v in net.items()})
        return out

    def encoder_tensors(self, files):
        """The Qwen3 text encoder from its own file (transformers' Qwen3 weights: the same `model.*`
        keys, an unused lm_head left out; or a llama.cpp GGUF, renamed by keymap_qwen3)."""
        if len(files) > 1:
            raise CheckpointError(files[1], f"{len(files)} text encoders given; a {self.label} model takes one, "
                                            f"{self.encoder_label}")
        sd = read_state_dict(files[0], keep_quantized=True)  # a GGUF's blocks stay stored (keeps_stored)
        shapes = {k: tuple(v.shape) for k, v in sd.items()}
        if not is_qwen3(shapes):
            raise CheckpointError(files[0], f"not a Qwen3 text encoder (a {self.label} model takes "
                                            f"{self.encoder_label}): " + what_else(shapes, D.UNET))
        return {DD.QWEN3 + k: v for k, v in qwen3_state_dict(sd).items()}

    def present_encoders(self, shapes):
        return ["qwen3"] if has_qwen3(shapes) else []

    def finish(self, loaded, explicit_prediction) -> None:
        if loaded.config.qwen3 is not None:
            loaded.tokenizers["qwen"] = load_qwen_tokenizer(loaded.path, *loaded.part_paths)

    def lora_modules(self, model: nn.Module) -> list:
        """The network's Linears under kohya's, ComfyUI's (diffusion_model. + the released path) and
        PEFT's (transformer. + diffusers' path; to_q/to_k/to_v as rows of the fused qkv) names, and
        diffusers' paths under diffusion_model. as ai-toolkit writes them. No text-encoder LoRAs."""
        modules = super().lora_modules(model)
        names = {n for m in modules for n in (m.kohya, m.peft, *m.aliases)}
        for m in modules:
            alias = "diffusion_model." + m.peft[len("transformer."):]
            if m.peft.startswith("transformer.") and alias not in names:
                m.aliases.append(alias)
                names.add(alias)
        return modules

    def pooled_width(self, cfg) -> int:
        return 0
