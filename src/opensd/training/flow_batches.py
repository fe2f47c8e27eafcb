"""Batches for training a DiT LoRA: every caption encoded once by the family's text encoders and every
image's model latent (per flip) encoded once by the VAE, before the first step, so the text encoders
can be dropped from memory while the network trains (kohya's cache_text_encoder_outputs and
cache_latents). Captions are taken literally (emphasis "none"), as the UNet trainer takes them.

Everything random in a batch (noise, times, caption dropout) comes from a generator seeded by
(seed, step), so a resumed run sees exactly the batches an uninterrupted run would; with `parallel`
(data-parallel), every draw is for the whole batch and this process keeps its rows.
"""
from __future__ import annotations

import logging

import torch

from ..errors import InvalidArgument
from ..pipeline.conditioning import Conditioning
from .finetune_data import Dataset, stack
from .flow_loss import draw_sigmas, training_shift

log = logging.getLogger(__name__)


@torch.no_grad()
def encode_captions(pipe, captions: list[str]) -> dict[str, Conditioning]:
    """Each distinct caption -> its (1, T, D) context and pooled vector, on the CPU."""
    cond = pipe.conditioner(None, emphasis="none")
    distinct = list(dict.fromkeys(captions))
    out = {}
    for text, c in zip(distinct, cond.encode_batch(distinct)):
        pooled = c.pooled if c.pooled is not None else torch.zeros(1, 0)
        out[text] = Conditioning(c.context.float().cpu(), pooled.float().cpu())
    lengths = {c.context.shape[1] for c in out.values()}
    if len(lengths) > 1:
        raise InvalidArgument(f"caption: this model's prompt encoder gave contexts of {sorted(lengths)} tokens; "
                              "captions of one training run must encode to one length")
    return out


def free_text_encoders(pipe) -> None:
    """Release the text encoders' weights (their captions are cached): the module structure stays, its
    tensors become meta tensors that hold no memory."""
    for module in pipe.family.text_modules(pipe.model):
        if module is not None:
            module.to_empty(device="meta")
    pipe.forget_encodings()


class FlowBatches:
    """`batches(start)` for the Trainer: dicts of x0, noise, sigma, context, y (and the data-parallel
    weight), all on the pipeline's device."""

    def __init__(self, pipe, ds: Dataset, batch_size: int, seed: int, *, noise_offset: float = 0.0,
                 caption_dropout: float = 0.0, parallel=None):
        self.pipe, self.ds, self.batch_size, self.seed = pipe, ds, batch_size, seed
        self.noise_offset, self.caption_dropout, self.parallel = noise_offset, caption_dropout, parallel
        self.family = pipe.config.family
        self.model_shift = getattr(pipe.config, "shift", None)
        flips = (False, True) if ds.flip else (False,)
        self.latents = {(i, f): self._latent(i, f) for i in range(len(ds.items)) for f in flips}
        captions = [it.caption for it in ds.items] + ([""] if caption_dropout else [])
        self.texts = encode_captions(pipe, captions)

    @torch.no_grad()
    def _latent(self, index: int, flipped: bool) -> torch.Tensor:
        px, _ = stack(self.ds, [(index, flipped)])
        return self.pipe.encode_tensor(px)[0].float().cpu()  # the family's model latent, as sampling sees it

    def __call__(self, start: int):
        for step, batch in self.ds.batches(self.batch_size, self.seed, start):
            yield self.make(step, batch)

    def make(self, step: int, batch) -> dict:
        g = torch.Generator().manual_seed(self.seed * 7_919 + 1_000_003 * (step + 1))
        rows, weight = self.parallel.rows(len(batch)) if self.parallel is not None else (slice(None), 1.0)
        x0 = torch.stack([self.latents[tuple(b)] for b in batch])
        noise = torch.randn(x0.shape, generator=g)
        shift = training_shift(self.family, self.model_shift, tuple(x0.shape[-2:]))
        sigma = draw_sigmas(len(batch), shift, g)
        dropped = torch.rand(len(batch), generator=g) < self.caption_dropout
        if self.noise_offset:
            noise = noise + self.noise_offset * torch.randn(*noise.shape[:2], 1, 1, generator=g)
        captions = ["" if d else self.ds.items[i].caption for (i, _), d in zip(batch, dropped.tolist())][rows]
        conds = [self.texts[c] for c in captions]
        dev = self.pipe.device
        return {"x0": x0[rows].to(dev), "noise": noise[rows].to(dev), "sigma": sigma[rows].to(dev),
                "context": torch.cat([c.context for c in conds]).to(dev),
                "y": torch.cat([c.pooled for c in conds]).to(dev), "weight": weight}
