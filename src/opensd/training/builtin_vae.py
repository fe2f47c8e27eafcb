"""Stages 1 and 2 of the built-in model's training (opensd.training.builtin): the KL autoencoder
(trained, or taken from an existing built-in checkpoint) and the latents of every training image."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import atomic_write, write_atomic
from ..distributed.ddp import main_first
from ..models import config as C
from .builtin_run import rows_of, run_planned
from .builtin_sampling import save_grid
from .trainer import TrainConfig, Trainer

log = logging.getLogger(__name__)

KL_WEIGHT = 1e-6
VAE_CROP = 32
VAE_FULL_EVERY = 4


# --- data ------------------------------------------------------------------------------------------


def to_pixels(images_uint8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    x = torch.as_tensor(images_uint8)
    return x.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def index_stream(n: int, batch: int, seed: int, start: int):
    """Batch k's indices are a pure function of (seed, k): epoch-wise permutations, so a resumed run
    continues the same data order."""
    per_epoch = max(1, n // batch)
    step = start
    while True:
        epoch, pos = divmod(step, per_epoch)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        yield step, perm[pos * batch:(pos + 1) * batch]
        step += 1


# --- stage 1: VAE ----------------------------------------------------------------------------------


class VAEOnly(nn.Module):
    def __init__(self, cfg: C.VAEConfig):
        super().__init__()
        from ..models.vae import AutoencoderKL
        self.vae = AutoencoderKL(cfg)


def vae_loss(model: VAEOnly, x: torch.Tensor, generator: torch.Generator | None = None,
             share: tuple[int, slice, float] | None = None) -> torch.Tensor:
    """`share` (n, rows, weight): `x` is those rows of an n-image batch (a data-parallel rank's part,
    distributed.ddp); the posterior noise is drawn for the whole batch, as one process draws it."""
    mean, logvar = model.vae.encode(x)
    std = torch.exp(0.5 * logvar)
    n, rows, weight = share or (len(x), slice(None), 1.0)
    z = mean + std * torch.randn((n, *mean.shape[1:]), generator=generator)[rows].to(mean.device)
    rec = model.vae.decode(z).float()
    kl = 0.5 * (mean.float() ** 2 + std.float() ** 2 - 1.0 - logvar.float()).sum(dim=(1, 2, 3)).mean()
    return (F.l1_loss(rec, x) + F.mse_loss(rec, x) + KL_WEIGHT * kl) * weight


@torch.no_grad()
def psnr(vae, images_uint8: np.ndarray, batch: int = 64) -> float:
    """Mean per-image PSNR (dB, 8-bit) of reconstructions through the posterior mean."""
    vae.eval()
    values = []
    dev = next(vae.parameters()).device
    for i in range(0, len(images_uint8), batch):
        x = to_pixels(images_uint8[i:i + batch]).to(dev)
        rec = vae(x).clamp(-1, 1)
        a = ((rec + 1) * 127.5).round()
        b = ((x + 1) * 127.5).round()
        mse = ((a - b) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        values.extend((10 * torch.log10(255.0 ** 2 / mse)).tolist())
    return float(np.mean(values))


def random_crop(x: torch.Tensor, size: int, g: torch.Generator) -> torch.Tensor:
    """One random `size`×`size` window (the same for the whole batch), or `x` when it is not larger."""
    h, w = x.shape[-2:]
    if size >= min(h, w):
        return x
    top, left = (int(torch.randint(0, n - size + 1, (1,), generator=g)) for n in (h, w))
    return x[..., top:top + size, left:left + size]


def train_vae(train, heldout, cfg: C.ModelConfig, run_dir: Path, steps: int, batch: int, lr: float = 5e-4,
              progress: bool = True, save_every: int = 100, until: int | None = None,
              device: str = "cpu", budget_s: float | None = None, crop: int = VAE_CROP,
              full_every: int = VAE_FULL_EVERY, parallel=None) -> VAEOnly:
    """`crop`: most steps train on one random crop of that size per batch (the VAE is convolutional,
    and a 32×32 crop costs ~3.5× less than the full 64×64 image on CPU); every `full_every`-th step
    uses the whole image so the mid-block attention and GroupNorm also see full-size inputs.
    `parallel` (distributed.ddp.Parallel): this process trains its rows of every batch."""
    done = run_dir / "done.json"
    torch.manual_seed(1)  # the same first weights on any number of processes
    model = VAEOnly(cfg.vae).to(device)
    pixels = to_pixels(train.images).to(device)

    def batches(start):
        for step, idx in index_stream(len(pixels), batch, 1, start):
            g = torch.Generator().manual_seed(7_000_000 + step)
            x = pixels[idx.to(device)]
            flip = (torch.rand(len(x), generator=g) < 0.5).to(device)  # emoji are near-symmetric
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            if crop and full_every and step % full_every:
                x = random_crop(x, crop, g)
            rows, weight = rows_of(parallel, len(x))
            yield x[rows], g, (len(x), rows, weight)

    def sample_fn(m, step, rdir):
        p = psnr(m.vae, heldout.images[:128])
        log.info("vae step %d: held-out PSNR (128 images) %.2f dB", step, p)
        with open(rdir / "psnr.log", "a") as f:
            f.write(f"{step}\t{p:.3f}\n")
        x = to_pixels(heldout.images[:8]).to(device)
        with torch.no_grad():
            save_grid(torch.cat([x, m.vae(x).clamp(-1, 1)]).cpu(), rdir / "recon.png", cols=8)

    def make(n):
        tcfg = TrainConfig(steps=n, lr=lr, warmup=min(100, steps // 10 + 1), ema_decay=0.0,
                           save_every=save_every, sample_every=max(save_every, 500), seed=1)
        return Trainer(model, batches, lambda m, b, s: vae_loss(m, *b), tcfg, run_dir, sample_fn, parallel=parallel)

    if done.is_file():
        source = json.loads(done.read_text()).get("from")
        if source:
            raise ValueError(f"{run_dir}'s VAE came from {source}; pass --vae-from {source} again")
        trainer = make(steps)
        trainer.try_resume()
        return trainer.final_model().eval()
    trainer, out = run_planned(make, steps, run_dir, budget_s, progress, until)
    steps = trainer.cfg.steps

    def finish():
        if trainer.step >= steps and trainer.main:
            p = psnr(out.vae, heldout.images)
            write_atomic(done, json.dumps({"steps": trainer.step, "heldout_psnr_db": round(p, 3),
                                           "heldout_images": len(heldout.images)}, indent=1))
            log.info("VAE done: held-out PSNR %.2f dB on %d images", p, len(heldout.images))

    main_first(parallel, finish)  # the other ranks go on once done.json is there
    return out.eval()


def vae_from_checkpoint(path: Path, cfg: C.VAEConfig, heldout, run_dir: Path, device: str = "cpu") -> VAEOnly:
    """Stage 1 replaced by the autoencoder of an existing built-in checkpoint (same VAE config), so a
    new UNet architecture can be trained on a known-good VAE. Its held-out PSNR goes to done.json."""
    from ..checkpoints.files import read_metadata, read_state_dict
    path = Path(path)
    if (run_dir / "state.pt").is_file():
        raise ValueError(f"{run_dir} already holds a trained VAE stage; use a new --runs folder with --vae-from")
    prefix = "first_stage_model."
    weights = {k[len(prefix):]: v.float() for k, v in read_state_dict(path).items() if k.startswith(prefix)}
    if not weights:
        raise ValueError(f"{path} has no first_stage_model.* (VAE) weights")
    model = VAEOnly(cfg)
    try:
        model.vae.load_state_dict(weights)
    except RuntimeError as e:
        raise ValueError(f"{path}: its VAE does not match the built-in VAE config: {e}") from None
    model = model.to(device).eval()
    done = run_dir / "done.json"
    info = json.loads(done.read_text()) if done.is_file() else {}
    if info.get("from") != str(path):
        run_dir.mkdir(parents=True, exist_ok=True)
        p = psnr(model.vae, heldout.images)
        steps = read_metadata(path).get("opensd.vae_steps", "unknown")
        write_atomic(done, json.dumps({"steps": steps, "heldout_psnr_db": round(p, 3),
                                       "heldout_images": len(heldout.images), "from": str(path)}, indent=1))
        log.info("VAE from %s: held-out PSNR %.2f dB", path, p)
    return model


# --- stage 2: latents ------------------------------------------------------------------------------


@torch.no_grad()
def encode_latents(vae, images_uint8: np.ndarray, path: Path, batch: int = 128) -> dict:
    if path.is_file():
        return torch.load(path, weights_only=True)
    vae.eval()
    means, logvars = [], []
    for i in range(0, len(images_uint8), batch):
        m, lv = vae.encode(to_pixels(images_uint8[i:i + batch]).to(next(vae.parameters()).device))
        means.append(m.cpu())
        logvars.append(lv.cpu())
    mean, logvar = torch.cat(means), torch.cat(logvars)
    g = torch.Generator().manual_seed(0)
    samples = mean + torch.exp(0.5 * logvar) * torch.randn(mean.shape, generator=g)
    out = {"mean": mean, "logvar": logvar, "scaling_factor": torch.tensor(1.0 / samples.std().item())}
    with atomic_write(path) as f:
        torch.save(out, f)
    return out
