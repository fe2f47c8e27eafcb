"""DreamBooth: class images are generated once by the model itself, the UNet learns (loss down),
the saved single file loads through our loader as the same family with the trained weights."""
import pytest
import torch
from test_finetune_lora import make_data

from opensd.errors import InvalidArgument
from opensd.pipeline.pipeline import load
from opensd.training.dreambooth import DreamBoothOptions, build, train_dreambooth


def options(tmp_path, **kw) -> DreamBoothOptions:
    from opensd.library.synthetic import write_random_checkpoint
    ckpt = tmp_path / "m.safetensors"
    if not ckpt.exists():
        write_random_checkpoint(ckpt)
        make_data(tmp_path, n=2, folder="inst")
    base = {"data": tmp_path / "data", "model": ckpt, "output": tmp_path / "db.safetensors",
            "run_dir": tmp_path / "run", "steps": 6, "batch_size": 1, "resolution": 32, "bucket_step": 8,
            "lr": 1e-3, "progress": False, "save_every": 3, "instance_prompt": "a photo of sks emoji",
            "class_prompt": "a photo of an emoji", "num_class_images": 2, "class_steps": 2}
    return DreamBoothOptions(**(base | kw))


def test_prior_preservation_trains_and_saves_a_loadable_checkpoint(tmp_path):
    opts = options(tmp_path, fp16=True)
    out = train_dreambooth(opts)
    classes = sorted(p.name for p in opts.class_folder.iterdir())
    assert classes == ["class-00000.png", "class-00001.png"]
    stamp = [p.stat().st_mtime_ns for p in opts.class_folder.iterdir()]
    before = load(opts.model)
    after = load(out)
    assert after.config == before.config  # same family and architecture
    sd_a, sd_b = before.model.state_dict(), after.model.state_dict()
    assert set(sd_a) == set(sd_b)
    changed = [k for k in sd_a if not torch.equal(sd_a[k].half(), sd_b[k].half())]
    assert changed and all(k.startswith("model.diffusion_model.") for k in changed)  # UNet only
    assert after.model.unet.input_blocks[0][0].weight.dtype == torch.float32  # loads at any precision
    # a second run with the same class folder reuses the images instead of generating new ones
    again = options(tmp_path, run_dir=tmp_path / "run2", class_dir=opts.class_folder, steps=1)
    train_dreambooth(again)
    assert [p.stat().st_mtime_ns for p in opts.class_folder.iterdir()] == stamp


def test_loss_goes_down_and_text_encoder_optional(tmp_path):
    opts = options(tmp_path, steps=30, lr=2e-3, warmup=3, class_prompt=None, train_text_encoder=True,
                   te_lr=1e-4, batch_size=2)
    trainer, pipe, _ds, prior, _steps = build(opts)
    assert prior is None
    te0 = pipe.model.cond_stage_model.transformer.text_model.final_layer_norm.weight.clone()
    trainer.run(progress=False)
    first, last = sum(trainer.losses[:6]) / 6, sum(trainer.losses[-6:]) / 6
    assert last < 0.9 * first, (first, last)
    assert not torch.equal(te0, pipe.model.cond_stage_model.transformer.text_model.final_layer_norm.weight)
    assert [g["lr_scale"] for g in trainer.opt.param_groups] == [1.0, pytest.approx(0.05)]


def test_dreambooth_options_are_checked(tmp_path):
    with pytest.raises(InvalidArgument, match="instance-prompt"):
        train_dreambooth(options(tmp_path, instance_prompt=" "))
    with pytest.raises(InvalidArgument, match="num-class-images"):
        train_dreambooth(options(tmp_path, num_class_images=0))
