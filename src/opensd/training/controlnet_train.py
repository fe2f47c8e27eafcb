"""Train a ControlNet for a base model with the shared (resumable) Trainer.

The ControlNet starts as a copy of the base UNet's encoder with zero convs at zero (a no-op), and
learns through the usual diffusion loss of the FROZEN base UNet fed the control residuals. Half of
the captions are dropped so the control alone carries the structure (as in the ControlNet paper).

Built-in example: a Canny ControlNet for the built-in emoji model on data/emoji:

    nice -n 10 python -m opensd.training.controlnet_train --data data/emoji --run runs/controlnet \
        --steps 3000 --threads 1

Re-running the same command resumes (runs/controlnet/state.pt), and a larger --steps extends a
finished run; `--export-only` writes the latest state as an fp16 original-layout file
(control_model.* keys) to --out.

A ControlNet of any kind for a user's own data: images and captions in --data (kohya's layout),
their control images under the same names in --conditioning-dir (controlnet_data.py):

    opensd train-controlnet -m sd15.safetensors --data my/images --conditioning-dir my/depth \
        --run runs/depth --steps 2000 --batch 4 --out models/ControlNet/my-depth.safetensors
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_write
from ..checkpoints.controlnet_files import save_controlnet
from ..errors import InvalidArgument, run_main
from ..models.controlnet import ControlNet, from_unet
from ..sampling.schedules import scaled_linear_alphas_cumprod
from .builtin import MIN_SNR_GAMMA
from .builtin_sampling import tokenize
from .builtin_vae import index_stream, to_pixels
from .controlnet_args import add_arguments
from .controlnet_data import prepare_pairs
from .trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

CAPTION_DROPOUT = 0.5
CANNY = (100, 200)


def canny_hints(images_uint8: np.ndarray, low: int = CANNY[0], high: int = CANNY[1]) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, H, W) uint8 edge maps, the same preprocessor users run."""
    from PIL import Image

    from ..adapters.preprocessors import canny

    return np.stack([np.asarray(canny(Image.fromarray(im), low, high))[:, :, 0] for im in images_uint8])


def hint_tensor(hints_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W) uint8 edges or (N, H, W, 3) control images -> (N, 3, H, W) in [0, 1], as the
    pipeline feeds a control image."""
    h = torch.as_tensor(hints_uint8).float().div(255.0)
    if h.ndim == 4:
        return h.permute(0, 3, 1, 2).contiguous()
    return h[:, None].expand(-1, 3, -1, -1).contiguous()


@torch.no_grad()
def prepare(loaded, images: np.ndarray, path: Path, batch: int = 128) -> dict:
    """Latents (VAE mean, scaled) and Canny hints of every training image, cached in `path`."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    vae = loaded.model.vae
    lat = []
    for i in range(0, len(images), batch):
        mean, _ = vae.encode(to_pixels(images[i:i + batch]))
        lat.append(loaded.config.vae.scaled(mean.float()))
    out = {"latents": torch.cat(lat), "hints": torch.from_numpy(canny_hints(images))}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as f:
        torch.save(out, f)
    return out


def controlnet_loss(net: ControlNet, unet, text_encoder, batch, alphas: torch.Tensor) -> torch.Tensor:
    z0, hint, ids, t, noise, weight = batch
    with torch.no_grad():
        context = text_encoder(ids).hidden
    a = alphas[t].view(-1, 1, 1, 1)
    zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
    residuals = net(zt, hint, t, context)
    pred = unet(zt, t, context, control=residuals).float()
    snr = a.view(-1) / (1 - a.view(-1))
    snr_weighted = torch.clamp(snr, max=MIN_SNR_GAMMA) / snr
    return (snr_weighted * ((pred - noise) ** 2).mean(dim=(1, 2, 3))).mean() * weight  # a rank's share


def sample_t(n: int, g: torch.Generator, total: int, mode: str = "cubic") -> torch.Tensor:
    if mode == "uniform":
        return torch.randint(0, total, (n,), generator=g)
    u = torch.rand(n, generator=g)
    return ((1 - u ** 3) * total).long().clamp(0, total - 1)


def make_trainer(loaded, data: dict, captions: list[str], run_dir: Path, steps: int, batch: int = 32,
                 lr: float = 2e-4, save_every: int = 50, t_sampling: str = "cubic", parallel=None) -> Trainer:
    """`parallel` (distributed.ddp.Parallel, under torchrun): every process draws the whole batch and
    trains on its rows, weighted so the averaged gradients are the whole batch's."""
    sd = loaded.model
    unet = sd.unet.eval().requires_grad_(False)
    te = sd.cond_stage_model.eval().requires_grad_(False)
    net = from_unet(unet, hint_downscale=loaded.config.vae.downscale).float().train()
    ids = tokenize(captions, loaded.config.text_encoders[0])
    empty = tokenize([""], loaded.config.text_encoders[0])[0]
    alphas = scaled_linear_alphas_cumprod().float()
    latents, hints = data["latents"], data["hints"]
    order = data.get("order", torch.arange(len(latents)))  # an image listed once per repeat

    def batches(start):
        for step, pick in index_stream(len(order), batch, 7, start):
            idx = order[pick]
            g = torch.Generator().manual_seed(7_000_000 + step)
            b_ids = ids[idx].clone()
            b_ids[torch.rand(len(idx), generator=g) < CAPTION_DROPOUT] = empty
            t = sample_t(len(idx), g, len(alphas), t_sampling)
            noise = torch.randn(latents[idx].shape, generator=g)
            rows, weight = parallel.rows(len(idx)) if parallel is not None else (slice(None), 1.0)
            yield latents[idx][rows], hint_tensor(hints[idx][rows]), b_ids[rows], t[rows], noise[rows], weight

    cfg = TrainConfig(steps=steps, lr=lr, warmup=min(100, steps // 10 + 1), save_every=save_every, seed=7)
    return Trainer(net, batches, lambda m, b, s: controlnet_loss(m, unet, te, b, alphas), cfg, run_dir,
                   parallel=parallel)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python -m opensd.training.controlnet_train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    run(p.parse_args(argv))


def run(a: argparse.Namespace) -> Path | None:
    """Train (or export) as the flags say; under torchrun data-parallel, one process per CPU group
    (gloo), where only rank 0 writes and returns the file (the others None)."""
    from ..distributed import ddp

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if a.threads:
        torch.set_num_threads(a.threads)
    parallel, _ = ddp.start("cpu")
    try:
        return _train(a, parallel)
    finally:
        ddp.finish()


def _train(a: argparse.Namespace, parallel) -> Path | None:
    from ..distributed import ddp
    from ..pipeline.loader import load_model
    from .emoji_data import load_split

    loaded = load_model(a.model, dtype=torch.float32)
    if loaded.config.family in ("sdxl", "sdxl_refiner"):
        raise InvalidArgument("model: ControlNet training runs on SD 1.x/2.x and small models; SDXL is not "
                              "supported yet")
    def data_and_captions():
        if a.conditioning_dir is not None:  # the user's own (image, control image, caption) triples
            return prepare_pairs(loaded, a.data, a.conditioning_dir, a.resolution, a.caption, a.run / "data.pt")
        train = load_split(a.data, "train")
        return prepare(loaded, train.images, a.run / "data.pt"), train.captions

    data, captions = ddp.main_first(parallel, data_and_captions)  # rank 0 makes the data cache
    trainer = make_trainer(loaded, data, captions, a.run, a.steps, a.batch, a.lr, a.save_every, a.t_sampling,
                           parallel)
    if a.export_only:
        if not trainer.try_resume():
            raise SystemExit(f"no training state in {a.run}")
        net = trainer.model
    else:
        net = trainer.run(progress=not a.no_progress, until=a.until)
    if parallel is not None and not parallel.main:
        return None
    out = a.out or a.run / ("controlnet.safetensors" if a.conditioning_dir else "controlnet-canny.safetensors")
    save_controlnet(net.eval(), out, loaded.config.family)
    log.info("step %d: wrote %s", trainer.step, out)
    return out


if __name__ == "__main__":  # a user's mistake (no dataset, a bad file) ends in one line
    sys.exit(run_main(main))
