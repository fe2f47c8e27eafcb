"""Qwen-Image-Edit-2509/2511 ("Edit Plus") end to end against diffusers' QwenImageEditPlusPipeline on
tiny random weights (the single-image edit test's models: network, VAE, Qwen2.5-VL with a vision
tower, a tokenizer with the vision tokens): QwenImageEditPlusPipeline folders load as Edit Plus (2511's
with its transformer's zero_cond_t), and txt2img with one and two references, at CFG 1 and true CFG 4,
equals the pipeline step by step (each reference fitted to ~1 MP for the VAE and ~384x384 for the vision
tower, the prompts labelled "Picture N:", 2511's references modulated at time 0) and in pixels.
The oracle's text encoder is handed the image-token types (see test_qwen_edit_prompts)."""
from __future__ import annotations

import numpy as np
import pytest
from diffusers import FlowMatchEulerDiscreteScheduler, QwenImageEditPlusPipeline, QwenImageTransformer2DModel
from PIL import Image

from dit_fixtures import spy_euler
from opensd.errors import InvalidArgument
from opensd.pipeline.pipeline import load
from qwen_image_fixtures import SCHEDULER, qwen_image_transformer, qwen_image_vae
from reference import assert_close_scaled
from test_qwen_edit_pipeline import (SEED, SIZE, STEPS, edit, feed_image_token_types, run_ref,  # noqa: F401
                                     save_edit_folder, vl_parts)

PROMPT, NEGATIVE = "put the horse in the second picture", "blurry"


@pytest.fixture(scope="module")
def plus(tmp_path_factory):
    """{"2509": (ours, diffusers'), "2511": (...)}: the same weights, 2511's transformer with zero_cond_t."""
    base = tmp_path_factory.mktemp("qwen_edit_plus")
    hf_tok, processor, te = vl_parts(base / "tokenizer")
    vae, plain = qwen_image_vae(6, False), qwen_image_transformer(5, ctx=128)
    out = {}
    for variant, zero in (("2509", False), ("2511", True)):
        net = QwenImageTransformer2DModel.from_config(plain.config, zero_cond_t=zero)
        net.load_state_dict(plain.state_dict())
        net.eval()
        save_edit_folder(base / variant, "QwenImageEditPlusPipeline", {"transformer": net, "vae": vae, "text_encoder": te})
        ours = load(base / variant, precision="fp32", device="cpu")
        ref = QwenImageEditPlusPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER), vae=vae,
                                        text_encoder=te, tokenizer=hf_tok, processor=processor, transformer=net)
        ref.set_progress_bar_config(disable=True)
        out[variant] = ours, ref
    feed_image_token_types(te, hf_tok)
    return out


def _images(n):
    rng = np.random.default_rng(0)
    sizes = [(90, 60), (60, 84)]
    return [Image.fromarray(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8)).resize(sizes[i], Image.BICUBIC)
            for i in range(n)]


def test_folders_are_edit_plus(plus):
    for variant, zero in (("2509", False), ("2511", True)):
        cfg = plus[variant][0].config.qwen_image
        assert (cfg.edit_plus, cfg.zero_cond_t) == (True, zero)


@pytest.mark.parametrize("variant, count, cfg", [("2509", 1, 1.0), ("2509", 2, 4.0), ("2509", 2, 1.0),
                                                 ("2511", 1, 4.0), ("2511", 2, 1.0)])
def test_edit_plus_equals_the_pipeline_step_by_step(plus, monkeypatch, variant, count, cfg):
    ours, ref = plus[variant]
    seen = spy_euler(monkeypatch)
    negative = NEGATIVE if cfg > 1 else None
    images = _images(count)
    (got,) = ours.txt2img(PROMPT, negative or "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=cfg,
                          references=images)
    want, steps = run_ref(ref, ours, images, negative, cfg, PROMPT)
    assert len(seen["steps"]) == len(steps) == STEPS
    for mine, expected in zip(seen["steps"], steps):
        assert_close_scaled(mine, expected, rel=1e-4)
    ours_8bit, ref_8bit = np.asarray(got).astype(int), np.round(want * 255).astype(int)
    assert np.abs(ours_8bit - ref_8bit).max() <= 1 and ref_8bit.std() > 1
    assert ours._reference_images == []


def test_the_second_reference_and_zero_cond_t_are_seen(plus):
    args = dict(steps=2, seed=SEED, width=SIZE, height=SIZE, cfg=1.0)
    one, two = _images(1), _images(2)
    a = np.asarray(plus["2509"][0].txt2img(PROMPT, "", references=one, **args)[0]).astype(int)
    b = np.asarray(plus["2509"][0].txt2img(PROMPT, "", references=two, **args)[0]).astype(int)
    c = np.asarray(plus["2511"][0].txt2img(PROMPT, "", references=two, **args)[0]).astype(int)
    assert np.abs(a - b).max() > 3 and np.abs(b - c).max() > 3



def test_a_thin_reference_is_the_vision_encoders_one_line(plus):
    """Hostile input: a 20000x16 reference fitted to ~384x384 had a 0-pixel side (diffusers' rounding),
    and PIL's resize failed with 'height and width must be > 0'."""
    with pytest.raises(InvalidArgument, match=r"too narrow for the vision encoder \(aspect ratio over 200\)"):
        plus["2509"][0].txt2img(PROMPT, "", references=[Image.new("RGB", (20000, 16))], steps=1, seed=SEED,
                                width=SIZE, height=SIZE, cfg=1.0)

def test_cli_takes_several_reference_images_for_edit_plus_only(plus, edit, tmp_path, capsys):
    """`opensd generate --reference-image A --reference-image B`: an Edit-2509 folder edits with both
    (as the pipeline); Qwen-Image-Edit refuses the second, naming the models that take several."""
    from opensd.cli import main
    from split_faces import cli_image
    ours, _ = plus["2509"]
    files = []
    for i, image in enumerate(_images(2)):
        files += ["--reference-image", str(tmp_path / f"ref{i}.png")]
        image.save(tmp_path / f"ref{i}.png")
    got = cli_image(ours.loaded.path, tmp_path / "plus.png", PROMPT, 2, SEED, SIZE, "--cfg", "1", *files)
    want = ours.txt2img(PROMPT, "", references=[Image.open(tmp_path / f"ref{i}.png") for i in range(2)], steps=2,
                        seed=SEED, width=SIZE, height=SIZE, cfg=1.0, sampler="euler", scheduler="simple")[0]
    assert np.abs(np.asarray(got).astype(int) - np.asarray(want).astype(int)).max() <= 1
    single = edit[0].loaded.path
    assert main(["generate", PROMPT, "-m", str(single), "--steps", "1", "--width", str(SIZE), "--height", str(SIZE),
                 "--precision", "fp32", "--device", "cpu", "-o", str(tmp_path / "single.png"), *files]) != 0
    assert "Qwen-Image-Edit takes one reference image (2 given); Edit-2509/2511" in capsys.readouterr().err
