"""ControlNet training: starts as a no-op copy of the UNet encoder, learns through the frozen UNet,
resumes, and exports a file that loads back for the same model."""
import numpy as np
import torch

from opensd.adapters.controlnet import load_controlnet
from opensd.library.synthetic import write_random_checkpoint
from opensd.pipeline.loader import load_model
from opensd.training.controlnet_train import canny_hints, make_trainer, prepare
from opensd.checkpoints.controlnet_files import save_controlnet


def test_train_resume_and_export(tmp_path):
    loaded = load_model(write_random_checkpoint(tmp_path / "tiny.safetensors"))
    rng = np.random.default_rng(0)
    images = np.full((6, 64, 64, 3), 255, np.uint8)
    for im in images:
        x, y = rng.integers(5, 30, 2)
        im[y:y + 25, x:x + 25] = rng.integers(0, 200, 3)
    assert canny_hints(images).max() == 255
    data = prepare(loaded, images, tmp_path / "run" / "data.pt")
    assert data["latents"].shape == (6, 4, 8, 8) and data["hints"].shape == (6, 64, 64)
    unet_before = {k: v.clone() for k, v in loaded.model.unet.state_dict().items()}
    trainer = make_trainer(loaded, data, ["a square"] * 6, tmp_path / "run", steps=4, batch=2, save_every=2)
    net = trainer.run(progress=False, until=2)
    assert all(z[0].weight.abs().max() > 0 for z in net.zero_convs)  # the zero convs learned
    for k, v in loaded.model.unet.state_dict().items():  # the base UNet stayed frozen
        assert torch.equal(v, unet_before[k])
    resumed = make_trainer(loaded, data, ["a square"] * 6, tmp_path / "run", steps=4, batch=2, save_every=2)
    resumed.run(progress=False)
    assert resumed.step == 4
    out = tmp_path / "cn.safetensors"
    save_controlnet(resumed.model, out, loaded.config.family)
    pipe_like = type("P", (), {"config": loaded.config, "device": "cpu", "dtype": torch.float32})()
    cn = load_controlnet(out, pipe_like)
    assert cn.net.config.hint_downscale == loaded.config.vae.downscale
