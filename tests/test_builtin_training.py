"""The built-in model's training stages on a tiny config and random images (no dataset, no real
training): they run, losses are finite and fall, resume continues, and the export is a file our
loader detects as family "small" with the same config. If the shipped weights exist, they load and
generate."""
import json
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from opensd.checkpoints import detect as D
from opensd.checkpoints.files import read_metadata, read_state_dict
from opensd.models import config as C
from opensd.models.stable_diffusion import StableDiffusion
from opensd.models.unet import GUIDANCE_RANGE
from opensd.training import builtin as B
from opensd.training import builtin_vae as V
from opensd.training.builtin_teacher import transplant

TINY = C.ModelConfig(
    family="small",
    unet=C.UNetConfig(model_channels=32, channel_mult=(1, 2), num_res_blocks=1, transformer_depth=(0, 1),
                      transformer_depth_middle=1, context_dim=64),
    vae=C.VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1, scaling_factor=1.0),
    text_encoders=(C.TextEncoderConfig(width=64, layers=1, heads=1),),
    resolution=16,
)


def _split(n, seed):
    rng = np.random.default_rng(seed)
    images = np.full((n, 16, 16, 3), 255, dtype=np.uint8)
    for i in range(n):  # a coloured square on white: learnable, not pure noise
        x, y = rng.integers(0, 8, 2)
        images[i, y:y + 8, x:x + 8] = rng.integers(0, 255, 3)
    captions = [f"square {i % 3}, noto emoji style" for i in range(n)]
    return SimpleNamespace(images=images, captions=captions)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    out = runs / "model.safetensors"
    splits = (_split(24, 0), _split(8, 1))
    path = B.run(None, runs, vae_steps=30, unet_steps=20, batch=4, vae_batch=4, out=out, progress=False,
                 cfg=TINY, save_every=10, sample_every=10, splits=splits)
    return runs, path, splits


def test_stages_run_and_losses_fall(trained):
    runs, path, _ = trained
    assert path is not None and path.is_file()
    vae = torch.load(runs / "vae" / "state.pt", weights_only=True)
    assert vae["step"] == 30
    losses = vae["losses"]
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    unet = torch.load(runs / "unet" / "state.pt", weights_only=True)
    assert unet["step"] == 20 and all(np.isfinite(unet["losses"]))
    assert (runs / "vae" / "done.json").is_file()
    assert (runs / "unet" / "samples_000010.png").is_file()
    lat = torch.load(runs / "latents.pt", weights_only=True)
    assert lat["mean"].shape == (24, 4, 8, 8) and float(lat["scaling_factor"]) > 0


def test_export_detects_as_small_with_matching_config(trained):
    runs, path, _ = trained
    sd = read_state_dict(path)
    meta = read_metadata(path)
    assert all(v.dtype == torch.float16 for v in sd.values())
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, str(path), meta)
    assert cfg.family == "small"
    expected = B.config_for(runs, TINY)
    assert cfg == expected
    with torch.device("meta"):
        keys = set(StableDiffusion(cfg).state_dict())
    assert keys == set(sd)


def test_resume_continues_and_skips_finished_stages(trained, tmp_path):
    runs, _, splits = trained
    # A finished run re-invoked does no more work and gives the same file.
    again = B.run(None, runs, vae_steps=30, unet_steps=20, batch=4, vae_batch=4, out=tmp_path / "again.safetensors",
                  progress=False, cfg=TINY, save_every=10, sample_every=0, splits=splits)
    assert torch.load(runs / "unet" / "state.pt", weights_only=True)["step"] == 20
    a, b = read_state_dict(again), read_state_dict(runs / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # An interrupted UNet stage carries on from its checkpoint.
    part = tmp_path / "part"
    part.mkdir()
    for name in ("vae", "latents.pt"):
        src = runs / name
        if src.is_dir():
            (part / name).mkdir()
            for f in src.iterdir():
                (part / name / f.name).write_bytes(f.read_bytes())
        else:
            (part / name).write_bytes(src.read_bytes())
    B.run(None, part, 30, 20, 4, 4, None, progress=False, cfg=TINY, save_every=5, sample_every=0,
          splits=splits, unet_until=10)
    assert torch.load(part / "unet" / "state.pt", weights_only=True)["step"] == 10
    B.run(None, part, 30, 20, 4, 4, None, progress=False, cfg=TINY, save_every=5, sample_every=0, splits=splits)
    assert torch.load(part / "unet" / "state.pt", weights_only=True)["step"] == 20


def test_sample_and_psnr_shapes():
    torch.manual_seed(0)
    cfg = replace(TINY, vae=replace(TINY.vae, scaling_factor=0.5))
    model = StableDiffusion(cfg).eval()
    img = B.sample(model, ["a", "b"], steps=2)
    assert img.shape == (2, 3, 16, 16) and torch.isfinite(img).all()
    assert np.isfinite(V.psnr(model.vae, _split(2, 3).images))


SHIPPED = B.DEFAULT_OUT


@pytest.mark.skipif(not SHIPPED.is_file(), reason="built-in weights not exported")
def test_shipped_weights_load_and_generate():
    import opensd

    sd = read_state_dict(SHIPPED)
    cfg = D.detect({k: tuple(v.shape) for k, v in sd.items()}, str(SHIPPED), read_metadata(SHIPPED))
    assert cfg.family == "small" and cfg.resolution == 64
    assert cfg.unet == B.BUILTIN.unet and cfg.text_encoders == B.BUILTIN.text_encoders
    assert cfg.vae == replace(B.BUILTIN.vae, scaling_factor=cfg.vae.scaling_factor)
    pipe = opensd.load(SHIPPED)
    assert pipe.config.family == "small" and not pipe.loaded.unknown_keys
    images = pipe.txt2img("red apple, noto emoji style", steps=4, seed=1)
    image = images[0] if isinstance(images, list) else images
    assert image.size == (64, 64)


def test_random_crop_window_and_passthrough():
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    a = V.random_crop(x, 8, torch.Generator().manual_seed(3))
    b = V.random_crop(x, 8, torch.Generator().manual_seed(3))
    assert a.shape == (2, 3, 8, 8) and torch.equal(a, b)  # seeded: a resumed run crops the same
    top, left = divmod(int(a[0, 0, 0, 0]), 16)
    assert torch.equal(a, x[..., top:top + 8, left:left + 8])
    assert V.random_crop(x, 16, torch.Generator()) is x


def test_vae_trains_on_crops_with_full_images_every_nth_step(tmp_path, monkeypatch):
    seen = []
    real = V.vae_loss
    monkeypatch.setattr(V, "vae_loss", lambda m, x, *rest: seen.append(tuple(x.shape[-2:])) or real(m, x, *rest))
    B.train_vae(_split(8, 0), _split(4, 1), TINY, tmp_path, steps=6, batch=4, progress=False,
                save_every=100, crop=8, full_every=3)
    assert seen == [(16, 16), (8, 8), (8, 8)] * 2


def test_caption_repeats_share_one_caption_encoding_per_image(trained, tmp_path, monkeypatch):
    runs, _, (train, heldout) = trained
    vae = B.train_vae(train, heldout, TINY, runs / "vae", 30, 4, progress=False)  # finished: loads
    lat = torch.load(runs / "latents.pt", weights_only=True)
    lat = {**lat, "logvar": torch.full_like(lat["logvar"], -60.0)}  # z0 = posterior mean exactly
    seen, real_loss = [], B.diffusion_loss

    def recording_loss(model, batch, alphas):
        seen.append(batch)
        return real_loss(model, batch, alphas)

    monkeypatch.setattr(B, "diffusion_loss", recording_loss)
    B.train_unet(train, vae, lat, B.config_for(runs, TINY), tmp_path / "unet", 3, 8, progress=False,
                 sample_every=100, caption_repeats=2)
    assert len(seen) == 3
    for z0, ids, t, noise in seen:
        assert z0.shape[0] == 8 and ids.shape[0] == 4
        assert torch.equal(z0[0::2], z0[1::2])  # each drawn image appears twice in a row...
        assert not torch.equal(noise[0::2], noise[1::2]) and not torch.equal(z0[0::2][:1], z0[0::2][1:2])
    assert any(not torch.equal(t[0::2], t[1::2]) for _, _, t, _ in seen)  # ...at its own timesteps
    with pytest.raises(ValueError, match="divisor of the batch size 8"):
        B.train_unet(train, vae, lat, TINY, tmp_path / "bad", 3, 8, progress=False, caption_repeats=3)


@torch.no_grad()
def test_diffusion_loss_with_shared_captions_equals_repeated_captions():
    torch.manual_seed(0)
    model = StableDiffusion(TINY).eval()
    alphas = B.scaled_linear_alphas_cumprod().float()
    ids = torch.randint(0, 49407, (2, 77))
    z0, noise = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    t = torch.tensor([10, 900, 300, 600])
    shared = B.diffusion_loss(model, (z0, ids, t, noise), alphas)
    repeated = B.diffusion_loss(model, (z0, ids.repeat_interleave(2, 0), t, noise), alphas)
    torch.testing.assert_close(shared, repeated)
    assert not torch.allclose(shared, B.diffusion_loss(model, (z0, ids.flip(0).repeat_interleave(2, 0), t, noise),
                                                       alphas))


def test_cli_rejects_caption_repeats_that_do_not_divide_the_batch(tmp_path, capsys):
    with pytest.raises(SystemExit):
        B.main(["--runs", str(tmp_path / "runs"), "--batch", "32", "--caption-repeats", "3"])
    assert "positive divisor of --batch (32), got 3" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()  # nothing started


def test_cli_export_only_names_a_runs_folder_with_nothing_to_export(tmp_path, capsys):
    with pytest.raises(SystemExit):
        B.main(["--runs", str(tmp_path / "empty"), "--export-only"])
    assert "--export-only: " + str(tmp_path / "empty") + " holds no UNet-stage checkpoint" in capsys.readouterr().err


def test_vae_from_checkpoint_replaces_stage_one(trained, tmp_path):
    runs, path, splits = trained
    new = tmp_path / "new"
    out = B.run(None, new, 30, 6, 4, 4, tmp_path / "m.safetensors", progress=False, cfg=TINY, save_every=3,
                sample_every=0, splits=splits, vae_from=path)
    assert not (new / "vae" / "state.pt").exists()  # no VAE training happened
    done = json.loads((new / "vae" / "done.json").read_text())
    assert done["from"] == str(path) and done["steps"] == "30" and done["heldout_psnr_db"] > 0
    src, got = read_state_dict(path), read_state_dict(out)
    vae_keys = [k for k in src if k.startswith("first_stage_model.")]
    assert vae_keys and all(torch.equal(src[k], got[k]) for k in vae_keys)
    assert not torch.equal(src["model.diffusion_model.out.2.weight"], got["model.diffusion_model.out.2.weight"])
    # the folder cannot later be continued as if it had trained its own VAE, nor mix the two
    with pytest.raises(ValueError, match="--vae-from"):
        B.run(None, new, 30, 6, 4, 4, None, progress=False, cfg=TINY, splits=splits)
    with pytest.raises(ValueError, match="already holds a trained VAE"):
        B.vae_from_checkpoint(path, TINY.vae, splits[1], runs / "vae")
    with pytest.raises(ValueError, match="does not match the built-in VAE config"):
        B.vae_from_checkpoint(path, B.BUILTIN.vae, splits[1], tmp_path / "other")


@pytest.mark.parametrize("arch", sorted(B.ARCHS))
def test_every_arch_is_detected_from_its_file_layout(arch):
    cfg = replace(B.ARCHS[arch], vae=replace(B.ARCHS[arch].vae, scaling_factor=0.9))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in StableDiffusion(cfg).state_dict().items()}
    assert D.detect(shapes, arch, D.metadata_for(cfg)) == cfg


def test_cli_keeps_a_runs_folder_on_its_arch(tmp_path, capsys):
    runs = tmp_path / "runs"
    assert B.recorded_arch(runs, "fast") == "fast" and B.recorded_arch(runs) == "fast"
    with pytest.raises(SystemExit):
        B.main(["--runs", str(runs), "--arch", "v1", "--data", str(tmp_path / "none")])
    assert "started with --arch fast; pass --arch fast" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        B.main(["--runs", str(runs), "--arch", "v1", "--export-only"])
    assert "started with --arch fast, not v1" in capsys.readouterr().err
    old = tmp_path / "old"
    (old / "unet").mkdir(parents=True)  # a folder from before --arch existed
    assert B.recorded_arch(old) == "v1"
    with pytest.raises(SystemExit):
        B.main(["--runs", str(runs), "--vae-from", str(tmp_path / "missing.safetensors")])
    assert "missing.safetensors: no such file" in capsys.readouterr().err


# a smaller UNet under TINY's text encoder and VAE: a student for TINY-trained teachers
STUDENT = replace(TINY, unet=replace(TINY.unet, channel_mult=(1, 1), transformer_depth_middle=0))


@torch.no_grad()
def test_distillation_loss_is_the_distance_to_the_teachers_prediction():
    torch.manual_seed(0)
    teacher = StableDiffusion(TINY).eval()
    student = StableDiffusion(TINY).eval()
    student.load_state_dict(teacher.state_dict())
    alphas = B.scaled_linear_alphas_cumprod().float()
    ids = torch.randint(0, 49407, (4, 77))
    batch = (torch.randn(4, 4, 8, 8), ids, torch.tensor([10, 900, 300, 600]), torch.randn(4, 4, 8, 8))
    assert B.diffusion_loss(student, batch, alphas, teacher=teacher.unet) == 0  # same UNet: nothing to learn
    assert B.diffusion_loss(student, batch, alphas) > 0  # the noise is a different target
    encoded = (batch[0], student.cond_stage_model(ids).hidden, *batch[2:])  # a frozen encoder's output
    torch.testing.assert_close(B.diffusion_loss(student, encoded, alphas), B.diffusion_loss(student, batch, alphas))
    student.unet.out[2].bias.add_(0.1)
    assert B.diffusion_loss(student, batch, alphas, teacher=teacher.unet) > 0


def test_teacher_gives_its_encoder_and_vae_and_its_unet_is_the_target(trained, tmp_path, monkeypatch):
    runs, path, splits = trained
    seen, real_loss = [], B.diffusion_loss

    def recording_loss(model, batch, alphas, teacher=None, empty=None):
        seen.append((batch, teacher))
        return real_loss(model, batch, alphas, teacher=teacher, empty=empty)

    monkeypatch.setattr(B, "diffusion_loss", recording_loss)
    student = tmp_path / "student"
    out = B.run(None, student, 30, 6, 4, 4, tmp_path / "s.safetensors", progress=False, cfg=STUDENT,
                save_every=3, sample_every=0, splits=splits, teacher=path)
    src, got = read_state_dict(path), read_state_dict(out)
    frozen = [k for k in src if k.startswith(("cond_stage_model.", "first_stage_model."))]
    assert frozen and all(torch.equal(src[k], got[k]) for k in frozen)  # bit for bit, after 6 steps
    assert D.detect({k: tuple(v.shape) for k, v in got.items()}, "s", read_metadata(out)).unet == STUDENT.unet
    assert read_metadata(out)["opensd.distilled_from"] == path.name
    assert not (student / "vae" / "state.pt").exists()  # the teacher's VAE, not a trained one
    # every step conditioned on the teacher's encodings of the captions (or of the empty prompt)
    teacher = StableDiffusion(TINY).eval()
    teacher.load_state_dict({k: v.float() for k, v in src.items()}, strict=False)
    with torch.no_grad():
        known = teacher.cond_stage_model(B.tokenize(sorted(set(splits[0].captions)) + [""],
                                                    TINY.text_encoders[0])).hidden
    assert len(seen) == 6
    for (z0, context, t, noise), unet in seen:
        assert unet is not None and context.is_floating_point() and context.shape == (4, 77, 64)
        assert all(min((row - k).abs().max() for k in known) < 1e-5 for row in context)


def test_teacher_misuse_is_refused(trained, tmp_path, capsys):
    runs, path, splits = trained
    kw = dict(progress=False, save_every=3, sample_every=0, splits=splits)
    student = tmp_path / "student"
    B.run(None, student, 30, 2, 4, 4, None, cfg=STUDENT, teacher=path, **kw)
    with pytest.raises(ValueError, match="was started with --teacher .*pass it again"):
        B.run(None, student, 30, 2, 4, 4, None, cfg=STUDENT, **kw)
    with pytest.raises(ValueError, match="already trained its UNet without a teacher"):
        B.run(None, runs, 30, 2, 4, 4, None, cfg=STUDENT, teacher=path, **kw)
    with pytest.raises(ValueError, match="must be the --teacher file"):
        B.run(None, tmp_path / "b", 30, 2, 4, 4, None, cfg=STUDENT, teacher=path, vae_from=tmp_path / "x", **kw)
    other_encoder = replace(STUDENT, text_encoders=(replace(TINY.text_encoders[0], layers=2),))
    with pytest.raises(ValueError, match="its text encoder .1 layers, width 64. is not this --arch's .2 layers"):
        B.run(None, tmp_path / "c", 30, 2, 4, 4, None, cfg=other_encoder, teacher=path, **kw)
    with pytest.raises(SystemExit):
        B.main(["--runs", str(tmp_path / "d"), "--teacher", str(tmp_path / "missing.safetensors")])
    assert "--teacher" in capsys.readouterr().err and not (tmp_path / "d").exists()


def test_init_unet_is_the_first_steps_unet_and_is_held_to_the_folder(trained, tmp_path, monkeypatch):
    runs, path, splits = trained
    kw = dict(progress=False, save_every=3, sample_every=0, splits=splits)
    first, real_loss = [], B.diffusion_loss

    def recording_loss(model, batch, alphas, teacher=None):
        if not first:
            first.append({k: v.detach().clone() for k, v in model.unet.state_dict().items()})
        return real_loss(model, batch, alphas, teacher=teacher)

    monkeypatch.setattr(B, "diffusion_loss", recording_loss)
    warm = tmp_path / "warm"
    out = B.run(None, warm, 30, 3, 4, 4, tmp_path / "w.safetensors", cfg=TINY, init_unet=path, **kw)
    src = read_state_dict(path)
    start = {k: src["model.diffusion_model." + k].float() for k in first[0]}
    assert all(torch.equal(first[0][k], start[k]) for k in start)  # step 1 saw the init file's UNet
    assert read_metadata(out)["opensd.unet_init_from"] == path.name
    assert "opensd.unet_init_from" not in read_metadata(path)
    with pytest.raises(ValueError, match="was started with --init-unet .*pass it again"):
        B.run(None, warm, 30, 3, 4, 4, None, cfg=TINY, **kw)
    with pytest.raises(ValueError, match="already trained its UNet from a fresh start"):
        B.run(None, runs, 30, 3, 4, 4, None, cfg=TINY, init_unet=path, **kw)
    with pytest.raises(ValueError, match=r"its UNet \(32 channels, mult \(1, 2\)\) does not fit this --arch's"):
        B.run(None, tmp_path / "other", 30, 3, 4, 4, None, cfg=STUDENT, init_unet=path, **kw)


def test_guided_student_starts_as_its_pruned_teacher_and_exports_a_guided_model(trained, tmp_path, monkeypatch):
    runs, path, splits = trained
    kw = dict(progress=False, save_every=3, sample_every=0, splits=splits)
    guided = replace(TINY, unet=replace(TINY.unet, transformer_depth_middle=0, adm_in_channels=32,
                                        guidance_embed=True))
    with pytest.raises(ValueError, match="pass --teacher"):
        B.run(None, tmp_path / "alone", 30, 3, 4, 4, None, cfg=guided, vae_from=path, **kw)
    first, real_loss = [], B.diffusion_loss

    def recording_loss(model, batch, alphas, teacher=None, empty=None):
        if not first:
            first.append(({k: v.detach().clone() for k, v in model.unet.state_dict().items()}, batch))
        return real_loss(model, batch, alphas, teacher=teacher, empty=empty)

    monkeypatch.setattr(B, "diffusion_loss", recording_loss)
    out = B.run(None, tmp_path / "g", 30, 3, 4, 4, tmp_path / "g.safetensors", cfg=guided, teacher=path,
                init_unet=path, **kw)
    teacher = StableDiffusion(TINY)
    teacher.load_state_dict({k: v.float() for k, v in read_state_dict(path).items()}, strict=False)
    start = transplant(teacher.unet, guided.unet)
    state, batch = first[0]
    # all but the guidance embedding's randomly initialised first layer; its last starts at zero
    assert [k for k in start if not torch.equal(state[k], start[k])] == ["label_emb.0.0.weight", "label_emb.0.0.bias"]
    assert not state["label_emb.0.2.weight"].any() and not state["label_emb.0.2.bias"].any()
    scales = batch[4]  # one CFG scale per row, in the trained range
    assert scales.shape == (4,) and ((scales >= GUIDANCE_RANGE[0]) & (scales <= GUIDANCE_RANGE[1])).all()
    got = read_state_dict(out)
    assert D.detect({k: tuple(v.shape) for k, v in got.items()}, "g", read_metadata(out)).unet == guided.unet


def test_guided_student_sees_negative_prompt_texts_at_guided_scales(trained, tmp_path, monkeypatch):
    runs, path, splits = trained
    guided = replace(TINY, unet=replace(TINY.unet, adm_in_channels=32, guidance_embed=True))
    seen, real_loss = [], B.diffusion_loss

    def recording_loss(model, batch, alphas, teacher=None, empty=None):
        seen.append(batch)
        return real_loss(model, batch, alphas, teacher=teacher, empty=empty)

    monkeypatch.setattr(B, "diffusion_loss", recording_loss)
    monkeypatch.setattr(B, "GUIDANCE_NEGATIVE", 1.0)  # every caption replaced
    B.run(None, tmp_path / "n", 30, 2, 4, 4, None, cfg=guided, teacher=path, progress=False, save_every=3,
          sample_every=0, splits=splits)
    teacher = StableDiffusion(TINY).eval()
    teacher.load_state_dict({k: v.float() for k, v in read_state_dict(path).items()}, strict=False)
    with torch.no_grad():
        bank = teacher.cond_stage_model(B.negative_prompt_ids(splits[0].captions, B.NEGATIVE_BANK,
                                                              TINY.text_encoders[0])).hidden
    lo, hi = GUIDANCE_RANGE
    for _, context, _, _, scales in seen:
        assert ((scales >= lo) & (scales <= hi)).all()
        assert all(min((row - b).abs().max() for b in bank) < 1e-4 for row in context)
