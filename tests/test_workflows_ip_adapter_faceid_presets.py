"""IPAdapterUnifiedLoaderFaceID (cubiq's ComfyUI_IPAdapter_plus) on the tiny model, with tiny random
FaceID files, LoRAs and image encoder named as h94's releases (what cubiq's patterns find) and the tiny
InsightFace pack of test_insightface:

* a preset finds the FaceID file, puts its LoRA on the model at lora_strength and brings the encoder
  and the face analysis: every UNet call then equals the explicit chain's (IPAdapterModelLoader,
  LoraLoaderModelOnly, CLIPVisionLoader, IPAdapterInsightFaceLoader, IPAdapterFaceID);
* each missing file is named with the folder it goes in; the object_info entry is cubiq's.
"""
import re
import shutil

import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_ip_adapter_faceid import _face_picture  # noqa: E402
from test_workflows import _random_lora  # noqa: E402
from test_workflows_ip_adapter import calls  # noqa: E402
from test_workflows_ip_adapter_faceid import faceid_env  # noqa: E402
from workflow_fixtures import Loader, default_graph, make_ctx  # noqa: E402

from opensd.errors import InvalidArgument  # noqa: E402
from opensd.library.models_dir import ModelFolders  # noqa: E402
from opensd.workflows import execute, object_info  # noqa: E402
from opensd.workflows.types import NodeCall  # noqa: E402
from opensd.workflows.nodes_clip_vision import clip_vision_loader  # noqa: E402
from opensd.workflows.nodes_ip_adapter import ipadapter_model_loader  # noqa: E402
from opensd.workflows.nodes_ip_adapter_faceid import InsightFaceRef, insightface_loader, ipadapter_faceid  # noqa: E402
from opensd.workflows.nodes_ip_adapter_faceid_presets import FACEID_PRESETS, lora_file_name  # noqa: E402
from opensd.workflows.nodes_ip_adapter_faceid_presets import ipadapter_unified_loader_faceid as unified  # noqa: E402
from opensd.workflows.nodes_loaders import lora_loader_model_only  # noqa: E402

FACEID, PLUS_V2, PORTRAIT = ("ip-adapter-faceid_sd15.bin", "ip-adapter-faceid-plusv2_sd15.bin",
                             "ip-adapter-faceid-portrait_sd15.bin")  # Portrait: the pre-v11 name
ENCODER = "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    # and a decoy the patterns must pass over: an SDXL file
    files = {FACEID: "faceid", PLUS_V2: "faceid_plus", PORTRAIT: "portrait", "ip-adapter-faceid_sdxl.bin": "faceid"}
    call, model, pos, neg = faceid_env(tmp_path_factory.mktemp("faceid_presets"), files, ENCODER)
    for name in (FACEID, PLUS_V2):
        _random_lora(model.pipe, call.ctx.folders.root / "loras" / lora_file_name(name))
    return call, model, pos, neg


def _image():
    return torch.from_numpy(np.asarray(_face_picture(), dtype=np.float32) / 255.0)[None]


def test_h94_names_match_the_presets_patterns():
    for preset, sides in FACEID_PRESETS.items():
        for patterns, lora, published in sides.values():
            assert re.search(patterns[0], published, re.IGNORECASE), preset
            assert lora is None or re.search(lora, lora_file_name(published), re.IGNORECASE), preset
            assert lora is None or not re.search(patterns[0], lora_file_name(published), re.IGNORECASE)


@pytest.mark.parametrize("preset,file", [("FACEID", FACEID), ("FACEID PLUS V2", PLUS_V2)])
def test_a_preset_equals_the_explicit_faceid_chain(env, preset, file):
    call, model, pos, neg = env
    out_model, ipa = unified(call, model, preset, 0.6, "CPU")
    assert ipa.name == file and ipa.clip_vision.name == ENCODER and isinstance(ipa.insightface, InsightFaceRef)
    (lora_model,) = lora_loader_model_only(call, model, lora_file_name(file), 0.6)
    assert out_model == lora_model and out_model != model  # the LoRA, model only, at lora_strength
    got, _ = ipadapter_faceid(call, out_model, ipa, _image(), 0.8, 1.5, "linear", "concat", 0.0, 1.0,
                              "V only")  # no clip_vision, no insightface input
    want, _ = ipadapter_faceid(call, lora_model, ipadapter_model_loader(call, file)[0], _image(), 0.8, 1.5,
                               "linear", "concat", 0.0, 1.0, "V only", clip_vision=clip_vision_loader(call, ENCODER)[0],
                               insightface=insightface_loader(call, "CPU", "buffalo_l")[0])
    seen, _ = calls(got, pos, neg)
    ref, _ = calls(want, pos, neg)
    assert len(seen) == len(ref) == 2
    for (_, a), (_, b) in zip(seen, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    no_lora, _ = calls(ipadapter_faceid(call, model, ipa, _image(), 0.8, 1.5, "linear", "concat", 0.0, 1.0,
                                        "V only")[0], pos, neg)
    assert (seen[0][1] - no_lora[0][1]).abs().max() > 1e-4  # the LoRA is applied
    same, _ = unified(call, model, preset, 0.0, "CPU")
    assert same is model  # lora_strength 0: the LoRA is found but not applied (cubiq's)


def test_portrait_finds_the_older_name_and_has_no_lora(env):
    call, model, *_ = env
    out_model, ipa = unified(call, model, "FACEID PORTRAIT (style transfer)", 0.6, "CPU")
    assert out_model is model and ipa.name == PORTRAIT and ipa.clip_vision.name == ENCODER


def test_each_missing_file_is_named_with_its_folder(env, tmp_path):
    """Walk an empty models folder up to a working FACEID PLUS V2 preset, one file at a time."""
    call, model, *_ = env
    src = call.ctx.folders.root
    (tmp_path / "models").mkdir()
    folders = ModelFolders(tmp_path / "models", include_builtin=False)
    empty = NodeCall(make_ctx(folders, Loader(folders), tmp_path), "1", {}, lambda kind, data: None)
    steps = [
        ("ipadapter", PLUS_V2, r"needs its FaceID file in models/ipadapter \(ip-adapter-faceid-plusv2_sd15\.bin, "),
        ("loras", lora_file_name(PLUS_V2),
         r"needs the FaceID LoRA in models/loras \(ip-adapter-faceid-plusv2_sd15_lora\.safetensors, "),
        ("clip_vision", ENCODER, rf"needs the ViT-H/14 image encoder in models/clip_vision \({ENCODER}, "),
        ("insightface", None, r"the model pack 'buffalo_l' is not installed: put its \.onnx files in .*buffalo_l"),
    ]
    for folder, name, message in steps:
        with pytest.raises(InvalidArgument, match=message) as e:
            unified(empty, model, "FACEID PLUS V2", 0.6, "CPU")
        assert "\n" not in str(e.value)
        (tmp_path / "models" / folder).mkdir(parents=True, exist_ok=True)
        if name is None:
            shutil.copytree(src / "insightface", tmp_path / "models" / "insightface", dirs_exist_ok=True)
        else:
            shutil.copy(src / folder / name, tmp_path / "models" / folder / name)
    _, ipa = unified(empty, model, "FACEID PLUS V2", 0.6, "CPU")
    assert ipa.name == PLUS_V2
    (tmp_path / "models" / "clip_vision" / ENCODER).unlink()
    shutil.copy(src / "ipadapter" / FACEID, tmp_path / "models" / "ipadapter" / FACEID)
    shutil.copy(src / "loras" / lora_file_name(FACEID), tmp_path / "models" / "loras" / lora_file_name(FACEID))
    _, plain = unified(empty, model, "FACEID", 0.6, "CPU")
    assert plain.name == FACEID and plain.clip_vision is None  # FaceID (not Plus) reads no image encoder


@pytest.mark.parametrize("args,message", [
    (("FACEID PORTRAIT UNNORM - SDXL only (strong)", 0.6, "CPU"), r"^preset: .* has no SD1\.5 model$"),
    (("FACEID", 0.6, "DirectML"), r"^provider: DirectML is not available in opensd; use CPU or CUDA$"),
    (("FACEID", 0.6, "ROCM"), r"^provider: ROCM is not available"),
    (("FACEID", 0.6, "TPU"), r"^provider: 'TPU' is not one of CPU, CUDA, ROCM, DirectML, OpenVINO, CoreML$"),
    (("FACEID", 1.5, "CPU"), r"^lora_strength: 1\.5 is not between 0 and 1$"),
    (("PLUS (high strength)", 0.6, "CPU"), r"^preset: 'PLUS \(high strength\)' is not one of FACEID, "),
])
def test_wrong_inputs_are_one_line(env, args, message):
    call, model, *_ = env
    with pytest.raises(InvalidArgument, match=message):
        unified(call, model, *args)


def test_a_graph_through_the_unified_loader_runs(env):
    call, *_ = env
    call.ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    _face_picture().save(call.ctx.inputs_dir / "face.png")
    graph = default_graph(model=["26", 0], steps=2)
    graph.update({
        "23": {"class_type": "IPAdapterUnifiedLoaderFaceID", "inputs": {
            "model": ["4", 0], "preset": "FACEID PLUS V2", "lora_strength": 0.6, "provider": "CPU"}},
        "24": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "26": {"class_type": "IPAdapterFaceID", "inputs": {
            "model": ["23", 0], "ipadapter": ["23", 1], "image": ["24", 0], "weight": 0.8, "weight_faceidv2": 1.0,
            "weight_type": "linear", "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0,
            "embeds_scaling": "V only"}},
    })
    out = execute(graph, call.ctx)
    assert len(out["9"]["images"]) == 1


def test_object_info_is_cubiqs():
    assert object_info(None)["IPAdapterUnifiedLoaderFaceID"] == {
        "input": {"required": {
            "model": ["MODEL"],
            "preset": [["FACEID", "FACEID PLUS - SD1.5 only", "FACEID PLUS V2", "FACEID PORTRAIT (style transfer)",
                        "FACEID PORTRAIT UNNORM - SDXL only (strong)"]],
            "lora_strength": ["FLOAT", {"default": 0.6, "min": 0, "max": 1, "step": 0.01}],
            "provider": [["CPU", "CUDA", "ROCM", "DirectML", "OpenVINO", "CoreML"]]},
            "optional": {"ipadapter": ["IPADAPTER"]}},
        "input_order": {"required": ["model", "preset", "lora_strength", "provider"], "optional": ["ipadapter"]},
        "output": ["MODEL", "IPADAPTER"], "output_is_list": [False, False], "output_name": ["MODEL", "ipadapter"],
        "name": "IPAdapterUnifiedLoaderFaceID", "display_name": "IPAdapter Unified Loader FaceID", "description": "",
        "python_module": "custom_nodes.ComfyUI_IPAdapter_plus", "category": "ipadapter/faceid",
        "output_node": False}
