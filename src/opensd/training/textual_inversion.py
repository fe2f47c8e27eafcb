"""Textual inversion: learn N new token vectors (the embedding) for a name; nothing else trains.

The vectors start from the text encoder's input embedding of an init word (cycled when the word
has fewer tokens than N). Each training caption is `template` with {token} replaced by the
embedding's name and {caption} by the image's sidecar caption (or the folder's kohya caption);
the name is found in the caption's tokens exactly as a prompt finds an embedding, so training and
generation insert the vectors the same way.

Saved in the formats A1111 and our reader take: `.safetensors` with `emb_params` (N, D) for
single-encoder models, `clip_l`/`clip_g` for SDXL; or `.pt`, A1111's own dict
(`string_to_param: {"*": tensor}`, `string_to_token`, `name`, `step`, ...) holding only plain
tensors, strings and numbers. Use it by putting the file in the embeddings folder and writing its
file name in a prompt.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_write
from ..errors import InvalidArgument
from ..pipeline.conditioning import token_embedding
from ..text.embeddings import MAX_VECTORS, SDXL_KEYS, Embedding, EmbeddingDatabase
from . import finetune as FT

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "a photo of {token}, {caption}"


@dataclass
class EmbeddingOptions(FT.CommonOptions):
    token: str = ""                 # the prompt word; default: the output file's stem
    init_word: str = "*"
    num_vectors: int = 1
    template: str = DEFAULT_TEMPLATE
    lr: float = 5e-3

    @property
    def name(self) -> str:
        return self.token or Path(self.output).stem

    def validate(self) -> None:
        super().validate()
        if not 1 <= self.num_vectors <= MAX_VECTORS:
            raise InvalidArgument(f"num-vectors: must be between 1 and {MAX_VECTORS}, got {self.num_vectors}")
        if not self.name.strip() or any(c.isspace() for c in self.name):
            raise InvalidArgument(f"token: {self.name!r} must be one word without spaces (it is written in prompts)")
        if "{token}" not in self.template:
            raise InvalidArgument(f"template: {self.template!r} must contain {{token}}")
        if Path(self.output).suffix.lower() not in (".safetensors", ".pt"):
            raise InvalidArgument(f"output: {self.output} must end in .safetensors or .pt")


class EmbeddingVectors(nn.Module):
    """The trainable vectors, one (N, width) parameter per text encoder."""

    def __init__(self, init: dict[str, torch.Tensor]):
        super().__init__()
        self.keys = list(init)
        self.vectors = nn.ParameterList([nn.Parameter(v.clone().float()) for v in init.values()])

    def embedding(self, name: str) -> Embedding:
        return Embedding(name, dict(zip(self.keys, self.vectors)))

    def tensors(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().float().contiguous() for k, v in zip(self.keys, self.vectors)}


def init_vectors(pipe, init_word: str, n: int) -> dict[str, torch.Tensor]:
    """Per encoder (key "" for single-encoder models, clip_l/clip_g for SDXL), the init word's input
    embeddings cycled to n rows."""
    ids = pipe.tokenizer.encode(init_word)
    if not ids:
        raise InvalidArgument(f"init-word: {init_word!r} has no tokens")
    encoders, cfgs = pipe.model.text_encoders, pipe.config.text_encoders
    out = {}
    for enc, cfg in zip(encoders, cfgs):
        table = token_embedding(enc, cfg.naming).weight.detach()
        key = "" if len(encoders) == 1 else SDXL_KEYS[cfg.naming]
        out[key] = torch.stack([table[ids[i % len(ids)]] for i in range(n)]).float()
    return out


def caption_for(template: str, token: str, caption: str) -> str:
    text = template.replace("{token}", token).replace("{caption}", caption.strip())
    return ", ".join(p.strip() for p in text.split(",") if p.strip())


def build(opts: EmbeddingOptions, pipe=None):
    """(trainer, vectors module, pipe, dataset, steps)."""
    from .trainer import TrainConfig, Trainer
    opts.validate()
    pipe = pipe or FT.load_base(opts.model, opts.device)
    ds = FT.open_dataset(opts, pipe, default_caption=opts.caption)
    name = opts.name
    if pipe.tokenizer.encode(name) == pipe.tokenizer.encode(opts.init_word):
        raise InvalidArgument(f"token: {name!r} is the init word itself; pick a new word")
    for it in ds.items:
        it.caption = caption_for(opts.template, name, it.caption)
    steps = FT.total_steps(opts, ds)
    FT.check_job(opts.run_dir, FT.job_record(opts, steps=steps, kind="embedding"))
    if opts.bf16:
        FT.warn_bf16(opts.device)
    vectors = EmbeddingVectors(init_vectors(pipe, opts.init_word, opts.num_vectors)).to(pipe.device)
    db = EmbeddingDatabase([vectors.embedding(name)])
    pipe.set_embeddings(db)  # samples during training use the vectors as they are now
    if opts.gradient_checkpointing:
        FT.enable_gradient_checkpointing(pipe.model.unet)
    alphas = FT.alphas_of(pipe)
    batches = FT.LatentBatches(pipe, ds, opts.batch_size, opts.seed, **opts.batch_options())

    def loss_fn(_vectors, batch, _step):
        return FT.diffusion_loss(pipe, batch, alphas, embeddings=db, min_snr_gamma=opts.min_snr_gamma)

    def sample_fn(_vectors, step, run_dir):
        FT.save_samples(pipe, opts.sample_prompts or [ds.items[0].caption], step, run_dir, opts.seed,
                        opts.sample_steps, ds.resolution)

    cfg = TrainConfig(steps=steps, lr=opts.lr, warmup=opts.warmup, grad_clip=0.0, save_every=opts.save_every,
                      sample_every=opts.sample_every, seed=opts.seed, bf16=opts.bf16, **opts.schedule())
    trainer = Trainer(vectors, batches, loss_fn, cfg, Path(opts.run_dir), sample_fn, parallel=opts.parallel)
    return trainer, vectors, pipe, ds, steps


def save_embedding(vectors: EmbeddingVectors, path: Path, name: str, step: int, model_name: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = vectors.tensors()
    if path.suffix.lower() == ".pt":
        if "" not in tensors:
            raise InvalidArgument(f"output: {path}: SDXL embeddings hold two sets of vectors; save as .safetensors")
        data = {"string_to_token": {"*": torch.tensor(265)}, "string_to_param": {"*": tensors[""]},
                "name": name, "step": int(step), "sd_checkpoint": None, "sd_checkpoint_name": model_name}
        with atomic_write(path) as f:
            torch.save(data, f)
        return path
    from ..checkpoints.files import save_safetensors
    sd = {"emb_params": tensors[""]} if "" in tensors else tensors
    save_safetensors(sd, path, metadata={"name": name, "step": str(step), "sd_checkpoint_name": model_name})
    return path


def train_embedding(opts: EmbeddingOptions, pipe=None, until: int | None = None, on_step=None) -> Path | None:
    """Train (or continue) a textual-inversion run and write opts.output (None when stopped early)."""
    trainer, vectors, pipe, ds, steps = build(opts, pipe)
    log.info("embedding %r: %d vector(s) from %r, %d images, %d steps", opts.name, opts.num_vectors,
             opts.init_word, ds.num_images, steps)
    trainer.run(progress=opts.progress, until=until, on_step=on_step)
    if trainer.step < steps or not trainer.main:  # data-parallel: rank 0 writes
        return None
    return save_embedding(vectors, opts.output, opts.name, trainer.step, Path(opts.model).name)
