"""The SDXL refiner in one run (A1111's refiner_checkpoint / refiner_switch_at): a tiny SDXL-shaped
main model and a tiny refiner-shaped model (one OpenCLIP-G-like encoder, size and aesthetic-score
conditioning) built here; the switch happens where A1111's does, the first part of the trajectory is
the main model's own, the rest the refiner's with its own conditioning, and the infotext records
it so --from reproduces it."""
from dataclasses import replace

import numpy as np
import pytest
import torch

from opensd.cli import main
from opensd.errors import InvalidArgument
from opensd.models import config as C
from opensd.models.unet import timestep_embedding
from opensd.pipeline.infotext import parse_infotext, read_infotext
from opensd.pipeline.infotext_params import image_infotext
from opensd.pipeline.pipeline import load
from opensd.pipeline.refiner import Refiner, completed
from opensd.sampling.schedules import make_sigmas
from opensd.library.hashes import model_hash
from opensd.library.synthetic import write_random_checkpoint
from workflow_models import TINY_SDXL

# The SDXL refiner's layout at toy size: only the bigG-like encoder; y = pooled + 5 x 256 (size, crop, score)
TINY_REFINER = C.ModelConfig(
    family="sdxl_refiner",
    unet=replace(TINY_SDXL.unet, context_dim=64, adm_in_channels=64 + 5 * 256),
    vae=TINY_SDXL.vae, text_encoders=(TINY_SDXL.text_encoders[1],), resolution=64)
KW = dict(steps=10, seed=3, width=64, height=64, cfg=5.0)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("refiner")
    ckpts = root / "models" / "Stable-diffusion"
    ckpts.mkdir(parents=True)
    write_random_checkpoint(ckpts / "base.safetensors", TINY_SDXL, dtype=torch.float32)
    write_random_checkpoint(ckpts / "ref.safetensors", TINY_REFINER, seed=1, dtype=torch.float32)
    base = load(ckpts / "base.safetensors", device="cpu", precision="fp32")
    ref = load(ckpts / "ref.safetensors", device="cpu", precision="fp32")
    return root, base, ref


class Calls:
    """Counts each UNet's forward calls and keeps the refiner's y (its conditioning vector)."""

    def __init__(self, *pipes):
        self.counts = [0] * len(pipes)
        self.ys = []
        self.handles = [p.model.unet.register_forward_pre_hook(self._hook(i), with_kwargs=False)
                        for i, p in enumerate(pipes)]

    def _hook(self, i):
        def hook(module, args):
            self.counts[i] += 1
            if i == 1:
                self.ys.append(args[3].clone())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def run(pipe, refiner=None, **kw):
    seen = []
    pipe.on_latents = lambda d: seen.append(d.clone())
    try:
        images = pipe.txt2img("a lighthouse at dusk", "blurry", refiner=refiner, **{**KW, **kw})
    finally:
        pipe.on_latents = None
    return images[0], seen


def test_switch_at_one_is_no_refiner(models):
    _, base, ref = models
    plain, _ = run(base)
    calls = Calls(base, ref)
    try:
        same, _ = run(base, Refiner(ref, 1.0))
    finally:
        calls.close()
    assert np.array_equal(np.asarray(plain), np.asarray(same))
    assert calls.counts[1] == 0 and "refiner" not in same.info
    assert "Refiner" not in image_infotext(base, same)


def test_the_running_checkpoint_as_its_own_refiner_is_no_refiner(models):
    root, base, _ = models
    again = load(root / "models" / "Stable-diffusion" / "base.safetensors", device="cpu", precision="fp32")
    plain, _ = run(base)
    for same in (base, again):  # A1111 compares checkpoints: no switch, no "Refiner" in the infotext
        image, _ = run(base, Refiner(same, 0.5))
        assert np.array_equal(np.asarray(plain), np.asarray(image)) and "refiner" not in image.info


def test_first_80_percent_is_the_main_models_trajectory_then_the_refiner(models):
    _, base, ref = models
    _, alone = run(base)
    calls = Calls(base, ref)
    try:
        image, refined = run(base, Refiner(ref, 0.8))
    finally:
        calls.close()
    # normal schedule, 10 steps: timesteps 999, 888, ..., 111, 0; A1111 switches at timestep <= 199
    for i in range(8):
        torch.testing.assert_close(refined[i], alone[i], rtol=0, atol=0)
    for i in (8, 9):
        assert not torch.allclose(refined[i], alone[i])
    assert calls.counts == [8, 2]  # one batched (prompt + negative) UNet call per Euler step
    assert image.info["refiner"].pipe is ref


def test_the_switch_is_a_noise_level_as_in_a1111(models):
    _, base, ref = models
    sigmas = make_sigmas("karras", base.schedule, 12)
    expected = next(i for i, s in enumerate(sigmas[:-1]) if completed(base.model_sampling(), s) >= 0.6)
    nearest = int(torch.argmin((base.schedule.sigmas - sigmas[expected]).abs()))
    assert 999 - nearest >= 600 and 999 - int(torch.argmin((base.schedule.sigmas - sigmas[expected - 1]).abs())) < 600
    calls = Calls(base, ref)
    try:
        run(base, Refiner(ref, 0.6), steps=12, scheduler="karras")
    finally:
        calls.close()
    assert calls.counts == [expected, 12 - expected]


@pytest.mark.parametrize("sampler, steps, main", [("Euler", 12, 8), ("Heun", 6, 8)])
def test_switching_by_sampling_steps(models, sampler, steps, main):
    """A1111's refiner_switch_by_sample_steps: the evaluations before it / the pass's expected ones
    (twice the steps for a second-order sampler) reach the switch point; by noise level, Karras at 0.6
    switches elsewhere. The infotext records the setting, and --from's reading gives it back."""
    _, base, ref = models
    calls = Calls(base, ref)
    try:
        image, _ = run(base, Refiner(ref, 0.6), steps=steps, scheduler="karras", sampler=sampler,
                       refiner_switch_by_sample_steps=True)
    finally:
        calls.close()
    total = steps * (2 if sampler == "Heun" else 1)
    assert calls.counts == [main, total - main - (1 if sampler == "Heun" else 0)]  # ceil(0.6 * total) on the main
    text = image_infotext(base, image)
    assert parse_infotext(text)[2]["Refiner switch by sampling steps"] == "True"
    from opensd.pipeline.infotext_params import recorded
    assert recorded(*parse_infotext(text)).settings["refiner_switch_by_sample_steps"] is True


def test_the_refiner_encodes_the_prompts_its_own_way(models):
    """OpenCLIP-G only (context width 64 here), and y = pooled text + embeddings of the original
    size, crop (0, 0) and the aesthetic score: 6 for the prompt, 2.5 for the negative (A1111's)."""
    _, base, ref = models
    calls = Calls(base, ref)
    try:
        run(base, Refiner(ref, 0.8), width=64, height=48)
    finally:
        calls.close()
    y = calls.ys[0]  # rows: [negative, prompt]
    assert y.shape == (2, 64 + 5 * 256)
    for row, score in ((0, 2.5), (1, 6.0)):
        want = timestep_embedding(torch.tensor([48.0, 64.0, 0.0, 0.0, score]), 256).reshape(-1)
        torch.testing.assert_close(y[row, 64:], want)


def test_img2img_switches_later_or_refines_throughout(models):
    _, base, ref = models
    init, _ = run(base)
    # A1111 runs int(steps x strength) + 1 steps: 0.5 -> timesteps 555, 444, 333, 222 on the main model,
    # 111 and 0 on the refiner; 0.15 -> 111 and 0, the refiner alone
    for strength, on_main in ((0.5, 4), (0.15, 0)):
        calls = Calls(base, ref)
        try:
            base.img2img(init, "a lighthouse", "", strength=strength, refiner=Refiner(ref, 0.8), **KW)
        finally:
            calls.close()
        assert calls.counts[0] == on_main and calls.counts[1] > 0


@pytest.mark.parametrize("passes, first, second", [("second pass", False, True), ("first pass", True, False),
                                                   ("both passes", True, True)])
def test_hires_fix_refines_the_passes_a1111s_setting_names(models, passes, first, second):
    from opensd.pipeline.params import Hires

    _, base, ref = models
    calls = Calls(base, ref)
    try:
        image, _ = run(base, Refiner(ref, 0.8, passes), steps=5, hires=Hires(scale=1.5, steps=5, denoise=0.9))
    finally:
        calls.close()
    # first pass: 5 steps, timesteps 999..0, the last step's at 0 refines; hires: 5 x 0.9 -> 4 steps
    assert calls.counts[1] == first * 1 + second * 1
    text = image_infotext(base, image)
    assert ("Hires refiner: " + passes in text) == (passes != "second pass")


def test_refusals_name_the_setting(models):
    _, base, ref = models
    for bad in (1.5, -0.1, "x", True):
        with pytest.raises(InvalidArgument, match="^refiner_switch_at:"):
            run(base, Refiner(ref, bad))
    with pytest.raises(InvalidArgument, match="^hires_fix_refiner_pass:"):
        run(base, Refiner(ref, 0.8, "third pass"))
    sd1 = load(write_random_checkpoint(models[0] / "sd1ish.safetensors", replace(
        TINY_SDXL, vae=replace(TINY_SDXL.vae, ch_mult=(1, 2)))), device="cpu", precision="fp32")
    with pytest.raises(InvalidArgument, match="^refiner: .*latents"):
        run(base, Refiner(sd1, 0.8))


def test_infotext_and_from_reproduce_a_refined_image(models, tmp_path, capsys):
    root, _, _ = models
    ckpts = root / "models" / "Stable-diffusion"
    out = tmp_path / "a.png"
    args = ["--models-dir", str(root / "models"), "--steps", "6", "--seed", "4", "--width", "64", "--height", "64",
            "--cfg", "5", "--precision", "fp32", "--device", "cpu"]
    assert main(["generate", "a red kite", "-m", "base", "--refiner", "ref", "--refiner-switch", "0.7", *args,
                 "-o", str(out)]) == 0
    _, _, params = parse_infotext(read_infotext(out))
    assert params["Refiner"] == f"ref [{model_hash(ckpts / 'ref.safetensors')}]"
    assert params["Refiner switch at"] == "0.7"
    again = tmp_path / "b.png"
    capsys.readouterr()
    assert main(["generate", "--from", str(out), "--models-dir", str(root / "models"), "-m", "base",
                 "--precision", "fp32", "--device", "cpu", "-o", str(again)]) == 0
    assert "differs" not in capsys.readouterr().err
    assert np.array_equal(np.asarray(read(out)), np.asarray(read(again)))
    without = tmp_path / "c.png"
    assert main(["generate", "a red kite", "-m", "base", *args, "-o", str(without)]) == 0
    assert not np.array_equal(np.asarray(read(out)), np.asarray(read(without)))


def read(path):
    from PIL import Image
    with Image.open(path) as im:
        return im.convert("RGB").copy()


def test_cli_refiner_flags_need_a_refiner(models, tmp_path):
    root, _, _ = models
    with pytest.raises(SystemExit):
        main(["generate", "x", "--refiner-switch", "2x"])
    assert main(["generate", "x", "--refiner-switch", "0.5", "-o", str(tmp_path / "x.png")]) == 2
    assert main(["generate", "x", "--models-dir", str(root / "models"), "-m", "base", "--refiner", "nope",
                 "-o", str(tmp_path / "y.png")]) == 2


def test_cli_xyz_refiner_axes_are_the_single_generations(models, tmp_path, capsys):
    root, _, _ = models
    args = ["--models-dir", str(root / "models"), "-m", "base", "--steps", "5", "--seed", "4", "--width", "64",
            "--height", "64", "--cfg", "5", "--precision", "fp32", "--device", "cpu"]

    def gen(name, *extra):
        assert main(["generate", "a red kite", *args, *extra, "-o", str(tmp_path / f"{name}.png")]) == 0
        return tmp_path / name

    def same(a, b):
        return np.array_equal(np.asarray(read(a)), np.asarray(read(b)))

    grid = gen("g", "--refiner", "ref", "--xyz", "refiner switch at:1.0,0.5")  # g-0 the grid, g-1 and g-2 the cells
    assert same(f"{grid}-1.png", f"{gen('s1', '--refiner', 'ref', '--refiner-switch', '1.0')}.png")
    assert same(f"{grid}-2.png", f"{gen('s5', '--refiner', 'ref', '--refiner-switch', '0.5')}.png")
    plain = f"{gen('plain')}.png"
    assert same(f"{grid}-1.png", plain) and not same(f"{grid}-2.png", plain)
    picked = gen("c", "--xyz", "refiner checkpoint:None,ref")
    assert same(f"{picked}-1.png", plain)
    assert same(f"{picked}-2.png", f"{gen('s8', '--refiner', 'ref')}.png")
    capsys.readouterr()
    assert main(["generate", "a red kite", *args, "--xyz", "refiner checkpoint:ref,nope",
                 "-o", str(tmp_path / "x.png")]) == 2
    assert "Refiner checkpoint" in capsys.readouterr().err
