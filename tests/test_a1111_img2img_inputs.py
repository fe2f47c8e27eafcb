"""A1111 img2img inputs beyond one init image and a mask. Several `init_images`: batch item k starts
from init image k (A1111's batch of them), the batch shrinks to their count, each batch count
repeats them with the next seeds, and more images than batch_size is refused as A1111 refuses it.
`latent_mask`: what is repainted (the latent blend) while `mask` decides what is laid back."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import requests
from PIL import Image
from server_live import LiveServer

from opensd.pipeline.infotext import parse_infotext
from opensd.server.settings import Settings

BODY = {"prompt": "red heart, noto emoji style", "steps": 3, "width": 64, "height": 64, "seed": 40,
        "sampler_name": "Euler", "cfg_scale": 5, "denoising_strength": 0.6}


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    with LiveServer(Settings(outputs_dir=tmp_path_factory.mktemp("inits") / "out")) as server:
        yield server


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def solid(colour) -> str:
    return b64(Image.new("RGB", (64, 64), colour))


def img2img(live, **kw):
    return requests.post(f"{live.url}/sdapi/v1/img2img", json={**BODY, **kw}, timeout=120)


def ok(r) -> tuple[list[np.ndarray], dict]:
    assert r.status_code == 200, r.text
    body = r.json()
    images = [np.asarray(Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB")) for b in body["images"]]
    return images, json.loads(body["info"])


RED, BLUE = solid((220, 30, 30)), solid((30, 30, 220))


def test_each_batch_item_starts_from_its_own_init_image(live):
    images, info = ok(img2img(live, init_images=[RED, BLUE], batch_size=2, n_iter=2))
    assert len(images) == 4 and info["all_seeds"] == [40, 41, 42, 43] and info["batch_size"] == 2
    assert not np.array_equal(images[0], images[1])
    # image k: init image k % 2 with seed 40 + k, exactly as that image alone makes it
    for k, init in enumerate((RED, BLUE, RED, BLUE)):
        alone, _ = ok(img2img(live, init_images=[init], seed=40 + k))
        assert np.array_equal(images[k], alone[0]), k
    assert [parse_infotext(t)[2]["Seed"] for t in info["infotexts"]] == ["40", "41", "42", "43"]
    assert "init_images[1:]" not in info["unsupported_fields"] and info["opensd_warnings"] == []


def test_the_batch_shrinks_to_the_init_images(live):
    images, info = ok(img2img(live, init_images=[RED, BLUE], batch_size=4))
    assert len(images) == 2 and info["batch_size"] == 2 and info["all_seeds"] == [40, 41]
    one, one_info = ok(img2img(live, init_images=[RED], batch_size=3))  # one image: the whole batch from it
    assert len(one) == 3 and one_info["batch_size"] == 3


def test_each_init_image_is_laid_back_outside_the_mask(live):
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    images, info = ok(img2img(live, init_images=[RED, BLUE], batch_size=2, mask=b64(mask), mask_blur=0,
                              inpainting_fill=1, inpaint_full_res=False))
    assert images[0][2, 2].tolist() == [220, 30, 30] and images[1][2, 2].tolist() == [30, 30, 220]
    assert parse_infotext(info["infotexts"][1])[2]["Denoising strength"] == "0.6"


def test_more_init_images_than_the_batch_or_a_bad_one_is_refused(live):
    r = img2img(live, init_images=[RED, BLUE, RED], batch_size=2)
    assert r.status_code == 422 and "init_images: bad number of images passed: 3; expecting 2 or less" in r.text
    r = img2img(live, init_images=[RED, "bm90IGFuIGltYWdl"], batch_size=2)
    assert r.status_code == 422 and "init_images[1]" in r.text


def halves() -> tuple[str, str]:
    """(a mask over the whole image, one over its left half)"""
    left = Image.new("L", (64, 64), 0)
    left.paste(255, (0, 0, 32, 64))
    return b64(Image.new("L", (64, 64), 255)), b64(left)


INPAINT = {"mask_blur": 0, "inpainting_fill": 1, "inpaint_full_res": False, "denoising_strength": 0.8}


def test_latent_mask_decides_the_repaint_and_mask_the_composite(live):
    whole, left = halves()
    init = [RED]
    both, info = ok(img2img(live, init_images=init, mask=whole, latent_mask=left, **INPAINT))
    # the same sampling (the left half repainted), laid back over the left half only
    half, _ = ok(img2img(live, init_images=init, mask=left, **INPAINT))
    free, _ = ok(img2img(live, init_images=init, mask=whole, **INPAINT))
    assert np.array_equal(both[0][:, :32], half[0][:, :32])
    assert (half[0][:, 32:] == [220, 30, 30]).all()  # laid back: the init image
    assert not np.array_equal(both[0][:, 32:], half[0][:, 32:])  # not laid back: the decoded latents kept
    assert not np.array_equal(both[0][:, 32:], free[0][:, 32:])  # kept at the init image's, not repainted
    assert "latent_mask" not in info["unsupported_fields"] and info["opensd_warnings"] == []


def test_latent_mask_without_a_mask_is_ignored_and_a_bad_one_refused(live):
    whole, left = halves()
    plain, _ = ok(img2img(live, init_images=[RED]))
    alone, info = ok(img2img(live, init_images=[RED], latent_mask=left))
    assert np.array_equal(plain[0], alone[0]) and "latent_mask" in info["unsupported_fields"]
    r = img2img(live, init_images=[RED], mask=whole, latent_mask="bm90IGFuIGltYWdl")
    assert r.status_code == 422 and "latent_mask" in r.text
