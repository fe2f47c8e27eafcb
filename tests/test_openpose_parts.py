"""OpenPose hands and face: the hand and face networks against a layer-by-layer reference built from the
published layer table, the files' key layout, the hand/face box rules on hand-made body joints, peak
picking and drawing on synthetic heatmaps, the crop -> heatmap -> picture coordinates round trip, and the
wiring (registry, A1111 modules, ComfyUI's OpenposePreprocessor, CLI)."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from opensd.adapters import openpose as OP
from opensd.adapters import openpose_body as B
from opensd.adapters import openpose_cpm as C
from opensd.adapters import openpose_parts as P
from opensd.errors import CheckpointError, InvalidArgument

# The published layer table (CMU's hand and face prototxts as the PyTorch ports list them): name, in,
# out, kernel; every conv has a ReLU except conv6_2_CPM and each Mconv7_stage*; 2x2 max pools after
# conv1_2, conv2_2 and conv3_4. N = 22 (hand) or 71 (face) heatmaps.
FRONT = [("conv1_1", 3, 64, 3), ("conv1_2", 64, 64, 3), ("conv2_1", 64, 128, 3), ("conv2_2", 128, 128, 3),
         ("conv3_1", 128, 256, 3), ("conv3_2", 256, 256, 3), ("conv3_3", 256, 256, 3), ("conv3_4", 256, 256, 3),
         ("conv4_1", 256, 512, 3), ("conv4_2", 512, 512, 3), ("conv4_3", 512, 512, 3), ("conv4_4", 512, 512, 3),
         ("conv5_1", 512, 512, 3), ("conv5_2", 512, 512, 3), ("conv5_3_CPM", 512, 128, 3)]
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_4"}


def table(n: int) -> list[tuple[str, int, int, int]]:
    rows = FRONT + [("conv6_1_CPM", 128, 512, 1), ("conv6_2_CPM", 512, n, 1)]
    for s in range(2, 7):
        rows += [(f"Mconv1_stage{s}", 128 + n, 128, 7)] + [(f"Mconv{i}_stage{s}", 128, 128, 7) for i in (2, 3, 4, 5)]
        rows += [(f"Mconv6_stage{s}", 128, 128, 1), (f"Mconv7_stage{s}", 128, n, 1)]
    return rows


def file_sd(n: int, seed=0, dtype=torch.float32):
    """A full-size state dict in the files' layout, He-scaled random weights."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, cin, cout, k in table(n):
        sd[name + ".weight"] = (torch.randn(cout, cin, k, k, generator=g) * (2 / (cin * k * k)) ** 0.5).to(dtype)
        sd[name + ".bias"] = (torch.randn(cout, generator=g) * 0.01).to(dtype)
    return sd


def reference(sd, x, n):
    def conv(h, name, relu):
        w = sd[name + ".weight"]
        h = F.conv2d(h, w, sd[name + ".bias"], padding=w.shape[-1] // 2)
        return F.relu(h) if relu else h

    h = x
    for name, *_ in FRONT:
        h = conv(h, name, True)
        if name in POOL_AFTER:
            h = F.max_pool2d(h, 2, 2)
    feats = h
    out = conv(conv(feats, "conv6_1_CPM", True), "conv6_2_CPM", False)
    for s in range(2, 7):
        y = torch.cat([out, feats], 1)
        for i in range(1, 8):
            y = conv(y, f"Mconv{i}_stage{s}", i < 7)
        out = y
    assert out.shape[1] == n
    return out


@pytest.mark.parametrize("kind,n", [("hand", 22), ("face", 71)])
def test_network_equals_the_layer_by_layer_reference(kind, n):
    sd = file_sd(n, seed=n)
    net = C.build(kind, sd)
    x = torch.randn(1, 3, 48, 40, generator=torch.Generator().manual_seed(1))
    got, want = net(x), reference(sd, x, n)
    assert got.shape == (1, n, 6, 5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert want.abs().max() > 1e-3  # not comparing zeros


def test_full_size_key_names_and_shapes():
    """104 tensors each; 36,832,324 parameters for the hand net (hand_pose_model.pth, 147 MB in float32)
    and 38,425,706 for the face net (facenet.pth, 154 MB)."""
    for kind, n, count in (("hand", 22, 36_832_324), ("face", 71, 38_425_706)):
        with torch.device("meta"):
            net = C.KeypointNet(n)
        shapes = {net.file_keys()[k]: tuple(v.shape) for k, v in net.state_dict().items()}
        want = {f"{name}.{p}": ((cout, cin, k, k) if p == "weight" else (cout,))
                for name, cin, cout, k in table(n) for p in ("weight", "bias")}
        assert shapes == want and len(shapes) == 104
        assert sum(np.prod(s) for s in shapes.values()) == count
    bad = file_sd(22)
    bad["Mconv1_stage2.weight"] = torch.zeros(128, 199, 7, 7)
    with pytest.raises(CheckpointError, match=r"not the OpenPose hand model .*wrong shape Mconv1_stage2\.weight"):
        C.build("hand", bad)
    with pytest.raises(CheckpointError, match=r"not the OpenPose face model \(facenet\.pth\): wrong shape "
                                             r"conv6_2_CPM\.weight"):
        C.build("face", file_sd(22))


# a person in a 320 x 240 picture: joint -> (x, y)
H, W = 240, 320
BODY = {0: (150, 100), 1: (150, 130), 2: (200, 50), 3: (260, 50), 4: (300, 50), 5: (100, 50), 6: (100, 90),
        7: (100, 120), 14: (140, 92), 15: (158, 93), 16: (128, 98)}


def person(joints=BODY):
    return [tuple(map(float, joints[j])) if j in joints else None for j in range(18)]


def test_hand_boxes_follow_the_published_rule():
    # left: forearm 30, upper arm 40 -> side 1.5 * max(30, 0.9 * 40) = 54, centred at wrist + 0.33 * (wrist -
    # elbow) = (100, 129.9): corner (73, 102.9). Right: forearm 40, upper arm 60 -> side 81, centre (313.2, 50),
    # corner (272.7, 9.5); 272.7 + 81 passes the width: side 320 - 272.7 = 47.3
    assert P.hand_boxes(person(), H, W) == [(73, 102, 54, True), (272, 9, 47, False)]
    # a corner above the picture moves to 0 (the side stays); a missing elbow drops that hand
    top = {**BODY, 5: (40, 100), 6: (40, 60), 7: (40, 30)}
    del top[3]
    assert P.hand_boxes(person(top), H, W) == [(13, 0, 54, True)]
    # under 20 pixels: no box (forearm 6, upper arm 8 -> side 10.8)
    small = {**BODY, 5: (10, 10), 6: (10, 18), 7: (10, 24), 2: (300, 10), 3: (300, 18), 4: (300, 24)}
    assert P.hand_boxes(person(small), H, W) == []


def test_face_box_follows_the_published_rule():
    # half side = max(3 * 10 (eye 14), 3 * 8 (eye 15), 1.5 * 22 (ear 16)) = 33 around the nose (150, 100)
    assert P.face_box(person(), H, W) == (117, 67, 66)
    assert P.face_box(person({0: (20, 15), 15: (20, 25)}), H, W) == (0, 0, 60)  # corner clipped to 0
    assert P.face_box(person({0: (20, 15), 14: (23, 15)}), H, W) is None  # side 18 < 20
    assert P.face_box(person({0: (150, 100), 1: (150, 130)}), H, W) is None  # no eye or ear
    assert P.face_box(person({14: (140, 92), 15: (158, 93)}), H, W) is None  # no nose


def _blob(shape, x, y, sigma, amp):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    return amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))


def test_hand_peaks_keep_the_heaviest_region_and_scale_to_the_crop():
    heat = np.zeros((128, 128, 22), np.float32)
    # joint 0: a broad blob (peak 0.5 at (40, 30)) and a sharp spike (0.9 at (100, 100)) of smaller sum
    heat[:, :, 0] = _blob((128, 128), 40, 30, 6, 0.5) + _blob((128, 128), 100, 100, 1, 0.9)
    assert np.unravel_index(np.argmax(heat[:, :, 0]), (128, 128)) == (100, 100)  # a plain argmax would pick it
    heat[:, :, 2] = _blob((128, 128), 0, 50, 4, 0.8)  # at column 0: not found, as the reference's < 1e-6 test
    heat[:, :, 3] = 0.04  # smoothed, never above 0.05
    heat[:, :, 4] = _blob((128, 128), 64, 96, 3, 0.7)
    peaks = P.hand_peaks(heat, 96, 64)
    assert len(peaks) == 21
    assert peaks[0] == (float(int(40 * 64 / 128)), float(int(30 * 96 / 128)))  # (20, 22)
    assert peaks[1] is None and peaks[2] is None and peaks[3] is None
    assert peaks[4] == (32.0, 72.0)


def test_face_peaks_take_each_maps_maximum_above_the_threshold():
    heat = np.full((71, 50, 60), 0.01, np.float32)
    heat[0] += _blob((50, 60), 12, 7, 2, 0.8)
    heat[1] = 0.04
    heat[2, 20, 30] = heat[2, 20, 45] = 0.6  # a tie: the first in row order
    heat[3, 10, 0] = 0.9  # at column 0: not found
    peaks = P.face_peaks(heat)
    assert len(peaks) == 71
    assert peaks[0] == (12.0, 7.0) and peaks[1] is None and peaks[2] == (30.0, 20.0) and peaks[3] is None
    assert peaks[4] is None  # 0.01 everywhere


# the hand bones' colours: HSV hue = bone / 20 at full saturation and value, x 255 and rounded by OpenCV
BONE_COLOURS = [(255, 0, 0), (255, 77, 0), (255, 153, 0), (255, 229, 0), (204, 255, 0), (128, 255, 0), (51, 255, 0),
                (0, 255, 25), (0, 255, 102), (0, 255, 179), (0, 255, 255), (0, 178, 255), (0, 102, 255),
                (0, 25, 255), (51, 0, 255), (128, 0, 255), (204, 0, 255), (255, 0, 230), (255, 0, 153),
                (255, 0, 77)]


def hand_points():
    """Wrist at (100, 180); five vertical fingers 16 pixels apart, joints 25 pixels apart."""
    pts = [(100.0, 180.0)]
    for f in range(5):
        pts += [(68.0 + 16 * f, 140.0 - 25 * k) for k in range(4)]
    return pts


def test_hand_drawing_colours_each_bone_and_dots_the_joints():
    pts = hand_points()
    canvas = np.zeros((200, 200, 3), np.uint8)
    P.draw_hand(canvas, pts)
    for k, (a, b) in enumerate(P.HAND_EDGES):
        (x1, y1), (x2, y2) = pts[a], pts[b]
        mx, my = int((x1 + x2) / 2), int((y1 + y2) / 2)
        if a == 0:  # the diagonal palm bones: the colour within a pixel of the midpoint
            near = canvas[my - 1:my + 2, mx - 1:mx + 2].reshape(-1, 3).tolist()
            assert list(BONE_COLOURS[k]) in near, k
        else:
            assert canvas[my, mx].tolist() == list(BONE_COLOURS[k]), k
    for x, y in pts:
        assert canvas[int(y), int(x)].tolist() == [0, 0, 255]
        assert canvas[int(y) + 4, int(x)].tolist() == [0, 0, 255]  # radius 4
    assert canvas[5, 5].tolist() == [0, 0, 0]
    # a missing joint: its bones and dot are left out
    pts[8] = None
    canvas2 = np.zeros((200, 200, 3), np.uint8)
    P.draw_hand(canvas2, pts)
    (x1, y1), (x2, y2) = pts[7], hand_points()[8]
    assert canvas2[int((y1 + y2) / 2), int(x1)].tolist() == [0, 0, 0]
    assert P.hand_colour(0) == (255.0, 0.0, 0.0)


def test_face_drawing_is_white_dots_of_radius_3():
    canvas = np.zeros((60, 60, 3), np.uint8)
    P.draw_face(canvas, [(20.0, 30.0), None, (40.0, 10.0)])
    for x, y in ((20, 30), (40, 10)):
        assert canvas[y, x].tolist() == [255, 255, 255] and canvas[y + 3, x].tolist() == [255, 255, 255]
        assert canvas[y + 4, x].tolist() == [0, 0, 0]
    assert int(canvas.sum() // 765) == 2 * 29  # two discs of 29 pixels


class _SpotNet(torch.nn.Module):
    """Stands in for the hand/face net: every heatmap is the input's blue channel (channel 0: the nets read
    BGR) pooled to stride 8, so a blue spot in a crop must come back where it is in the picture."""

    def __init__(self, maps):
        super().__init__()
        self.maps = maps
        self.p = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return F.avg_pool2d(x[:, :1] + 0.5, 8).repeat(1, self.maps, 1, 1)


def test_crops_come_back_at_the_pictures_coordinates():
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[125:135, 95:105, 2] = 255  # blue square centred at (100, 130): in the left hand's box (73, 102, 54)
    rgb[95:105, 145:155, 2] = 255  # and at (150, 100): the face box (117, 67, 66)'s centre
    nets = SimpleNamespace(hand=_SpotNet(22), face=_SpotNet(71))
    (parts,) = P.detect_parts(nets, rgb, [person()], hands=True, face=True)
    assert len(parts["left"]) == 21 and len(parts["face"]) == 71
    for x, y in parts["left"]:
        assert abs(x - 100) <= 3 and abs(y - 130) <= 3
    assert all(p is None for p in parts["right"])  # nothing blue in the right hand's box
    for x, y in parts["face"]:
        assert abs(x - 150) <= 3 and abs(y - 100) <= 3
    red = rgb[:, :, ::-1].copy()  # the same squares in red: the nets' channel 0 sees nothing
    (none,) = P.detect_parts(nets, red, [person()], hands=True, face=False)
    assert all(p is None for p in none["left"]) and none["face"] is None


def test_picture_and_json_of_body_hands_and_face():
    parts = [{"left": hand_points(), "right": None, "face": [(150.0, 100.0)] + [None] * 70}]
    pic = P.draw([person()], parts, H, W)
    assert pic[180, 100].tolist() == [0, 0, 255] and pic[100, 150].tolist() == [255, 255, 255]
    assert pic[50, 200].tolist() == list(B.COLOURS[2])  # the body's right shoulder dot
    assert P.draw([person()], parts, H, W, body=False)[50, 200].tolist() == [0, 0, 0]  # faceonly-style
    doc = B.as_openpose_json([person()], H, W, parts)["people"][0]
    assert len(doc["pose_keypoints_2d"]) == 54 and doc["hand_right_keypoints_2d"] is None
    assert doc["hand_left_keypoints_2d"][:3] == [100 / W, 180 / H, 1.0] and len(doc["hand_left_keypoints_2d"]) == 63
    assert doc["face_keypoints_2d"][:6] == [150 / W, 100 / H, 1.0, 0.0, 0.0, 0.0]
    assert len(doc["face_keypoints_2d"]) == 213
    assert B.as_openpose_json([person()], H, W)["people"][0]["face_keypoints_2d"] is None


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("m") / "models"
    folder = root / "ControlNetPreprocessor" / "openpose"
    folder.mkdir(parents=True)
    body = OP.BodyPoseNet()
    names = body.file_keys()
    torch.save({names[k]: (v * 0).half() for k, v in body.state_dict().items()}, folder / OP.FILE)
    torch.save(file_sd(22, 1, torch.float16), folder / C.HAND_FILE)
    torch.save(file_sd(71, 2, torch.float16), folder / C.FACE_FILE)
    return root


def test_files_load_through_the_restricted_unpickler(models, tmp_path):
    from opensd.library.models_dir import ModelFolders

    files = C.find(ModelFolders(models), hand=True, face=True)
    assert sorted(files) == ["body", "face", "hand"] and files["hand"].endswith(C.HAND_FILE)
    nets = C.load(files, "cpu")
    assert isinstance(nets.hand, C.KeypointNet) and isinstance(nets.face, C.KeypointNet)
    want = file_sd(71, 2, torch.float16)["Mconv7_stage6.weight"].float()
    assert torch.equal(dict(nets.face.named_parameters())["stages.5.Mconv7_stage6.weight"], want)
    assert C.load(files, "cpu") is nets  # the one cached network
    from preprocessor_graphs import write_code_pickle

    with pytest.raises(CheckpointError):
        C.load({**files, "face": str(write_code_pickle(tmp_path / C.FACE_FILE))}, "cpu")


def test_registry_and_missing_files(models, tmp_path):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders

    img = Image.new("RGB", (90, 60), (120, 130, 140))
    for name in ("openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full"):
        out = preprocess(name, img, folders=ModelFolders(models), device="cpu")
        assert out.size == (90, 60) and np.asarray(out).max() == 0  # zero body net: nobody found
    only_body = tmp_path / "models" / "ControlNetPreprocessor"
    only_body.mkdir(parents=True)
    (only_body / OP.FILE).write_bytes((models / "ControlNetPreprocessor" / "openpose" / OP.FILE).read_bytes())
    with pytest.raises(InvalidArgument, match=r"openpose hands: hand_pose_model\.pth is not installed: put it in "
                                              r"models/ControlNetPreprocessor/.*lllyasviel/Annotators"):
        preprocess("openpose_full", img, folders=ModelFolders(tmp_path / "models"))
    with pytest.raises(InvalidArgument, match=r"facenet\.pth is not installed"):
        preprocess("openpose_face", img, folders=ModelFolders(tmp_path / "models"))
    # a body file given alone: the others are looked for next to it
    body = models / "ControlNetPreprocessor" / "openpose" / OP.FILE
    assert preprocess("openpose_full", img, weights=body, device="cpu").size == (90, 60)


def test_a1111_modules(models, tmp_path):
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    for name in ("openpose_hand", "openpose_face", "openpose_faceonly", "openpose_full"):
        assert AC._module(name, "u") == (name, True)
        weights = AC._weights(name, ModelFolders(models), "unit")
        assert isinstance(weights, dict) and weights["body"].endswith(OP.FILE)
        out = AC.preprocess_image(Image.new("RGB", (90, 60)), name, 64, -1, -1, 10**7, weights)
        assert out.size == (96, 64)
    req = SimpleNamespace(alwayson_scripts={"controlnet": {"args": [{"module": "openpose_full"},
                                                                    {"module": "dw_openpose_full"}]}})
    assert AC.unsupported(req) == []  # both run as the extension runs them (DWPose: test_dwpose.py)
    (tmp_path / "none").mkdir()
    with pytest.raises(InvalidArgument, match=r"unit: openpose_hand: body_pose_model\.pth is not installed"):
        AC._weights("openpose_hand", ModelFolders(tmp_path / "none"), "unit")


def test_comfyui_node_detects_hands_and_face(models, tmp_path, monkeypatch):
    from opensd.library.models_dir import ModelFolders
    from opensd.workflows.types import NODES

    spec = NODES["OpenposePreprocessor"]
    seen = {}

    def fake_parts(nets, rgb, people, hands, face):
        seen.update(hands=hands, face=face, nets=nets)
        return [{"left": hand_points() if hands else None, "right": None,
                 "face": [(150.0, 100.0)] + [None] * 70 if face else None} for _ in people]

    monkeypatch.setattr(B, "detect", lambda net, rgb: [person()])
    monkeypatch.setattr(P, "detect_parts", fake_parts)
    call = SimpleNamespace(ctx=SimpleNamespace(folders=ModelFolders(models), device="cpu"), progress=lambda *a: None)
    batch = torch.zeros(1, H, W, 3)
    maps, docs = spec.fn(call, batch, resolution=H)["result"]
    assert seen["hands"] and seen["face"] and seen["nets"].hand is not None
    assert maps.shape == (1, H, W, 3)
    assert maps[0, 180, 100].tolist() == [0.0, 0.0, 1.0]  # a hand joint (blue)
    assert maps[0, 100, 150].tolist() == [1.0, 1.0, 1.0]  # a face point (white)
    doc = docs[0]["people"][0]
    assert len(doc["hand_left_keypoints_2d"]) == 63 and len(doc["face_keypoints_2d"]) == 213
    from preprocessor_graphs import node_ctx, run_node

    picture = Image.new("RGB", (W, H))
    for node, extra in (("OpenposePreprocessor", {}), ("AIO_Preprocessor", {"preprocessor": "OpenposePreprocessor"})):
        (tmp_path / node).mkdir()
        out = run_node(node_ctx(models, tmp_path / node, picture), node, resolution=H, **extra)
        assert out[180, 100].tolist() == [0, 0, 255] and out[100, 150].tolist() == [255, 255, 255], node
    maps, docs = spec.fn(call, batch, detect_hand="disable", detect_face="disable", resolution=H)["result"]
    assert docs[0]["people"][0]["hand_left_keypoints_2d"] is None and maps[0, 180, 100].tolist() == [0.0, 0.0, 0.0]
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "ControlNetPreprocessor").mkdir()
    (tmp_path / "bare" / "ControlNetPreprocessor" / OP.FILE).write_bytes(
        (models / "ControlNetPreprocessor" / "openpose" / OP.FILE).read_bytes())
    call.ctx.folders = ModelFolders(tmp_path / "bare")
    with pytest.raises(InvalidArgument, match=r"hand_pose_model\.pth is not installed.*detect_hand / detect_face "
                                              r"to disable"):
        spec.fn(call, batch, resolution=H)


def test_cli_preprocess_openpose_full(models, tmp_path):
    from opensd.cli import main

    src, out = tmp_path / "in.png", tmp_path / "pose.png"
    Image.new("RGB", (90, 60), (10, 20, 30)).save(src)
    assert main(["preprocess", "openpose_full", str(src), "-o", str(out), "--models-dir", str(models)]) == 0
    assert Image.open(out).size == (90, 60)
