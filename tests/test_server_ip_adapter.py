"""IP-Adapter units through the A1111 API (alwayson_scripts.controlnet, as sd-webui-controlnet takes
them): equal to the Python pipeline with the same adapter, encoder and scale (FaceID: and InsightFace's
pack from models/insightface/models/buffalo_l); weight 0 equals no unit; bad units are one-line 422s."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
from safetensors.torch import save_file
from server_live import LiveServer, models_dir
from test_server_controlnet import arr, b64png, scene
from test_ip_adapter_plus import FACEID, plus_adapter
from test_ip_adapter_faceid import _face_picture, faceid_adapter, write_faceid
from test_insightface import write_pack
from vision_fixtures import clip_vision, save_vision

from reference import randomize_
from opensd.adapters.ip_adapter import IPAdapterSpec, load_ip_adapter_for
from opensd.checkpoints.clip_vision_files import load_clip_vision
from opensd.library.synthetic import TINY
from opensd.models.ip_adapter import IPAdapter, cross_attentions
from opensd.models.unet import UNetModel
from opensd.server import a1111_run
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.settings import Settings
from opensd.server.images_io import decode_b64


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve_ip")
    models = models_dir(root)
    unet = UNetModel(TINY.unet)
    inners = [a.to_k.out_features for a in cross_attentions(unet)]
    adapter = randomize_(IPAdapter(24, TINY.unet.context_dim, inners), seed=4, std=0.3)
    (models / "ControlNet").mkdir()
    save_file({k: v.contiguous() for k, v in adapter.state_dict().items()},
              str(models / "ControlNet" / "ip-adapter_tiny.safetensors"))
    (models / "ControlNet" / "ip-adapter_sd15.bin").write_bytes(b"\x80\x02}q\x00.")
    save_file({k: v.contiguous() for k, v in plus_adapter(unet).state_dict().items()},
              str(models / "ControlNet" / "ip-adapter-plus_tiny.safetensors"))
    save_file({k: torch.zeros(s) for k, s in FACEID["faceid"].items()},
              str(models / "ControlNet" / "ip-adapter-faceid_sd15.safetensors"))
    save_vision(clip_vision(), models / "clip_vision" / "tiny_vit.safetensors")
    write_faceid(faceid_adapter(unet), models / "ControlNet" / "ip-adapter-faceid_tiny.bin", pickle=True)
    write_faceid(faceid_adapter(unet, "faceid_plus"), models / "ControlNet" / "ip-adapter-faceid-plusv2_tiny.bin",
                 pickle=True)
    write_pack(models)
    with LiveServer(Settings(models_dir=models, outputs_dir=root / "outputs")) as server:
        yield server


def _post(live, units):
    body = {"prompt": "a box", "width": 64, "height": 64, "seed": 11, "cfg_scale": 5, "steps": 3,
            "sampler_name": "Euler", "override_settings": {"sd_model_checkpoint": "tiny"},
            "alwayson_scripts": {"controlnet": {"args": units}}}
    return requests.post(live.url + "/sdapi/v1/txt2img", json=body, timeout=600)


def _unit(**kw):
    return {"image": b64png(scene()), "module": "ip-adapter-auto", "model": "ip-adapter_tiny [0123abcd]",
            "weight": 0.9, **kw}


@pytest.mark.parametrize("name", ["ip-adapter_tiny", "ip-adapter-plus_tiny"])
def test_unit_equals_the_python_pipeline_and_weight_zero_equals_none(live, name):
    r = _post(live, [_unit(model=name)])
    assert r.status_code == 200, r.text
    got = arr(decode_b64(r.json()["images"][0], "image", 10**7))
    plain = arr(decode_b64(_post(live, []).json()["images"][0], "image", 10**7))
    zero = arr(decode_b64(_post(live, [_unit(model=name, weight=0)]).json()["images"][0], "image", 10**7))
    assert np.array_equal(zero, plain) and not np.array_equal(got, plain)
    path = live.state.cache.resolve("tiny")
    pipe = live.state.cache.get(path)
    req = Txt2ImgRequest(prompt="a box", width=64, height=64, seed=11, cfg_scale=5, steps=3, sampler_name="Euler")
    kw, _ = a1111_run.plan(req, False, 20_000, live.state.options.view())
    models = live.state.folders.root
    spec = IPAdapterSpec(load_ip_adapter_for(models / "ControlNet" / f"{name}.safetensors", pipe),
                         load_clip_vision(models / "clip_vision" / "tiny_vit.safetensors"), scene(), 0.9)
    direct = pipe.txt2img("a box", "", seed=11, ip_adapter=spec, **kw)[0]
    assert np.array_equal(arr(direct), got)


@pytest.mark.parametrize("unit, words", [
    (_unit(module="ip-adapter_clip_sdxl"), "ViT-bigG"),           # the tiny adapter takes 24-wide embeddings
    (_unit(module="ip-adapter_face_id_plus"), "is not an IP-Adapter FaceID file"),
    (_unit(model="ip-adapter-plus_tiny", module="ip-adapter_clip_sd15"), "ViT-H/14 hidden states (1280 wide)"),
    (_unit(model="ip-adapter-faceid_tiny"), "use the module ip-adapter_face_id"),
    (_unit(model="ip-adapter-faceid-plusv2_tiny", module="ip-adapter_face_id"), "use the module "
                                                                                "ip-adapter_face_id_plus"),
    (_unit(model="ip-adapter-faceid_sd15"), "model"),
    (_unit(model="ip-adapter_sd15"), "not a PyTorch checkpoint"),
    (_unit(model="ip-adapter_nothere"), "model"),
    (_unit(image=None), "image prompt"),
    (_unit(weight=3), "weight"),
])
def test_bad_units_are_one_line_422s(live, unit, words):
    r = _post(live, [unit])
    assert r.status_code == 422, r.text
    assert words in r.text and "\\n" not in r.text, r.text


@pytest.mark.parametrize("name, module", [("ip-adapter-faceid_tiny", "ip-adapter_face_id"),
                                          ("ip-adapter-faceid-plusv2_tiny", "ip-adapter_face_id_plus")])
def test_faceid_units_equal_the_python_pipeline(live, name, module):
    from opensd.adapters import insightface

    unit = _unit(model=name, module=module, image=b64png(_face_picture()))
    r = _post(live, [unit])
    assert r.status_code == 200, r.text
    got = arr(decode_b64(r.json()["images"][0], "image", 10**7))
    plain = arr(decode_b64(_post(live, []).json()["images"][0], "image", 10**7))
    assert not np.array_equal(got, plain)
    pipe = live.state.cache.get(live.state.cache.resolve("tiny"))
    req = Txt2ImgRequest(prompt="a box", width=64, height=64, seed=11, cfg_scale=5, steps=3, sampler_name="Euler")
    kw, _ = a1111_run.plan(req, False, 20_000, live.state.options.view())
    models = live.state.folders.root
    encoder = load_clip_vision(models / "clip_vision" / "tiny_vit.safetensors") if "plus" in name else None
    faces = insightface.load(insightface.find_pack(live.state.folders, "buffalo_l"))
    spec = IPAdapterSpec(load_ip_adapter_for(models / "ControlNet" / f"{name}.bin", pipe), encoder, _face_picture(),
                         0.9, faces=faces)
    direct = pipe.txt2img("a box", "", seed=11, ip_adapter=spec, **kw)[0]
    assert np.array_equal(arr(direct), got)


def test_two_ip_adapter_units_are_refused(live):
    r = _post(live, [_unit(), _unit()])
    assert r.status_code == 422 and "one IP-Adapter unit" in r.text, r.text


def test_a_guidance_window_is_reported_as_not_acted_on(live):
    import json
    r = _post(live, [_unit(guidance_end=0.5)])
    assert r.status_code == 200, r.text
    fields = json.dumps(json.loads(r.json()["info"])["unsupported_fields"])
    assert "args[0].guidance_start" in fields


def test_ray_workers_get_the_unit_by_names_and_are_shipped_both_files(tmp_path):
    from opensd.distributed import wire
    from opensd.library.models_dir import ModelFolders
    from opensd.text.wildcards import Wildcards

    unit = {"index": 0, "kind": "ip_adapter", "weight": 0.5, "start": 0.0, "end": 1.0}
    for folder in ("ipadapter", "ControlNet"):
        models = models_dir(tmp_path / folder)
        for sub, name in ((folder, "ip-adapter_tiny.safetensors"), ("clip_vision", "vit.safetensors")):
            (models / sub).mkdir(exist_ok=True)
            (models / sub / name).write_bytes(b"x")
        here = {**unit, "path": str(models / folder / "ip-adapter_tiny.safetensors"),
                "encoder": str(models / "clip_vision" / "vit.safetensors")}
        payload = {"mode": "txt2img", "request": {}, "kwargs": {}, "prompt": "x", "negative_prompt": "",
                   "model_path": str(models / "Stable-diffusion" / "tiny.safetensors"), "vae_path": None,
                   "controlnet": [here]}
        sent = wire.to_wire(ModelFolders(models), Wildcards(None), payload)
        assert str(tmp_path) not in repr(sent["controlnet"])
        back, _ = wire.from_wire(ModelFolders(models), sent)
        assert back["controlnet"] == [{k: str(Path(v).resolve()) if k in ("path", "encoder") else v
                                       for k, v in here.items()}]


def test_the_extension_lists_the_adapter_and_its_modules(live):
    root = live.state.folders.root
    (root / "ipadapter").mkdir(exist_ok=True)
    shutil.copy(root / "ControlNet" / "ip-adapter_tiny.safetensors",
                root / "ipadapter" / "ip-adapter_other.safetensors")
    models = requests.get(f"{live.url}/controlnet/model_list", timeout=60).json()["model_list"]
    assert any(m.startswith("ip-adapter_tiny [") for m in models)
    assert any(m.startswith("ip-adapter_other [") for m in models)
    modules = requests.get(f"{live.url}/controlnet/module_list", timeout=10).json()["module_list"]
    assert {"ip-adapter_clip_sd15", "ip-adapter_clip_sdxl", "ip-adapter-auto"} <= set(modules)


def test_ray_workers_get_a_faceid_unit_and_its_insightface_pack_by_names(tmp_path):
    from opensd.distributed import wire
    from opensd.library.models_dir import ModelFolders

    models = models_dir(tmp_path)
    write_pack(models)
    (models / "ControlNet").mkdir()
    (models / "ControlNet" / "ip-adapter-faceid_sd15.bin").write_bytes(b"x")
    pack = models / "insightface" / "models" / "buffalo_l"
    unit = {"index": 0, "kind": "ip_adapter", "weight": 0.5, "start": 0.0, "end": 1.0, "encoder": None,
            "path": str(models / "ControlNet" / "ip-adapter-faceid_sd15.bin"),
            "faces": {"detector": str(pack / "det_10g.onnx"), "recogniser": str(pack / "w600k_r50.onnx")}}
    folders = ModelFolders(models)
    sent = wire._unit_to_wire(folders, unit)
    assert str(tmp_path) not in repr(sent)
    assert sent["faces"]["detector"] == "models/buffalo_l/det_10g.onnx"  # inside models/insightface
    back = wire._unit_from_wire(folders, sent)
    assert back["encoder"] is None and back["faces"] == {k: str(Path(v).resolve()) for k, v in unit["faces"].items()}
    from types import SimpleNamespace

    from opensd.distributed import shipping
    payload = {"model_path": str(models / "m.safetensors"), "controlnet": [unit], "kwargs": {}}
    shipped = shipping.a1111_files(SimpleNamespace(folders=folders), payload)  # --ray-ship-models sends the pack
    assert {("insightface", pack / "det_10g.onnx"), ("insightface", pack / "w600k_r50.onnx")} <= set(shipped)
