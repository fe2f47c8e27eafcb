"""Fine-tuning a guidance-distilled base: each row gets a CFG scale, drawn after every other random
draw, and learns u + s (target - u) with u the model's own empty-prompt prediction, weighted 1 / s^2
(the loss of the implied conditional prediction); at s = 1 that is plain training."""
from dataclasses import replace

import torch
from test_finetune_lora import make_data

from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.unet import GUIDANCE_RANGE, guidance_embedding
from opensd.pipeline.pipeline import load
from opensd.training import finetune as FT
from opensd.training.finetune_data import load_dataset

GUIDED = replace(TINY, unet=replace(TINY.unet, adm_in_channels=32, guidance_embed=True))


def _setup(tmp_path, cfg):
    data = tmp_path / "data" if (tmp_path / "data").exists() else make_data(tmp_path, n=4, size=(32, 32))
    pipe = load(write_random_checkpoint(tmp_path / f"{cfg.unet.guidance_embed}.safetensors", cfg))
    pipe.model.float()
    ds = load_dataset(data, resolution=32, step=8)
    return pipe, FT.LatentBatches(pipe, ds, batch_size=4, seed=3)


def test_guided_batches_add_scales_last(tmp_path):
    _, batches_g = _setup(tmp_path, GUIDED)
    _, batches_p = _setup(tmp_path, TINY)
    guided, plain = next(batches_g(5)), next(batches_p(5))
    assert "scales" not in plain
    s = guided["scales"]
    assert s.shape == (4,) and ((s >= GUIDANCE_RANGE[0]) & (s <= GUIDANCE_RANGE[1])).all()
    torch.testing.assert_close(guided["t"], plain["t"])  # the other draws are an unguided base's
    torch.testing.assert_close(guided["noise"], plain["noise"])
    torch.testing.assert_close(next(batches_g(5))["scales"], s)  # a resumed run sees the same scales


def test_scale_one_is_plain_training_and_higher_scales_fit_the_implied_conditional(tmp_path):
    pipe, batches = _setup(tmp_path, GUIDED)
    batch = next(batches(0))
    alphas = FT.alphas_of(pipe)
    at = lambda s: batch | {"scales": torch.full((4,), s)}
    plain = {k: v for k, v in batch.items() if k != "scales"}
    with torch.no_grad():
        torch.testing.assert_close(FT.diffusion_loss(pipe, at(1.0), alphas), FT.diffusion_loss(pipe, plain, alphas))
        got = FT.diffusion_loss(pipe, at(7.0), alphas)
        a = alphas[batch["t"]].view(-1, 1, 1, 1)
        zt = a.sqrt() * batch["z0"] + (1 - a).sqrt() * batch["noise"]
        context, _ = FT.encode_text(pipe, batch["captions"], None, batch["size"])
        empty, _ = FT.encode_text(pipe, [""] * 4, None, batch["size"])
        unet = pipe.model.unet
        g7 = unet(zt, batch["t"], context, guidance_embedding(torch.full((4,), 7.0), 32)).float()
        u = unet(zt, batch["t"], empty).float()
        implied = u + (g7 - u) / 7  # the conditional prediction that CFG at 7 around u would give g7
        want = ((implied - batch["noise"]) ** 2).mean()
    torch.testing.assert_close(got, want)
    assert not torch.allclose(got, FT.diffusion_loss(pipe, plain, alphas).detach())
