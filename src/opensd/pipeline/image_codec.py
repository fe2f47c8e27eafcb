"""Images to latents and back for the pipeline: the VAE (tiled above a size), the tiny autoencoder
(TAESD) for previews and fast decodes, and inpainting models' extra input channels."""
from __future__ import annotations

import logging
import time

import torch
import torch.nn.functional as F
from PIL import Image

from ..errors import InvalidArgument
from . import images as I
from . import vae_codec
from .previews import latent_preview

log = logging.getLogger(__name__)


class ImageCodec:
    """A Pipeline's VAE side (a part of Pipeline, kept in its own file)."""

    def _decoded(self, latents: torch.Tensor) -> Image.Image:
        """The first image of `latents` through the VAE, with the generation's Hypertile VAE setting."""
        with self._speedups.vae(self.model.vae):
            return self.decode(latents)[0]

    @torch.no_grad()
    def inpainting_cond(self, source: Image.Image | torch.Tensor | None, mask: Image.Image | None,
                        width: int | None = None, height: int | None = None, weight: float = 1.0,
                        soft: bool = False) -> torch.Tensor:
        """The extra input channels of inpainting models (9-channel UNets, Flux Fill; the family
        arranges them): the binary mask and the latent of the image with the masked area blanked
        (all masked without an image). `source`: an image, or pixels (1, 3, H, W); `weight`: A1111's
        inpainting_mask_weight, how far the masked area is blanked (torch.lerp, as A1111); `soft`:
        the mask's grey levels kept (soft inpainting)."""
        if source is None:
            pixels = torch.zeros(1, 3, height, width)
            binary = torch.ones(1, 1, height, width)
        else:
            pixels = source.float().cpu() if isinstance(source, torch.Tensor) else I.to_tensor(source)
            binary = I.mask_to_tensor(mask) if mask is not None else torch.ones(1, 1, *pixels.shape[-2:])
            binary = binary if soft else (binary > 0.5).float()
        latent = self.encode_tensor(torch.lerp(pixels, pixels * (1 - binary), weight))
        scale = self.family.inpaint_mask_scale(self.config)
        m = F.interpolate(binary, size=(latent.shape[-2] * scale, latent.shape[-1] * scale)).to(latent)
        return self.family.inpainting_channels(m, latent)

    @torch.no_grad()
    def encode(self, image: Image.Image) -> torch.Tensor:
        return self.encode_tensor(I.to_tensor(image))

    @torch.no_grad()
    def encode_tensor(self, pixels: torch.Tensor, tiles: tuple[int, int] | None = None) -> torch.Tensor:
        """(1, 3, H, W) in [-1, 1] -> scaled latent (posterior mean: deterministic for a seed).
        `tiles`: (tile, overlap) in pixels: encode in such tiles whatever the size."""
        vae = self.model.vae
        f = self.config.vae.downscale
        tiling = True if tiles else self.vae_tiling
        if self.vae_encoder == "taesd":
            return self._tiny_encode(pixels, tiling, tiles)

        def posterior_mean(x):
            return vae.encode(x)[0]

        mean = vae_codec.encode(posterior_mean, pixels.to(self.device, next(vae.parameters()).dtype), f, tiling, tiles)
        if not torch.isfinite(mean).all() and next(vae.parameters()).dtype != torch.float32:
            log.warning("VAE encode produced NaN in %s; switching the VAE to fp32", mean.dtype)
            vae.float()
            mean = vae_codec.encode(posterior_mean, pixels.to(self.device, torch.float32), f, tiling, tiles)
        return self.config.vae.scaled(mean.float())

    def use_tiny_vae(self, paths) -> None:
        """Load the tiny autoencoder from these files (find_tiny_vae finds them in model folders)."""
        from .tiny_vae import load_tiny_vae
        self.tiny_vae = load_tiny_vae(paths, self.config, self.device, self.dtype)

    @torch.no_grad()
    def _tiny_encode(self, pixels: torch.Tensor, tiling: bool | None, tiles) -> torch.Tensor:
        if self.tiny_vae is None or self.tiny_vae.encoder is None:
            raise InvalidArgument("vae_encoder: taesd needs a tiny autoencoder encoder file (taesd_encoder, "
                                  "taesdxl_encoder, ...); none is loaded for this model")
        return vae_codec.encode(self.tiny_vae.encode, pixels.to(self.device, self.dtype), 8, tiling, tiles).float()

    @torch.no_grad()
    def _tiny_decode(self, latents: torch.Tensor) -> torch.Tensor:
        if self.tiny_vae is None or self.tiny_vae.decoder is None:
            raise InvalidArgument("vae_decoder: taesd needs a tiny autoencoder decoder file (taesd_decoder, "
                                  "taesdxl_decoder, ...); none is loaded for this model")
        return vae_codec.decode(self.tiny_vae.decode, latents.to(self.device, self.dtype), 8, self.vae_tiling)

    @torch.no_grad()
    def preview(self, denoised: torch.Tensor, max_side: int = 512) -> Image.Image | None:
        """A live preview of the first image of a denoised estimate: the tiny decoder when one is
        loaded, else the cheap linear latent-to-RGB map. The tiny decoder takes at most a quarter of
        the time (on a CPU it can cost a third of an SD step): until 3x its last cost has passed,
        None (keep showing the last preview)."""
        if self.tiny_vae is None or self.tiny_vae.decoder is None:
            return latent_preview(denoised, self.config, max_side)
        start = time.monotonic()
        if start < self._next_preview:
            return None
        image = I.to_pil(self.tiny_vae.decode(denoised[:1].to(self.device, self.dtype))[0])
        image.thumbnail((max_side, max_side))
        end = time.monotonic()
        self._next_preview = end + 3 * (end - start)
        return image

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Scaled latents -> images, through the VAE (or the tiny one with vae_decoder "taesd")."""
        # one at a time: VAE decoding at full size dominates peak memory
        return [I.to_pil(self.decode_tensor(z[None])[0]) for z in latents]

    @torch.no_grad()
    def decode_tensor(self, latent: torch.Tensor) -> torch.Tensor:
        """One scaled latent (1, C, h, w) -> the VAE's pixels (1, 3, H, W), about [-1, 1], unclamped
        (the tiny decoder's with vae_decoder "taesd")."""
        if self.vae_decoder == "taesd":
            return self._tiny_decode(latent)
        vae = self.model.vae
        f = self.config.vae.downscale
        z = self.config.vae.unscaled(latent)
        x = vae_codec.decode(vae.decode, z.to(next(vae.parameters()).dtype), f, self.vae_tiling)
        if not torch.isfinite(x).all():
            if next(vae.parameters()).dtype == torch.float32:
                raise FloatingPointError("VAE decode produced NaN/inf even in fp32; the model is broken")
            # fp16 VAEs (SD1/SDXL) overflow; decode in fp32 from now on rather than save a black image.
            log.warning("VAE produced NaN in %s; switching the VAE to fp32", x.dtype)
            vae.float()
            x = vae_codec.decode(vae.decode, z.float(), f, self.vae_tiling)
        return x
