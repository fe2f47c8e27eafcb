"""Krita AI Diffusion (Acly/krita-ai-diffusion) against opensd, as its ComfyClient calls a server:

connect: GET /system_stats, a websocket opened and closed (?clientId=), GET /object_info (refused
when a required custom node is missing), GET /api/etn/languages, the model lists it searches in
object_info, GET /api/etn/model_info/{checkpoints,diffusion_models,unet_gguf}?offset&limit=8 (paged
with "_meta"), at least one architecture with every required model; then the websocket again,
POST /api/etn/workflow/subscribe and GET /api/queue.

a job: PUT /api/etn/image/{id} for each input image, POST /prompt {prompt, client_id, prompt_id: its
own uuid} (the answer must echo that id), then on the websocket: "execution_start", "executed" whose
output.images hold {"source": "http", "id"} (each fetched from GET /api/etn/image/{id}) or binary
frames (event 1, format 2 = PNG), until "executing" with node None. The graphs are krita_graphs.py's."""
from __future__ import annotations

import base64
import functools
import io
import json
import struct
import uuid

import numpy as np
import pytest
import torch
from client_replay import WS, app_client
from krita_graphs import (EMITTED_NODES, MODEL_LISTS, REQUIRED_NODES, REQUIRED_NODES_1_38, SD15_REQUIRED, Bounds,
                          find_model, generate, generate_regions, inpaint, options, refine, refine_region,
                          upscale_tiled)
from PIL import Image
from reference import randomize_

from opensd.checkpoints.controlnet_files import save_controlnet
from opensd.library.synthetic import TINY
from opensd.models.controlnet import ControlNet, ControlNetConfig

CONTROLNET = "control_v11p_sd15_inpaint.safetensors"
# files Krita looks for before it offers SD 1.5 (placeholders: these tests list them, never load them)
PLACEHOLDERS = ["ControlNet/control_v11f1e_sd15_tile.safetensors", "clip_vision/clip-vision_vit-h.safetensors",
                "ipadapter/ip-adapter_sd15.safetensors", "Lora/Hyper-SD15-8steps-CFG-lora.safetensors",
                "ESRGAN/4x_NMKD-Superscale-SP_178000_G.pth", "upscale_models/OmniSR_X2_DIV2K.safetensors",
                "inpaint/MAT_Places512_G_fp16.safetensors"]


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    root = tmp_path_factory.mktemp("krita")
    with app_client(root) as c:
        models = root / "models"
        for name in PLACEHOLDERS:
            (models / name).parent.mkdir(parents=True, exist_ok=True)
            (models / name).write_bytes(b"placeholder")
        net = randomize_(ControlNet(ControlNetConfig(TINY.unet, hint_downscale=8)), seed=1, std=0.1)
        save_controlnet(net, models / "ControlNet" / CONTROLNET, "small", dtype=torch.float32)
        yield c


def png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def connect(client) -> dict:
    """ComfyClient.connect and discover_models, as far as they ask the server: -> object_info."""
    stats = client.get("/system_stats").json()
    device = stats["devices"][0]
    assert isinstance(device["name"], str) and device["type"] and device["vram_total"] >= 0
    with client.websocket_connect(f"{WS}?clientId=krita-probe"):
        pass
    info = client.get("/object_info").json()
    for required in (REQUIRED_NODES, REQUIRED_NODES_1_38):
        assert not {n for nodes in required.values() for n in nodes if n not in info}
    assert isinstance(client.get("/api/etn/languages").json(), list)
    lists = {kind: options(info, node, name) for kind, (node, name) in MODEL_LISTS.items()}
    checkpoints = {}
    for folder in ("checkpoints", "diffusion_models", "unet_gguf"):
        r = client.get(f"/api/etn/model_info/{folder}?offset=0&limit=8")
        assert r.status_code == 200, r.text
        page = r.json()
        assert page.pop("_meta")["total"] >= len(page)
        checkpoints.update(page)
    sd15 = [name for name, m in checkpoints.items() if m["base_model"] == "sd15" and not m.get("is_inpaint")]
    assert "tiny.safetensors" in sd15
    missing_models = [(kind, ident) for kind, ident, patterns in SD15_REQUIRED
                      if find_model(lists[kind], patterns) is None]
    assert not missing_models
    return info


def run_job(client, graph: dict, images: dict[str, bytes] = None) -> tuple[list[dict], list[Image.Image]]:
    """One job as ComfyClient runs it -> (its websocket messages, the images it receives)."""
    sid = str(uuid.uuid4())
    with client.websocket_connect(f"{WS}?clientId={sid}") as ws:
        assert client.post("/api/etn/workflow/subscribe", json={"client_id": sid}).json() == {"status": "success"}
        assert set(client.get("/api/queue").json()) == {"queue_running", "queue_pending"}
        for image_id, data in (images or {}).items():
            r = client.put(f"/api/etn/image/{image_id}", content=data)
            assert r.status_code in (200, 201), r.text
        job = str(uuid.uuid4())
        r = client.post("/prompt", json={"prompt": graph, "client_id": sid, "prompt_id": job})
        assert r.status_code == 200, r.text
        assert r.json()["prompt_id"] == job
        messages, received = [], []
        while True:
            m = ws.receive()
            if m.get("bytes"):
                event, fmt = struct.unpack_from(">II", m["bytes"])
                if event == 1 and fmt == 2:  # _extract_message_png_image: previews are JPEG (1), skipped
                    received.append(Image.open(io.BytesIO(m["bytes"][8:])))
                continue
            msg = json.loads(m["text"])
            messages.append(msg)
            if msg["type"] == "execution_error":
                raise AssertionError(msg["data"]["exception_message"])
            if msg["type"] == "executed" and msg["data"]["prompt_id"] == job:
                for image in (msg["data"]["output"] or {}).get("images", []):
                    if image.get("source") == "http":
                        r = client.get(f"/api/etn/image/{image['id']}")
                        assert r.status_code == 200
                        received.append(Image.open(io.BytesIO(r.content)))
            if msg["type"] == "executing" and msg["data"]["node"] is None and msg["data"]["prompt_id"] == job:
                break
    assert [m["data"]["prompt_id"] for m in messages if m["type"] == "execution_start"] == [job]
    return messages, received


def test_connects_with_every_required_node_and_model(client):
    info = connect(client)
    assert set(EMITTED_NODES) <= set(info)
    controlnets = options(info, "ControlNetLoader", "control_net_name")
    assert find_model(controlnets, ["control_v11p_sd15_inpaint"]) == CONTROLNET


def test_model_info_of_dit_networks_and_checkpoints(client, tmp_path):
    """SD3 and Flux files (a whole checkpoint, a network alone in diffusion_models/) are named as ComfyUI's
    model detection names them, so Krita offers those architectures; files it cannot read say "unknown"."""
    from dit_fixtures import META_FLUX, META_SD3, flux_parts, load_tiny, sd3_parts, write_single_file, write_split_files

    models = client.app.state.opensd.settings.models_dir
    flux = load_tiny(tmp_path / "flux", "flux", flux_parts("schnell"))
    write_split_files(models, flux.model, "flux1-schnell", META_FLUX, file_prefix="flux_")
    sd3 = load_tiny(tmp_path / "sd3", "sd3", sd3_parts())
    write_single_file(models / "Stable-diffusion" / "sd3_medium.safetensors", sd3.model, META_SD3)
    (models / "Stable-diffusion" / "broken.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    nets = client.get("/api/etn/model_info/diffusion_models").json()
    assert nets["flux1-schnell.safetensors"] == {"base_model": "flux-schnell", "is_inpaint": False}
    ckpts = client.get("/api/etn/model_info/checkpoints?offset=1&limit=2").json()
    assert ckpts.pop("_meta")["total"] == 4 and len(ckpts) == 2
    ckpts = client.get("/api/etn/model_info").json()
    assert ckpts["sd3_medium.safetensors"] == {"base_model": "sd3", "is_inpaint": False}
    assert ckpts["tiny.safetensors"] == {"base_model": "sd15", "is_inpaint": False}
    assert ckpts["broken.safetensors"]["base_model"] == "unknown"
    for name in ("Stable-diffusion/sd3_medium.safetensors", "Stable-diffusion/broken.safetensors"):
        (models / name).unlink()


def test_model_info_of_chroma_and_gguf_networks(client, tmp_path):
    """Chroma is "chroma" to the tooling nodes; a GGUF network in unet_gguf is named from its tensors,
    with "quant" as the tooling nodes give it (a numeric general.file_type reads "gguf")."""
    import gguf
    from dit_fixtures import META_FLUX, chroma_parts, load_tiny, write_split_files
    from test_stored_weights import network, write_gguf

    models = client.app.state.opensd.settings.models_dir
    chroma = load_tiny(tmp_path / "chroma", "chroma", chroma_parts())
    written = write_split_files(models, chroma.model, "chroma-hd", META_FLUX)
    net, metadata = network("flux")
    gguf_path = models / "unet" / "flux-q8.gguf"
    gguf_path.parent.mkdir(exist_ok=True)
    write_gguf(gguf_path, net.state_dict(), gguf.GGMLQuantizationType.Q8_0, metadata, "flux")
    try:
        nets = client.get("/api/etn/model_info/diffusion_models").json()
        assert nets["chroma-hd.safetensors"] == {"base_model": "chroma", "is_inpaint": False}
        ggufs = client.get("/api/etn/model_info/unet_gguf").json()
        assert ggufs == {"flux-q8.gguf": {"base_model": "flux", "is_inpaint": False, "quant": "gguf"}}
    finally:
        for path in (*written.values(), gguf_path):
            path.unlink(missing_ok=True)


def test_generate(client):
    info = connect(client)
    graph = generate(info, "tiny.safetensors", 64, 48, "a red house", "blurry", batch=2)
    _, images = run_job(client, graph)
    assert [(im.size, im.mode) for im in images] == [((64, 48), "RGB")] * 2


def test_generate_with_regions(client):
    info = client.get("/object_info").json()
    mask = np.zeros((48, 64), np.uint8)
    mask[:, :32] = 255  # the left half is the region
    graph = generate_regions(info, "tiny.safetensors", 64, 48, "a landscape", "a meadow", "a red house", "0e610e01",
                             "")
    _, images = run_job(client, graph, {"0e610e01": png(mask)})
    plain = run_job(client, generate(info, "tiny.safetensors", 64, 48, "a landscape", ""))[1]
    assert [im.size for im in images] == [(64, 48)]
    assert not np.array_equal(np.asarray(images[0]), np.asarray(plain[0]))


def test_generate_over_the_websocket(client):
    """Plugin versions before the image cache: results as binary PNG frames (ETN_SendImageWebSocket)."""
    graph = generate(client.get("/object_info").json(), "tiny.safetensors", 64, 64, "a boat", "", websocket=True)
    messages, images = run_job(client, graph)
    assert [im.size for im in images] == [(64, 64)]
    executed = [m["data"]["output"] for m in messages if m["type"] == "executed"]
    assert executed == [{"images": [{"source": "websocket", "content-type": "image/png", "type": "output"}]}]


def test_refine(client):
    info = client.get("/object_info").json()
    rng = np.random.default_rng(3)
    start = rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)
    graph = refine(info, "tiny.safetensors", "0badcafe", "a cat", "ugly")
    _, images = run_job(client, graph, {"0badcafe": png(start)})
    assert [im.size for im in images] == [(80, 64)]
    b64 = base64.b64encode(png(start)).decode()
    _, again = run_job(client, refine(info, "tiny.safetensors", None, "a cat", "ugly", image_b64=b64))
    assert np.array_equal(np.asarray(again[0]), np.asarray(images[0]))  # same image either way in, same result


def test_upscale_with_refine_in_tiles(client):
    """The Upscale tab with "refine": 64 x 48 to 128 x 96 in 12 tiles that the client and the server
    number alike (a tile the server's layout lacks would fail the job)."""
    rng = np.random.default_rng(5)
    start = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    graph = upscale_tiled(client.get("/object_info").json(), "tiny.safetensors", "5ca1ed00", 128, 96, "detailed", "")
    assert sum(n["class_type"] == "ETN_MergeImageTile" for n in graph.values()) == 12
    _, images = run_job(client, graph, {"5ca1ed00": png(start)})
    assert [im.size for im in images] == [(128, 96)]
    resized = np.asarray(Image.fromarray(start).resize((128, 96), Image.LANCZOS), dtype=np.float64)
    assert not np.allclose(np.asarray(images[0], dtype=np.float64), resized, atol=2)  # re-sampled


def _selection_job(client, build, margin: int):
    """A canvas, a 16 x 16 selection and its context (the target bounds); -> (result RGBA, the canvas
    under it, the selection in it, the pixels more than `margin` from the selection)."""
    rng = np.random.default_rng(4)
    canvas = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[24:40, 24:40] = 255  # the selection; Krita sends a grey mask image
    target = Bounds(0, 8, 64, 48)  # the selection with context around it
    graph = build(client.get("/object_info").json(), "tiny.safetensors", CONTROLNET, "c0ffee01", "c0ffee02", target,
                  "a window", "")
    _, images = run_job(client, graph, {"c0ffee01": png(canvas), "c0ffee02": png(mask)})
    assert [(im.size, im.mode) for im in images] == [((64, 48), "RGBA")]
    crop = mask[target.y:target.y + target.height, target.x:target.x + target.width]
    far = np.ones_like(crop, dtype=bool)
    ys, xs = np.nonzero(crop)
    far[max(ys.min() - margin, 0):ys.max() + margin + 1, max(xs.min() - margin, 0):xs.max() + margin + 1] = False
    under = canvas[target.y:target.y + target.height, target.x:target.x + target.width].astype(np.float64)
    return np.asarray(images[0]).astype(np.float64), under, crop > 0, far


def _keeps_unmasked_pixels(result, under, selected, far):
    alpha = result[..., 3] / 255.0
    assert far.any() and np.all(alpha[far] == 0)
    assert np.all(alpha[selected] > 0.99)  # the selection is replaced, fully
    # laid over the canvas as Krita does, pixels away from the selection are the canvas's
    laid = result[..., :3] * alpha[..., None] + under * (1 - alpha[..., None])
    assert np.array_equal(laid[far], under[far])
    assert not np.allclose(laid[selected], under[selected], atol=2)


def test_inpaint_fill_keeps_unmasked_pixels(client):
    # grown by 8 and feathered by a 9-px tent (reach 12), thresholded, shrunk by 4 and blurred by a 9-px
    # Gaussian (reach 12 again): nothing reaches 13 px beyond the selection
    _keeps_unmasked_pixels(*_selection_job(client, inpaint, margin=12))


def test_remove_object_fills_with_lama_and_keeps_unmasked_pixels(client):
    """Fill -> "Remove object": the selection pre-filled by LaMa (the big-lama.pt Krita finds in inpaint/, a
    TorchScript archive: its weights read without running it) instead of a blur, then sampled as in "fill".
    The selection Krita sends is grown by 8 and feathered by min(feather, grow / 2) = 4 in this mode."""
    from lama_files import random_lama, write_lama_torchscript

    models = client.app.state.opensd.settings.models_dir
    write_lama_torchscript(random_lama(), models / "inpaint" / "big-lama.pt")
    info = client.get("/object_info").json()
    assert "big-lama.pt" in options(info, "INPAINT_LoadInpaintModel", "model_name")
    build = functools.partial(inpaint, fill_model="big-lama.pt", grow=8, feather=4)
    graph = build(info, "tiny.safetensors", CONTROLNET, "i", "m", Bounds(0, 8, 64, 48), "background scenery", "")
    assert [n["class_type"] for n in graph.values()].count("INPAINT_InpaintWithModel") == 1
    removed = _selection_job(client, build, margin=12)
    _keeps_unmasked_pixels(*removed)
    blurred = _selection_job(client, functools.partial(inpaint, grow=8, feather=4), margin=12)
    assert not np.array_equal(removed[0], blurred[0])  # the pre-fill is LaMa's, not the blur's


def test_refine_selection_keeps_unmasked_pixels(client):
    # grown by 4 and a 5-px tent (reach 6), shrunk by 2 and a 5-px Gaussian: nothing beyond 6 px
    _keeps_unmasked_pixels(*_selection_job(client, refine_region, margin=6))


def test_missing_cache_image_and_bad_uploads_are_clear(client):
    info = client.get("/object_info").json()
    graph = refine(info, "tiny.safetensors", "deadbeef", "a cat", "")
    with client.websocket_connect(f"{WS}?clientId=k2") as ws:
        job = str(uuid.uuid4())
        client.post("/prompt", json={"prompt": graph, "client_id": "k2", "prompt_id": job})
        while True:
            m = ws.receive()
            if m.get("text") and json.loads(m["text"])["type"] == "execution_error":
                assert "no image 'deadbeef' in the cache" in json.loads(m["text"])["data"]["exception_message"]
                break
    r = client.put("/api/etn/image/bad1", content=b"not an image")
    assert r.status_code == 422 and "not a readable image" in r.text
    assert client.put("/api/etn/image/..%2Fx", content=png(np.zeros((4, 4, 3), np.uint8))).status_code in (404, 422)
    assert client.get("/api/etn/image/nothere").status_code == 404
    # an image is served back only as an image type: a declared text/html would be a page on our origin
    data = png(np.zeros((4, 4, 3), np.uint8))
    for declared, served in (("text/html", "application/octet-stream"), ("image/png; q=1", "image/png")):
        image_id = "typed" + served.replace("/", "-")
        assert client.put(f"/api/etn/image/{image_id}", content=data,
                          headers={"content-type": declared}).status_code == 201
        r = client.get(f"/api/etn/image/{image_id}")
        assert r.headers["content-type"] == served and r.headers["x-content-type-options"] == "nosniff"
    assert client.get("/api/etn/model_info/secrets").status_code == 400
    assert client.post("/api/etn/workflow/subscribe", content=b"x").status_code == 422
    assert client.get("/api/etn/translate/en/a%20cat").json() == "a cat"
    r = client.get("/api/etn/translate/de/eine%20Katze")
    assert r.status_code == 422 and "no translation models" in r.text


def test_remove_object_with_mat_names_the_optional_package(client):
    """MAT (Krita's default "remove object" model) needs spandrel_extra_arches, an opt-in package (its MAT
    code is non-commercial): without it the job fails saying so, and which extra installs it."""
    try:
        import spandrel_extra_arches  # noqa: F401
        pytest.skip("spandrel_extra_arches is installed here")
    except ImportError:
        pass
    from safetensors.torch import save_file

    models = client.app.state.opensd.settings.models_dir
    save_file({"synthesis.first_stage.conv_first.conv.resample_filter": torch.zeros(4, 4)},
              str(models / "inpaint" / "MAT_small.safetensors"))
    graph = {"1": {"class_type": "INPAINT_LoadInpaintModel", "inputs": {"model_name": "MAT_small.safetensors"}},
             "2": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0}},
             "3": {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": 8, "height": 8}},
             "4": {"class_type": "INPAINT_InpaintWithModel",
                   "inputs": {"inpaint_model": ["1", 0], "image": ["2", 0], "mask": ["3", 0], "seed": 834729}},
             "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    with pytest.raises(AssertionError, match=r"MAT needs the optional package spandrel_extra_arches \(pip install "
                                             r"'opensd\[mat\]'"):
        run_job(client, graph)
