"""OpenPose body preprocessor: the network against a layer-by-layer reference, the file layout, the
post-processing on constructed heatmaps/PAFs, the drawing, and the wiring (registry, A1111, ComfyUI, CLI)."""
from __future__ import annotations


import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from opensd.adapters import openpose as OP
from opensd.adapters import openpose_body as B
from opensd.errors import CheckpointError, InvalidArgument


def _file_sd(seed=0, dtype=torch.float32):
    """A full-size state dict in the file's layout ("conv1_1.weight"), small random values."""
    g = torch.Generator().manual_seed(seed)
    net = OP.BodyPoseNet()
    names = net.file_keys()
    return {names[k]: (torch.randn(v.shape, generator=g) * (0.5 / max(1, v[0].numel()) ** 0.5)
                       if k.endswith("weight") else torch.randn(v.shape, generator=g) * 0.01).to(dtype)
            for k, v in net.state_dict().items()}


def reference(sd, x):
    """The architecture as described: VGG-19 conv1_1..conv4_2 with 3 max pools, conv4_3_CPM,
    conv4_4_CPM (ReLU after each); stage 1 conv5_{1..5}_CPM_L{1,2}; stages 2-6 Mconv{1..7}_stage{s}_L{1,2}
    on cat(L1, L2, features); no ReLU after a branch's last conv."""
    def conv(h, name, relu=True):
        w = sd[name + ".weight"]
        h = F.conv2d(h, w, sd[name + ".bias"], padding=w.shape[-1] // 2)
        return F.relu(h) if relu else h

    h = x
    for group in (["conv1_1", "conv1_2"], ["conv2_1", "conv2_2"], ["conv3_1", "conv3_2", "conv3_3", "conv3_4"]):
        for name in group:
            h = conv(h, name)
        h = F.max_pool2d(h, 2, 2)
    for name in ("conv4_1", "conv4_2", "conv4_3_CPM", "conv4_4_CPM"):
        h = conv(h, name)
    feats, inp = h, h
    for s in range(1, 7):
        outs = []
        for b in (1, 2):
            names = [f"conv5_{i}_CPM_L{b}" for i in range(1, 6)] if s == 1 else \
                [f"Mconv{i}_stage{s}_L{b}" for i in range(1, 8)]
            y = inp
            for i, name in enumerate(names):
                y = conv(y, name, relu=i < len(names) - 1)
            outs.append(y)
        inp = torch.cat([outs[0], outs[1], feats], 1)
    return outs[0], outs[1]


def test_network_equals_the_layer_by_layer_reference():
    sd = _file_sd()
    net = OP.build(sd)
    x = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    paf, heat = net(x)
    rp, rh = reference(sd, x)
    assert paf.shape == (1, 38, 6, 5) and heat.shape == (1, 19, 6, 5)
    torch.testing.assert_close(paf, rp, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(heat, rh, rtol=1e-4, atol=1e-5)
    assert rh.abs().max() > 1e-3  # the test is not comparing zeros


def test_full_size_key_names_and_shapes():
    """The original model definition's keys: 12 front convs + 2 x 5 stage-1 convs + 5 x 2 x 7 later = 92
    convs, 184 tensors, 52.3M parameters (the published file's 209 MB in float32)."""
    with torch.device("meta"):
        net = OP.BodyPoseNet()
    shapes = {OP.BodyPoseNet.file_keys(net)[k]: tuple(v.shape) for k, v in net.state_dict().items()}
    assert len(shapes) == 184
    assert shapes["conv1_1.weight"] == (64, 3, 3, 3)
    assert shapes["conv4_4_CPM.weight"] == (128, 256, 3, 3)
    assert shapes["conv5_4_CPM_L1.weight"] == (512, 128, 1, 1)
    assert shapes["conv5_5_CPM_L1.weight"] == (38, 512, 1, 1)
    assert shapes["conv5_5_CPM_L2.weight"] == (19, 512, 1, 1)
    assert shapes["Mconv1_stage2_L1.weight"] == (128, 185, 7, 7)
    assert shapes["Mconv6_stage4_L2.weight"] == (128, 128, 1, 1)
    assert shapes["Mconv7_stage6_L1.weight"] == (38, 128, 1, 1)
    assert shapes["Mconv7_stage6_L2.bias"] == (19,)
    assert sum(np.prod(s) for s in shapes.values()) == 52_311_446


# two people: joint -> (x, y); person B lacks the ears and the left leg
PEOPLE = [
    {0: (60, 40), 1: (60, 60), 2: (45, 60), 3: (40, 80), 4: (38, 100), 5: (75, 60), 6: (80, 80), 7: (82, 100),
     8: (50, 105), 9: (50, 130), 10: (50, 155), 11: (70, 105), 12: (70, 130), 13: (70, 155),
     14: (56, 36), 15: (64, 36), 16: (52, 38), 17: (68, 38)},
    {0: (160, 45), 1: (160, 65), 2: (145, 65), 3: (140, 85), 4: (138, 105), 5: (175, 65), 6: (180, 85),
     7: (182, 105), 8: (150, 110), 9: (150, 135), 10: (150, 160), 14: (156, 41), 15: (164, 41)},
]
H, W = 180, 220


def synthetic_maps():
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    heat = np.zeros((H, W, 19), np.float32)
    paf = np.zeros((H, W, 38), np.float32)
    for person in PEOPLE:
        for j, (x, y) in person.items():
            heat[:, :, j] = np.maximum(heat[:, :, j], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2)))
        for (ja, jb), (cx, cy) in zip(B.LIMBS, B.PAF_CHANNELS):
            if ja in person and jb in person:
                a, b = np.array(person[ja], float), np.array(person[jb], float)
                u = (b - a) / np.linalg.norm(b - a)
                t = (xx - a[0]) * u[0] + (yy - a[1]) * u[1]
                off = np.abs(-(xx - a[0]) * u[1] + (yy - a[1]) * u[0])
                on = (t >= -1) & (t <= np.linalg.norm(b - a) + 1) & (off <= 2)
                paf[on, cx], paf[on, cy] = u[0], u[1]
    return heat, paf


def test_post_processing_recovers_the_people_exactly():
    heat, paf = synthetic_maps()
    cands = B.peaks(heat)
    assert [len(c) for c in cands] == [2] * 11 + [1] * 3 + [2, 2, 1, 1]
    people = B.keypoints(cands, B.assemble(cands, B.limbs(cands, paf)))
    assert len(people) == 2
    got = sorted(people, key=lambda p: p[1][0])
    for person, want in zip(got, PEOPLE):
        assert person == [tuple(map(float, want[j])) if j in want else None for j in range(18)]


def test_assembly_drops_small_fragments_and_unrelated_joints():
    heat, paf = synthetic_maps()
    yy, xx = np.mgrid[0:H, 0:W]
    heat[:, :, 4] += np.exp(-((xx - 200) ** 2 + (yy - 20) ** 2) / 8.0)  # a third wrist, no PAF to any elbow
    cands = B.peaks(heat)
    assert (200, 20) in [(int(x), int(y)) for x, y, _, _ in cands[4]]
    people = B.keypoints(cands, B.assemble(cands, B.limbs(cands, paf)))
    assert len(people) == 2 and all(p[4] != (200.0, 20.0) for p in people)
    # a PAF pointing the wrong way links nothing: with all PAFs reversed nobody is found
    assert len(B.assemble(cands, B.limbs(cands, -paf))) == 0


def test_drawing_puts_each_limb_colour_at_its_midpoint():
    person = [tuple(map(float, PEOPLE[0][j])) for j in range(18)]
    canvas = B.draw([person], H, W)
    assert canvas.shape == (H, W, 3) and canvas.dtype == np.uint8
    assert canvas[0, 0].tolist() == [0, 0, 0]
    for j, colour in enumerate(B.COLOURS):  # joint dots on top, full colour
        x, y = PEOPLE[0][j]
        assert canvas[y, x].tolist() == list(colour)
    for k in (0, 2, 3, 6, 7, 9, 10):  # long limbs: the midpoint is stick, not a dot
        (ax, ay), (bx, by) = PEOPLE[0][B.LIMBS[k][0]], PEOPLE[0][B.LIMBS[k][1]]
        mid = canvas[int((ay + by) / 2), int((ax + bx) / 2)].tolist()
        assert mid == [int(c * 0.6) for c in B.COLOURS[k]], k
    # xinsir's scaling: thicker sticks from 500 pixels on
    assert B.stick_scale(400, 300, True) == 1 and B.stick_scale(600, 400, True) == 2
    assert B.stick_scale(2100, 900, True) == 4 and B.stick_scale(2100, 900, False) == 1
    doc = B.as_openpose_json([person], H, W)
    assert doc["canvas_height"] == H and len(doc["people"][0]["pose_keypoints_2d"]) == 54
    assert doc["people"][0]["pose_keypoints_2d"][:3] == [60 / W, 40 / H, 1.0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("m") / "models"
    (root / "ControlNetPreprocessor" / "openpose").mkdir(parents=True)
    torch.save(_file_sd(3, torch.float16), root / "ControlNetPreprocessor" / "openpose" / OP.FILE)
    return root


def test_file_loads_through_the_restricted_unpickler_and_runs(models):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders

    img = Image.new("RGB", (90, 60), (120, 130, 140))
    out = preprocess("openpose", img, folders=ModelFolders(models), device="cpu")
    assert out.size == (90, 60) and out.mode == "RGB"
    net = OP.load(models / "ControlNetPreprocessor" / "openpose" / OP.FILE, "cpu")
    heat, paf = B.maps(net, np.asarray(img))
    assert heat.shape == (60, 90, 19) and paf.shape == (60, 90, 38)


def test_a_pickle_with_code_is_refused(tmp_path):
    from preprocessor_graphs import write_code_pickle

    with pytest.raises(CheckpointError):
        OP.load(write_code_pickle(tmp_path / OP.FILE), "cpu")


def test_wrong_and_missing_files_are_named(tmp_path):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders

    sd = _file_sd()
    del sd["Mconv7_stage6_L2.bias"]
    with pytest.raises(CheckpointError, match=r"not the OpenPose body model .*missing Mconv7_stage6_L2\.bias"):
        OP.build(sd)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidArgument, match=r"body_pose_model\.pth is not installed: put it in "
                                              r"models/ControlNetPreprocessor/.*lllyasviel/Annotators"):
        preprocess("openpose", Image.new("RGB", (8, 8)), folders=ModelFolders(tmp_path / "empty"))


def test_a1111_modules(models):
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    assert AC._module("openpose", "u") == ("openpose", True)
    assert AC._module("dw_openpose_full", "u") == ("dw_openpose_full", True)  # DWPose: test_dwpose.py
    assert AC.module_list().count("openpose") == 1
    weights = AC._weights("openpose", ModelFolders(models), "unit")
    assert weights.endswith(OP.FILE)
    out = AC.preprocess_image(Image.new("RGB", (90, 60), (90, 100, 110)), "openpose", 64, -1, -1, 10**7, weights)
    assert out.size == (96, 64)
    (models.parent / "nothing").mkdir()
    with pytest.raises(InvalidArgument, match=r"unit: openpose: body_pose_model\.pth is not installed"):
        AC._weights("openpose", ModelFolders(models.parent / "nothing"), "unit")


def test_comfyui_node_returns_the_map_and_pose_keypoints(models, tmp_path, monkeypatch):
    from preprocessor_graphs import node_ctx, run_node

    from opensd.workflows.types import NODES

    spec = NODES["OpenposePreprocessor"]
    assert spec.outputs == ("IMAGE", "POSE_KEYPOINT")
    assert set(spec.optional) == {"detect_hand", "detect_body", "detect_face", "resolution",
                                  "scale_stick_for_xinsr_cn"}
    # the detector is replaced by one that finds PEOPLE[0] (scaled to the picture) so the drawing shows
    person = [tuple(map(float, PEOPLE[0][j])) for j in range(18)]
    monkeypatch.setattr(B, "detect", lambda net, rgb: [[(x * rgb.shape[1] / W, y * rgb.shape[0] / H)
                                                        for x, y in person]])
    picture = Image.new("RGB", (330, 270), (90, 100, 110))
    out = run_node(node_ctx(models, tmp_path, picture), "OpenposePreprocessor", resolution=128,
                   detect_hand="disable", detect_face="disable")
    assert out.shape == (128, 156, 3) and out.max() == 255
    (tmp_path / "aio").mkdir()
    with pytest.raises(Exception, match=r"hand_pose_model\.pth is not installed"):  # AIO: hands and face on
        run_node(node_ctx(models, tmp_path / "aio", picture), "AIO_Preprocessor",
                 preprocessor="OpenposePreprocessor", resolution=128)
    # called directly: the POSE_KEYPOINT is one OpenPose JSON per picture, on the output canvas
    from types import SimpleNamespace

    from opensd.library.models_dir import ModelFolders

    call = SimpleNamespace(ctx=SimpleNamespace(folders=ModelFolders(models), device="cpu"),
                           progress=lambda *a: None)
    batch = torch.from_numpy(np.array(picture)).float()[None].repeat(2, 1, 1, 1) / 255
    got = spec.fn(call, batch, detect_body="disable", detect_hand="disable", detect_face="disable", resolution=128)
    maps, docs = got["result"]
    assert maps.shape == (2, 128, 156, 3) and maps.max() == 0  # body off: a black map
    assert len(docs) == 2 and docs[0]["canvas_width"] == 156 and docs[0]["canvas_height"] == 128
    kp = docs[0]["people"][0]["pose_keypoints_2d"]
    assert kp[:3] == pytest.approx([60 / W, 40 / H, 1.0])
    with pytest.raises(InvalidArgument, match="detect_face"):
        spec.fn(call, batch, detect_face="yes")


def test_cli_preprocess_openpose(models, tmp_path, capsys):
    from opensd.cli import main

    src, out = tmp_path / "in.png", tmp_path / "pose.png"
    Image.new("RGB", (90, 60), (10, 20, 30)).save(src)
    assert main(["preprocess", "openpose", str(src), "-o", str(out), "--models-dir", str(models)]) == 0
    assert Image.open(out).size == (90, 60)
    (tmp_path / "bare").mkdir()
    assert main(["preprocess", "openpose", str(src), "-o", str(out), "--models-dir", str(tmp_path / "bare")]) == 2
    assert "body_pose_model.pth is not installed" in capsys.readouterr().err


class _SpotNet(torch.nn.Module):
    """Stands in for the network: the 'heatmap' of joint 0 is the input's channel 0 (blue: the net reads
    BGR) pooled to stride 8, so a spot in the picture must come back where it was."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        pooled = F.avg_pool2d(x[:, :1] + 0.5, 8)
        heat = torch.cat([pooled, torch.zeros(1, 18, *pooled.shape[2:])], 1)
        return torch.zeros(1, 38, *pooled.shape[2:]), heat


def test_maps_come_back_at_the_pictures_coordinates():
    rgb = np.zeros((368, 300, 3), np.uint8)
    rgb[196:212, 92:108, 2] = 255  # a blue square centred at (100, 204)
    heat, paf = B.maps(_SpotNet(), rgb)
    assert heat.shape == (368, 300, 19) and paf.shape == (368, 300, 38)
    y, x = np.unravel_index(np.argmax(heat[:, :, 0]), heat.shape[:2])
    assert abs(x - 100) <= 4 and abs(y - 204) <= 4
    red = rgb[:, :, ::-1].copy()  # the same square in red: nothing there (the net's channel 0 is blue)
    assert B.maps(_SpotNet(), red)[0][180:230, 80:120, 0].max() < 0.05


def test_limb_table_is_the_published_one():
    """The original's 1-based limb sequence and its PAF indices into the 57-channel (19 heatmaps first)
    output, as published with the CMU model."""
    limb_seq = [[2, 3], [2, 6], [3, 4], [4, 5], [6, 7], [7, 8], [2, 9], [9, 10], [10, 11], [2, 12], [12, 13],
                [13, 14], [2, 1], [1, 15], [15, 17], [1, 16], [16, 18], [3, 17], [6, 18]]
    map_idx = [[31, 32], [39, 40], [33, 34], [35, 36], [41, 42], [43, 44], [19, 20], [21, 22], [23, 24], [25, 26],
               [27, 28], [29, 30], [47, 48], [49, 50], [53, 54], [51, 52], [55, 56], [37, 38], [45, 46]]
    assert [(a - 1, b - 1) for a, b in limb_seq] == B.LIMBS
    assert [(a - 19, b - 19) for a, b in map_idx] == B.PAF_CHANNELS
    assert B.COLOURS[0] == (255, 0, 0) and B.COLOURS[12] == (0, 0, 255) and len(B.COLOURS) == 18
