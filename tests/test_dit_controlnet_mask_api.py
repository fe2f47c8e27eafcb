"""The masks of the DiT ControlNets that inpaint (Z-Image Fun ControlNet 2.x, DiffSynth's Qwen-Image
blockwise Inpaint file) through the A1111 API's units, on tiny random models: a unit's `mask` equals the
CLI's / a ControlSpec's mask=; an img2img inpainting request's mask (and, for Z-Image Fun, its init
image as the image to inpaint) reaches a unit without one, equal to the CLI given them by hand; a mask of
another size is fitted as the CLI fits it; a mask for a file without mask channels is refused as the CLI
refuses it (adapters/dit_control_mask.py, server/a1111_controlnet.py)."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from server_live import BASE

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.cli import main
from opensd.server.app import create_app
from opensd.server.settings import Settings
from test_qwen_image_blockwise import _blockwise
from test_z_image_controlnet_pipeline import _controlnet, _mask
from test_z_image_faces import PROMPT, SEED, SIZE, STEPS, _pixels
import test_qwen_image_controlnet_faces as Q
import test_z_image_controlnet_faces as Z

INPAINT = "qwen_image_inpaint_diffsynth_controlnet.safetensors"
CANNY = "qwen_image_canny_diffsynth_controlnet.safetensors"
Z_OLD = "Z-Image-Turbo-Fun-Controlnet-Union.safetensors"  # 1.0: no mask channels
z_env, q_env = Z.env, Q.env


@pytest.fixture(scope="module")
def qwen(q_env):
    models, pipe, tmp, hint = q_env
    for name, net in ((INPAINT, _blockwise(extra=4, seed=4)), (CANNY, _blockwise())):
        save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()}, models / "controlnet" / name)
    return models, pipe, tmp, hint


@pytest.fixture(scope="module")
def z_image(z_env):
    models, pipe, tmp, hint = z_env
    _controlnet("1.0", models / "ControlNet" / Z_OLD)
    return z_env


def _b64(image_or_path) -> str:
    if not isinstance(image_or_path, Image.Image):
        return base64.b64encode(open(image_or_path, "rb").read()).decode()
    buf = io.BytesIO()
    image_or_path.save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _post(models, network_file, tmp, request, mode="txt2img"):
    """(status, answer) of an A1111 request on the network diffusion_models/`network_file`."""
    import shutil
    (models / "checkpoints").mkdir(exist_ok=True)
    if not (models / "checkpoints" / network_file).exists():
        shutil.copyfile(models / "diffusion_models" / network_file, models / "checkpoints" / network_file)
    request = {"prompt": PROMPT, "steps": STEPS, "seed": SEED, "cfg_scale": 1, "width": SIZE, "height": SIZE,
               "sampler_name": "Euler", "scheduler": "Simple",
               "override_settings": {"sd_model_checkpoint": network_file}, **request}
    with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp / "out")), base_url=BASE) as client:
        r = client.post(f"/sdapi/v1/{mode}", json=request)
    return r.status_code, r.json()


def _image(answer) -> np.ndarray:
    return _pixels(Image.open(io.BytesIO(base64.b64decode(answer["images"][0]))))


def _unit(name, hint, **more) -> dict:
    return {"enabled": True, "model": name.removesuffix(".safetensors"), "module": "none", "weight": 0.8,
            "image": _b64(hint), "resize_mode": "Just Resize", **more}


def _txt2img(pipe, spec) -> np.ndarray:
    return _pixels(pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0,
                                sampler="euler", scheduler="simple", controls=[spec])[0])


def test_z_image_unit_mask_equals_the_controlspecs(z_image, tmp_path):
    models, pipe, _, hint = z_image
    request = {"alwayson_scripts": {"controlnet": {"args": [_unit(Z.NAME, hint, mask=_b64(_mask()))]}}}
    status, answer = _post(models, Z.UNET, tmp_path, request)
    assert status == 200, answer
    assert not any("mask" in f for f in json.loads(answer["info"]).get("unsupported_fields", []))  # it is used
    net = load_controlnet(models / "ControlNet" / Z.NAME, pipe)
    want = _txt2img(pipe, ControlSpec(net, Image.open(hint), weight=0.8, mask=_mask()))
    assert np.abs(_image(answer) - want).max() <= 1
    assert np.abs(want - _txt2img(pipe, ControlSpec(net, Image.open(hint), weight=0.8))).max() > 8


def test_z_image_mask_of_another_size_is_fitted_as_the_cli_fits_it(z_image, tmp_path):
    models, pipe, _, hint = z_image
    big = _mask().resize((2 * SIZE, 2 * SIZE), Image.NEAREST)
    big.save(tmp_path / "big.png")
    request = {"alwayson_scripts": {"controlnet": {"args": [_unit(Z.NAME, hint, mask=_b64(big))]}}}
    status, answer = _post(models, Z.UNET, tmp_path, request)
    assert status == 200, answer
    out = tmp_path / "z.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / Z.UNET), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--precision", "fp32", "--device", "cpu", "-o", str(out), "--control",
                 f"{models / 'ControlNet' / Z.NAME},{hint},weight=0.8,mask={tmp_path / 'big.png'}"]) == 0
    assert np.abs(_image(answer) - _pixels(Image.open(out))).max() <= 1


def _inpainted(env, unet, folder, name, tmp_path, full_res: bool):
    """(the A1111 img2img inpainting answer with a unit giving no mask, cli(extra --control options)): the
    Inpaint tab's case, and the CLI's inpainting with the same settings."""
    models, _, _, hint = env
    init = Image.fromarray(np.random.default_rng(8).integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8))
    init.save(tmp_path / "init.png")
    _mask().save(tmp_path / "mask.png")
    request = {"init_images": [_b64(init)], "mask": _b64(_mask()), "mask_blur": 0, "denoising_strength": 0.75,
               "inpainting_fill": 1, "inpaint_full_res": full_res, "inpaint_full_res_padding": 4,
               "alwayson_scripts": {"controlnet": {"args": [_unit(name, hint)]}}}
    status, answer = _post(models, unet, tmp_path, request, mode="img2img")
    assert status == 200, answer

    def cli(control_extra: str):
        out = tmp_path / "cli.png"
        assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / unet), "--steps", str(STEPS),
                     "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                     "--scheduler", "simple", "--cfg", "1", "--precision", "fp32", "--device", "cpu", "-o", str(out),
                     "--init-image", str(tmp_path / "init.png"), "--mask", str(tmp_path / "mask.png"),
                     "--mask-blur", "0", "--strength", "0.75", "--inpainting-fill", "original", "--inpaint-padding", "4",
                     *(["--inpaint-full-res"] if full_res else []), "--control",
                     f"{models / folder / name},{hint},weight=0.8{control_extra}"]) == 0
        return _pixels(Image.open(out))
    return _image(answer), cli


@pytest.mark.parametrize("full_res", [False, True])
def test_z_image_inpaint_request_mask_and_init_image_reach_the_unit(z_image, tmp_path, full_res):
    """The unit gives no mask: the API and the CLI equal the CLI given mask= and inpaint_image= by hand."""
    answer, cli = _inpainted(z_image, Z.UNET, "ControlNet", Z.NAME, tmp_path, full_res)
    by_hand = cli(f",mask={tmp_path / 'mask.png'},inpaint_image={tmp_path / 'init.png'}")
    assert np.abs(answer - by_hand).max() <= 1
    assert np.abs(cli("") - by_hand).max() <= 1  # the CLI's inpainting follows the same rule
    grey = cli(f",mask={tmp_path / 'mask.png'}")  # the init image is seen: grey to inpaint differs
    assert np.abs(grey - by_hand).max() > 2


def test_qwen_inpaint_request_mask_reaches_the_blockwise_inpaint_unit(qwen, tmp_path):
    answer, cli = _inpainted(qwen, Q.UNET, "controlnet", INPAINT, tmp_path, False)
    by_hand = cli(f",mask={tmp_path / 'mask.png'}")
    assert np.abs(answer - by_hand).max() <= 1
    assert np.abs(cli("") - by_hand).max() <= 1
    Image.new("L", (SIZE, SIZE), 0).save(tmp_path / "none.png")  # nothing to repaint: the keep channel all ones
    assert np.abs(cli(f",mask={tmp_path / 'none.png'}") - by_hand).max() > 0


def _refused(env, unet, folder, name, tmp_path, capsys) -> str:
    """A unit's mask for the file `name` is a 422 naming the field; the CLI refuses mask= for it too
    (exit status 2): the CLI's message."""
    models, _, _, hint = env
    request = {"alwayson_scripts": {"controlnet": {"args": [_unit(name, hint, mask=_b64(_mask()))]}}}
    status, answer = _post(models, unet, tmp_path, request)
    assert status == 422 and "args[0].mask" in answer["detail"] and "takes no mask" in answer["detail"], answer
    capsys.readouterr()
    assert main(["generate", PROMPT, "--steps", "1", "--width", str(SIZE), "--height", str(SIZE), "--precision", "fp32",
                 "--device", "cpu", "-m", str(models / "diffusion_models" / unet), "-o", str(tmp_path / "x.png"),
                 "--control", f"{models / folder / name},{hint},mask={hint}"]) == 2
    return capsys.readouterr().err


def test_z_image_1_0_mask_is_refused_as_the_cli_refuses_it(z_image, tmp_path, capsys):
    assert "no inpainting channels" in _refused(z_image, Z.UNET, "ControlNet", Z_OLD, tmp_path, capsys)


def test_qwen_blockwise_inpaint_unit_mask_equals_the_cli(qwen, tmp_path):
    models, pipe, _, hint = qwen
    _mask().save(tmp_path / "mask.png")
    request = {"alwayson_scripts": {"controlnet": {"args": [_unit(INPAINT, hint, mask=_b64(_mask()))]}}}
    status, answer = _post(models, Q.UNET, tmp_path, request)
    assert status == 200, answer
    out = tmp_path / "q.png"
    assert main(["generate", PROMPT, "-m", str(models / "diffusion_models" / Q.UNET), "--steps", str(STEPS),
                 "--seed", str(SEED), "--width", str(SIZE), "--height", str(SIZE), "--sampler", "euler",
                 "--cfg", "1", "--precision", "fp32", "--device", "cpu", "-o", str(out),
                 "--control", f"{models / 'controlnet' / INPAINT},{hint},weight=0.8,mask={tmp_path / 'mask.png'}"]) == 0
    net = load_controlnet(models / "controlnet" / INPAINT, pipe)
    want = _txt2img(pipe, ControlSpec(net, Image.open(hint), weight=0.8, mask=_mask()))
    assert np.abs(_image(answer) - want).max() <= 1
    assert np.abs(_pixels(Image.open(out)) - want).max() <= 1
    assert np.abs(want - _txt2img(pipe, ControlSpec(net, Image.open(hint), weight=0.8))).max() > 2  # keep channel seen


@pytest.mark.parametrize("name", [CANNY, Q.NAME])
def test_qwen_mask_on_a_file_without_mask_channels_is_refused(qwen, tmp_path, name, capsys):
    assert "takes no mask" in _refused(qwen, Q.UNET, "controlnet", name, tmp_path, capsys)


def test_the_model_list_says_which_controlnets_take_a_mask(z_image, qwen, tmp_path):
    """/opensd/v1/models' takes_mask: what the web UI's unit note reads."""
    for models, want in ((z_image[0], {Z.NAME: True, Z_OLD: False}),
                         (qwen[0], {INPAINT: True, CANNY: False, Q.NAME: False})):
        with TestClient(create_app(Settings(models_dir=models, outputs_dir=tmp_path / "out")), base_url=BASE) as client:
            listed = {m["name"]: m["takes_mask"] for m in client.get("/opensd/v1/models").json()["controlnet"]}
            assert client.get("/opensd/v1/models/controlnet/info", params={"name": INPAINT if qwen[0] == models
                                                                           else Z.NAME}).json()["takes_mask"]
        assert {k: listed[k] for k in want} == want
