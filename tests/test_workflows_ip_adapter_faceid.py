"""ComfyUI_IPAdapter_plus' FaceID nodes (IPAdapterInsightFaceLoader, IPAdapterFaceID) on the tiny model
with tiny random FaceID / FaceID Plus v2 files (.bin, h94's layout) and the tiny InsightFace pack of
test_insightface in models/insightface/models/buffalo_l:

* every UNet call while sampling equals the UNet patched by opensd's own path with the tokens of the
  face's normalised embedding (negative: zeros; Plus: and a black image's hidden states), and differs
  from the plain UNet; face_image is the aligned face crop;
* the errors are one line.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from test_insightface import BIG_KPS, write_pack  # noqa: E402
from test_ip_adapter_faceid import _face_picture, faceid_adapter, write_faceid  # noqa: E402
from test_workflows_ip_adapter import calls, plain  # noqa: E402
from vision_fixtures import clip_vision, save_vision  # noqa: E402
from workflow_fixtures import default_graph, sampling_env  # noqa: E402

from opensd.adapters import insightface as IF  # noqa: E402
from opensd.adapters.ip_adapter import image_features, load_ip_adapter_for  # noqa: E402
from opensd.errors import InvalidArgument  # noqa: E402
from opensd.models.ip_adapter import HIDDEN, patched  # noqa: E402
from opensd.models.ip_adapter_faceid import project_faces  # noqa: E402
from opensd.workflows.nodes_clip_vision import clip_vision_loader  # noqa: E402
from opensd.workflows.nodes_ip_adapter import ipadapter_advanced, ipadapter_model_loader  # noqa: E402
from opensd.workflows.nodes_ip_adapter_faceid import insightface_loader, ipadapter_faceid  # noqa: E402

FACEID, PLUS = "ip-adapter-faceid_tiny.bin", "ip-adapter-faceid-plusv2_tiny.bin"


def faceid_env(tmp, files: dict, encoder: str):
    """sampling_env's (call, model, pos, neg) with tiny FaceID files {name: kind} (.bin, h94's layout) in
    models/ipadapter, the tiny image encoder named `encoder` and the tiny buffalo_l pack."""
    call, model, pos, neg = sampling_env(tmp)
    root = call.ctx.folders.root
    (root / "ipadapter").mkdir()
    unet = model.pipe.family.network(model.pipe.model)
    for name, kind in files.items():
        write_faceid(faceid_adapter(unet, kind), root / "ipadapter" / name, pickle=True)
    save_vision(clip_vision(), root / "clip_vision" / encoder)
    write_pack(root)
    return call, model, pos, neg


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    call, model, pos, neg = faceid_env(tmp_path_factory.mktemp("faceid"), {FACEID: "faceid", PLUS: "faceid_plus"},
                                       "cv.safetensors")
    (faces,) = insightface_loader(call, "CPU", "buffalo_l")
    (cv,) = clip_vision_loader(call, "cv.safetensors")
    return call, model, pos, neg, faces, cv


def _image():
    return torch.from_numpy(np.asarray(_face_picture(), dtype=np.float32) / 255.0)[None]


def _reference(env, file, cond, uncond, weight):
    call, model, *_ = env
    network = model.pipe.family.network(model.pipe.model)
    adapter = load_ip_adapter_for(call.ctx.folders.root / "ipadapter" / file, model.pipe).adapter

    def run(args):
        rows = len(args[0])
        order = list(range(rows))[::-1]  # [positive, negative] -> [negative, positive]
        flipped = [a[order] if isinstance(a, torch.Tensor) and len(a) == rows else a for a in args]
        with torch.no_grad(), patched(network, adapter, cond, uncond, weight, n_uncond=rows - 1):
            return network(*flipped)[order]
    return adapter, run


@pytest.mark.parametrize("file", [FACEID, PLUS])
def test_each_unet_call_equals_opensds_own_faceid_path(env, file):
    call, model, pos, neg, faces, cv = env
    (ipa,) = ipadapter_model_loader(call, file)
    out_model, face_image = ipadapter_faceid(call, model, ipa, _image(), 0.8, 1.5, "linear", "concat", 0.0, 1.0,
                                             "V only", clip_vision=cv, insightface=faces)
    rgb = np.asarray(_face_picture())
    face = IF.largest_face(faces.analysis, rgb)
    ids = torch.from_numpy(face.normed.astype(np.float32))[None]
    crop = IF.align(rgb, BIG_KPS, 224)
    assert face_image.shape == (1, 224, 224, 3)
    torch.testing.assert_close(face_image[0], torch.from_numpy(crop.astype(np.float32) / 255))
    adapter = load_ip_adapter_for(call.ctx.folders.root / "ipadapter" / file, model.pipe).adapter
    with torch.no_grad():
        if file == FACEID:
            cond, uncond = project_faces(adapter, ids), project_faces(adapter, torch.zeros_like(ids))
        else:  # v2 (its name): the shortcut, weight_faceidv2 1.5; negative: a black image's hidden states
            hidden = image_features(cv.model, face_image, HIDDEN)
            size = cv.model.config.image_size
            black = image_features(cv.model, torch.zeros(1, size, size, 3), HIDDEN)
            cond = project_faces(adapter, ids, hidden, 1.5, True)
            uncond = project_faces(adapter, torch.zeros_like(ids), black, 1.5, True)
    _, ref = _reference(env, file, cond, uncond, 0.8)
    seen, _ = calls(out_model, pos, neg)
    assert len(seen) == 2
    for args, out in seen:
        torch.testing.assert_close(out, ref(args), rtol=1e-5, atol=1e-5)
        assert (out - plain(model, args)).abs().max() > 1e-4


def test_faceid_node_errors_are_one_line(env):
    call, model, pos, neg, faces, cv = env
    (ipa,) = ipadapter_model_loader(call, FACEID)
    (plus,) = ipadapter_model_loader(call, PLUS)
    image = _image()
    cases = [
        (lambda: ipadapter_faceid(call, model, ipa, image, 1.0, 1.0, "linear", "concat", 0, 1, "V only"),
         "needs the INSIGHTFACE"),
        (lambda: ipadapter_faceid(call, model, plus, image, 1.0, 1.0, "linear", "concat", 0, 1, "V only",
                                  insightface=faces), "connect the ViT-H/14"),
        (lambda: ipadapter_advanced(call, model, ipa, image, 1.0, "linear", "concat", 0, 1, "V only", clip_vision=cv),
         "use the IPAdapterFaceID node"),
        (lambda: insightface_loader(call, "CPU", "antelopev2"), "antelopev2.*not installed"),
        (lambda: insightface_loader(call, "ROCM", "buffalo_l"), "ROCM"),
        (lambda: ipadapter_faceid(call, model, ipa, image, 1.0, 1.0, "linear", "concat", 0, 1, "K+V",
                                  insightface=faces), "embeds_scaling"),
    ]
    for fn, needle in cases:
        with pytest.raises(InvalidArgument, match=needle) as e:
            fn()
        assert "\n" not in str(e.value)


def test_a_faceid_plus_graph_runs_with_its_face_image_saved(env):
    from opensd.workflows import execute

    call, *_ = env
    call.ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    _face_picture().save(call.ctx.inputs_dir / "face.png")
    graph = default_graph(model=["26", 0], steps=2)  # ComfyUI's example graph, its model through IPAdapterFaceID
    graph.update({
        "22": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "cv.safetensors"}},
        "23": {"class_type": "IPAdapterModelLoader", "inputs": {"ipadapter_file": PLUS}},
        "24": {"class_type": "LoadImage", "inputs": {"image": "face.png"}},
        "25": {"class_type": "IPAdapterInsightFaceLoader", "inputs": {"provider": "CPU", "model_name": "buffalo_l"}},
        "26": {"class_type": "IPAdapterFaceID", "inputs": {
            "model": ["4", 0], "ipadapter": ["23", 0], "image": ["24", 0], "clip_vision": ["22", 0],
            "insightface": ["25", 0], "weight": 0.8, "weight_faceidv2": 1.0, "weight_type": "linear",
            "combine_embeds": "concat", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}},
        "27": {"class_type": "SaveImage", "inputs": {"filename_prefix": "face", "images": ["26", 1]}},
    })
    out = execute(graph, call.ctx)
    assert len(out["9"]["images"]) == 1 and len(out["27"]["images"]) == 1
