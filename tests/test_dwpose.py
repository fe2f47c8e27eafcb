"""DWPose (adapters/dwpose.py, dwpose_detect.py): tiny ONNX models with the real files' inputs and
outputs (YOLOX: images (1, 3, 640, 640) -> output (1, 8400, 85); RTMPose: input (1, 3, 384, 288) ->
simcc_x (1, 133, 576), simcc_y (1, 133, 768)) give fixed detections and SimCC logits, so the whole
pipeline runs through onnxruntime and every number that comes back is worked out by hand here:
letterbox and grid decoding, NMS and the thresholds, box -> crop -> SimCC -> picture pixels, the COCO ->
OpenPose mapping, and the drawing (OpenPose's, for the same keypoints). Then the wiring: the
preprocessor registry, A1111's dw_openpose_full, ComfyUI's DWPreprocessor, the errors."""
from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from opensd.adapters import dwpose as DW  # noqa: E402
from opensd.adapters import dwpose_detect as YX  # noqa: E402
from opensd.adapters import openpose_parts as PARTS  # noqa: E402
from opensd.errors import InvalidArgument  # noqa: E402

W, H = 160, 320  # the picture: letterboxed at r = 2 into the left half of 640 x 640


def _const_model(path, input_name: str, input_shape: list[int], outputs: dict[str, np.ndarray], fp16=False):
    """An ONNX file whose outputs are the given arrays (plus 0 x the input's maximum, so the input is used);
    fp16: its input is float16."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Cast", [input_name], ["x32"], to=TensorProto.FLOAT),
             helper.make_node("ReduceMax", ["x32"], ["peak"], keepdims=0),
             helper.make_node("Mul", ["peak", "zero"], ["nothing"])]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "zero")]
    for name, value in outputs.items():
        inits.append(numpy_helper.from_array(value.astype(np.float32), name + "_value"))
        nodes.append(helper.make_node("Add", [name + "_value", "nothing"], [name]))
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info(input_name, TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT,
                                                      input_shape)],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, list(v.shape)) for n, v in outputs.items()], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _row(stride: int, cx: int, cy: int) -> int:
    """The output row of a grid cell: the stride-8, -16, -32 grids (80, 40, 20 cells a side) in turn."""
    start = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    return start + cy * (640 // stride) + cx


def _detections() -> np.ndarray:
    out = np.zeros((1, 8400, 85), np.float32)

    def put(stride, cx, cy, dx, dy, w, h, obj, person, other=0.0):
        out[0, _row(stride, cx, cy), :6] = [dx, dy, math.log(w), math.log(h), obj, person]
        out[0, _row(stride, cx, cy), 6] = other

    put(8, 10, 20, 0.5, 0.5, 10, 20, 0.9, 0.9)  # A: centre (84, 164) size 80 x 160 -> (22, 42, 62, 122); 0.81
    put(8, 11, 20, 0.5, 0.5, 10, 20, 0.8, 0.9)  # C: A moved 4 pixels right (IoU 0.82), 0.72: suppressed
    put(16, 10, 30, 0.0, 0.0, 4, 8, 0.7, 0.6)   # B: centre (160, 480) size 64 x 128 -> (64, 208, 96, 272); 0.42
    put(32, 2, 2, 0.0, 0.0, 2, 2, 0.5, 0.5)     # D: (16, 16, 48, 48), 0.25: past NMS's 0.1, under 0.3
    put(8, 60, 5, 0.0, 0.0, 4, 4, 0.9, 0.05, other=0.95)  # E: class 1 (0.045 a person): not a person
    return out


BOX_A, BOX_B = [22, 42, 62, 122], [64, 208, 96, 272]
# COCO-WholeBody index -> (x bin, y bin, score); everything else scores 0 (hidden)
SPOTS = {0: (288, 384, 0.9),    # nose
         1: (300, 300, 0.29),   # left eye: under 0.3, hidden
         2: (270, 360, 0.3),    # right eye: exactly 0.3, shown
         5: (144, 192, 0.8),    # left shoulder
         6: (432, 192, 0.5),    # right shoulder
         91: (0, 0, 0.9),       # left hand, wrist
         92: (144, 384, 0.7),   # left hand, thumb 1
         23: (288, 300, 0.95)}  # face point 0


def _simcc() -> tuple[np.ndarray, np.ndarray]:
    sx, sy = np.zeros((1, 133, 576), np.float32), np.zeros((1, 133, 768), np.float32)
    for k, (bx, by, s) in SPOTS.items():
        sx[0, k, bx], sy[0, k, by] = s, s + 0.05  # the score is the smaller maximum
    return sx, sy


@pytest.fixture()
def models(tmp_path):
    """models/controlnet_aux/yzd-v/DWPose/ with the two tiny files, as controlnet_aux lays them out."""
    folder = tmp_path / "models" / "controlnet_aux" / "yzd-v" / "DWPose"
    folder.mkdir(parents=True)
    _const_model(folder / DW.DETECTOR_FILE, "images", [1, 3, 640, 640], {"output": _detections()})
    sx, sy = _simcc()
    _const_model(folder / DW.POSE_FILE, "input", [1, 3, 384, 288], {"simcc_x": sx, "simcc_y": sy})
    return tmp_path / "models"


@pytest.fixture()
def sessions(models):
    from opensd.library.models_dir import ModelFolders

    return DW.load(DW.find(ModelFolders(models)), "cpu")


def test_letterbox_scales_into_the_top_left_corner_on_grey_114():
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[:, :, 0] = 200
    x, r = YX.letterbox(rgb)
    assert r == 2.0 and x.shape == (1, 3, 640, 640) and x.dtype == np.float32
    assert (x[0, 0, :, :320] == 200).all() and (x[0, 1, :, :320] == 0).all()  # no normalisation, RGB kept
    assert (x[0, :, :, 320:] == 114).all()


def test_grid_decoding_puts_boxes_back_in_picture_pixels():
    boxes, scores = YX.decode(_detections(), 2.0)
    assert boxes[_row(8, 10, 20)] == pytest.approx(BOX_A, abs=1e-4)
    assert boxes[_row(16, 10, 30)] == pytest.approx(BOX_B, abs=1e-4)
    assert boxes[_row(32, 2, 2)] == pytest.approx([16, 16, 48, 48], abs=1e-4)
    assert scores[_row(8, 10, 20)] == pytest.approx(0.81) and scores[_row(8, 60, 5)] == pytest.approx(0.045)
    with pytest.raises(InvalidArgument, match="8400"):
        YX.decode(np.zeros((1, 100, 85)), 1.0)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 9, 9], [1, 0, 10, 9], [20, 20, 29, 29], [0, 5, 9, 14]], float)
    # box 1 overlaps box 0 by 90 / 110 (with the +1 areas): dropped; box 3 overlaps box 1 by 45 / 155
    assert YX.nms(boxes, np.array([0.5, 0.9, 0.3, 0.8])) == [1, 3, 2]
    assert YX.nms(boxes, np.array([0.5, 0.9, 0.3, 0.8]), iou=0.29) == [1, 2]
    assert YX.nms(boxes, np.array([0.5, 0.9, 0.3, 0.8]), iou=0.291) == [1, 3, 2]


def test_detector_finds_the_people_above_the_thresholds(sessions):
    found = YX.detect_people(sessions.detector, np.zeros((H, W, 3), np.uint8))
    assert found == pytest.approx(np.array([BOX_A, BOX_B], float), abs=1e-4)  # C suppressed, D and E dropped


def test_box_crop_and_its_inverse():
    centre, scale = DW.box_to_centre_scale(BOX_A, (288, 384))
    assert centre.tolist() == [42, 82] and scale.tolist() == [75, 100]  # 50 x 100 padded, widened to 3:4
    centre_w, scale_w = DW.box_to_centre_scale([0, 0, 100, 40], (288, 384))
    assert scale_w.tolist() == [125, 125 / 0.75]  # a wide box is heightened instead
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[82, 42] = (255, 255, 255)
    x = DW.crop(rgb, centre, scale, (288, 384))
    assert x.shape == (1, 3, 384, 288)
    assert x[0, :, 192, 144] * DW.STD + DW.MEAN == pytest.approx([255, 255, 255], abs=1e-3)  # the centre
    assert x[0, 0, 0, 0] == pytest.approx(-DW.MEAN[0] / DW.STD[0])  # black outside, normalised
    # SimCC bins back through the inverse: bin 2u of input pixel u
    sx, sy = np.zeros((2, 576)), np.zeros((2, 768))
    sx[0, 288], sy[0, 384], sx[1, 144], sy[1, 192] = 1, 1, 1, 1
    points, scores = DW.decode_simcc(sx, sy, centre, scale, (288, 384))
    assert points.tolist() == [[42, 82], [23.25, 57]] and scores.tolist() == [1, 1]
    points, scores = DW.decode_simcc(np.zeros((1, 576)), np.zeros((1, 768)), centre, scale, (288, 384))
    assert scores.tolist() == [0] and points[0] == pytest.approx([-0.5 / 288 * 75 + 4.5, -0.5 / 384 * 100 + 32])


def _expected_a():
    """Person A's body and parts, worked out by hand: x = bin / 2 / 288 x 75 + 4.5, y = bin / 2 / 384 x 100 + 32."""
    body = [None] * 18
    body[0] = (42.0, 82.0)          # nose
    body[5] = (23.25, 57.0)         # left shoulder (COCO 5)
    body[2] = (60.75, 57.0)         # right shoulder (COCO 6)
    body[1] = (42.0, 57.0)          # the neck: their mean
    body[14] = (39.65625, 78.875)   # right eye (COCO 2), score exactly 0.3
    left = [None] * 21
    left[0], left[1] = (4.5, 32.0), (23.25, 82.0)
    face = [None] * 68 + [body[14], body[15]]
    face[0] = (42.0, 71.0625)
    return body, {"left": left, "right": None, "face": face}


def _same(got, want):
    """Point lists equal: the same points hidden, the others within float error (the boxes come out of
    exp(log size) in float32)."""
    assert [p is None for p in got] == [p is None for p in want]
    for p, q in zip(got, want):
        if p is not None:
            assert p == pytest.approx(q, abs=1e-4)


def test_pipeline_keypoints_in_picture_pixels(sessions):
    people, parts = DW.detect(sessions, np.zeros((H, W, 3), np.uint8))
    assert len(people) == 2
    body, part = _expected_a()
    _same(people[0], body)
    _same(parts[0]["left"], part["left"])
    _same(parts[0]["face"], part["face"])
    assert parts[0]["right"] is None and parts[0]["feet"] is None
    # person B: the same bins in its own box (centre (80, 240), size 60 x 80)
    _same(people[1][:6], [(80.0, 240.0), (80.0, 220.0), (95.0, 220.0), None, None, (65.0, 220.0)])


def test_neck_needs_both_shoulders_above_threshold():
    points, scores = np.zeros((1, 133, 2)), np.zeros((1, 133))
    points[0, 5], points[0, 6] = (10, 20), (30, 40)
    scores[0, 5], scores[0, 6] = 0.9, 0.31
    people, parts = DW.to_openpose(points, scores)
    assert people[0][1] == (20.0, 30.0) and parts[0] == {"left": None, "right": None, "face": None, "feet": None}
    scores[0, 6] = 0.3  # shown itself (>= 0.3), but the neck wants both above 0.3
    people, _ = DW.to_openpose(points, scores)
    assert people[0][2] == (30.0, 40.0) and people[0][1] is None
    scores[0, 17:23] = 0.5  # the feet are kept, in COCO's order
    assert len(DW.to_openpose(points, scores)[1][0]["feet"]) == 6


def test_drawing_is_openposes_for_the_same_keypoints(sessions):
    picture, doc = DW.run(sessions, np.zeros((H, W, 3), np.uint8))
    people, parts = DW.detect(sessions, np.zeros((H, W, 3), np.uint8))  # checked above
    hands_face = [{k: q[k] for k in ("left", "right", "face")} for q in parts]
    assert hands_face[0]["face"][-2:] == [people[0][14], None]  # the body's eyes end the face
    want = PARTS.draw(people, hands_face, H, W)
    assert picture.shape == (H, W, 3) and picture.any()
    np.testing.assert_array_equal(picture, want)
    body_only, _ = DW.run(sessions, np.zeros((H, W, 3), np.uint8), hands=False, face=False)
    np.testing.assert_array_equal(body_only, PARTS.draw(people, None, H, W))
    face_only, _ = DW.run(sessions, np.zeros((H, W, 3), np.uint8), body=False, hands=False)
    np.testing.assert_array_equal(face_only, PARTS.draw(people, [{"left": None, "right": None, "face": q["face"]}
                                                                 for q in parts], H, W, body=False))
    # the JSON: pixel coordinates, as DWPose writes it
    kp = doc["people"][0]["pose_keypoints_2d"]
    assert kp[:6] == pytest.approx([42.0, 82.0, 1.0, 42.0, 57.0, 1.0], abs=1e-4) and doc["canvas_width"] == W
    assert len(doc["people"][0]["face_keypoints_2d"]) == 70 * 3 and doc["people"][0]["hand_right_keypoints_2d"] is None


def test_hand_and_face_points_under_one_pixel_are_not_drawn():
    hand = [(0.6, 30.0), (20.0, 30.0)] + [None] * 19
    face = [(25.0, 0.9)] + [None] * 69
    got = DW.draw([[None] * 18], [{"left": hand, "right": None, "face": face}], 40, 40)
    want = PARTS.draw([[None] * 18], [{"left": [None, (20.0, 30.0)] + [None] * 19, "right": None,
                                       "face": None}], 40, 40)
    np.testing.assert_array_equal(got, want)  # no bone to the hidden wrist, no face dot


def test_no_detector_takes_the_whole_picture(models):
    from opensd.library.models_dir import ModelFolders

    files = DW.find(ModelFolders(models), detector=None)
    assert files["detector"] is None
    people, _ = DW.detect(DW.load(files, "cpu"), np.zeros((H, W, 3), np.uint8))
    # the box (0, 0, 160, 320): centre (80, 160), size 200 x 400 (padded, already 1:2 -> 300 x 400)
    assert len(people) == 1 and people[0][0] == (80.0, 160.0)


def test_a_float16_pose_model_gives_the_same_points(sessions, tmp_path):
    sx, sy = _simcc()
    fp16 = _const_model(tmp_path / "dw-ll_ucoco_384_fp16.onnx", "input", [1, 3, 384, 288],
                        {"simcc_x": sx, "simcc_y": sy}, fp16=True)
    half = DW.load({"detector": None, "pose": str(fp16)}, "cpu")
    assert half.input_size == (288, 384)
    rgb = np.zeros((H, W, 3), np.uint8)
    assert DW.estimate(half, rgb, [BOX_A])[0] == pytest.approx(DW.estimate(sessions, rgb, [BOX_A])[0])


def test_errors_name_the_files_and_the_extra(tmp_path, monkeypatch, models):
    from opensd.library.models_dir import ModelFolders

    (tmp_path / "bare").mkdir()
    with pytest.raises(InvalidArgument, match=r"yolox_l\.onnx is not installed.*yzd-v/DWPose"):
        DW.find(ModelFolders(tmp_path / "bare"), pose="yolox_l.onnx")
    with pytest.raises(InvalidArgument, match=r"dw-ll_ucoco_384\.onnx is not installed: put it in models/"):
        DW.find(ModelFolders(tmp_path / "bare"))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(InvalidArgument, match=r'pip install "opensd\[dwpose\]"'):
        DW.load({"detector": None, "pose": "x.onnx"}, "cpu")
    monkeypatch.undo()
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidArgument, match=r"bad\.onnx is not an ONNX model"):
        DW.load({"detector": None, "pose": str(bad)}, "cpu")


def test_registry_and_a1111_module(models):
    from opensd.adapters.preprocessors import preprocess
    from opensd.library.models_dir import ModelFolders
    from opensd.server import a1111_controlnet as AC

    folders = ModelFolders(models)
    image = Image.new("RGB", (W, H))
    out = preprocess("dw_openpose_full", image, folders=folders)
    np.testing.assert_array_equal(np.asarray(out), DW.run(DW.load(DW.find(folders), "cpu"),
                                                          np.zeros((H, W, 3), np.uint8))[0])
    assert AC._module("dw_openpose_full", "u") == ("dw_openpose_full", True)
    assert "dw_openpose_full" in AC.module_list()
    weights = AC._weights("dw_openpose_full", folders, "unit")
    assert weights["pose"].endswith(DW.POSE_FILE) and weights["detector"].endswith(DW.DETECTOR_FILE)
    hint = AC.preprocess_image(image, "dw_openpose_full", 160, -1, -1, 10**7, weights)
    np.testing.assert_array_equal(np.asarray(hint), np.asarray(out))  # already 160 on its short side
    req = SimpleNamespace(alwayson_scripts={"controlnet": {"args": [{"module": "dw_openpose_full"}]}})
    assert AC.unsupported(req) == []
    (models.parent / "nothing").mkdir()
    with pytest.raises(InvalidArgument, match=r"unit: dw_openpose_full: .*onnx is not installed"):
        AC._weights("dw_openpose_full", ModelFolders(models.parent / "nothing"), "unit")


def test_comfyui_node(models, tmp_path):
    import torch
    from preprocessor_graphs import node_ctx, run_node

    from opensd.library.models_dir import ModelFolders
    from opensd.workflows.types import NODES

    spec = NODES["DWPreprocessor"]
    assert spec.outputs == ("IMAGE", "POSE_KEYPOINT")
    assert set(spec.optional) == {"detect_hand", "detect_body", "detect_face", "resolution", "bbox_detector",
                                  "pose_estimator", "scale_stick_for_xinsr_cn"}
    assert spec.optional["bbox_detector"][1]["default"] == "yolox_l.onnx"
    picture = Image.new("RGB", (W, H))
    out = run_node(node_ctx(models, tmp_path, picture), "DWPreprocessor", resolution=320)
    # found and drawn at the picture's own size, then scaled (x2) to the resolution
    drawn = DW.run(DW.load(DW.find(ModelFolders(models)), "cpu"), np.zeros((H, W, 3), np.uint8))[0]
    assert out.shape == (640, 320, 3)
    assert np.abs(out[::2, ::2].astype(int) - drawn.astype(int)).mean() < 2 and out.max() > 200
    call = SimpleNamespace(ctx=SimpleNamespace(folders=ModelFolders(models), device="cpu"), progress=lambda *a: None)
    batch = torch.zeros(2, H, W, 3)
    maps, docs = spec.fn(call, batch, resolution=W, bbox_detector="None")["result"]
    assert maps.shape == (2, H, W, 3) and len(docs) == 2 and len(docs[0]["people"]) == 1
    with pytest.raises(InvalidArgument, match="TorchScript"):
        spec.fn(call, batch, pose_estimator="dw-ll_ucoco_384_bs5.torchscript.pt")
    with pytest.raises(InvalidArgument, match="YOLO-NAS"):
        spec.fn(call, batch, bbox_detector="yolo_nas_s_fp16.onnx")
    with pytest.raises(InvalidArgument, match="bbox_detector"):
        spec.fn(call, batch, bbox_detector="yolov8.onnx")
    (tmp_path / "aio").mkdir()
    aio = run_node(node_ctx(models, tmp_path / "aio", picture), "AIO_Preprocessor", preprocessor="DWPreprocessor",
                   resolution=W)
    np.testing.assert_array_equal(aio, drawn)


def test_cli_preprocess(models, tmp_path, capsys):
    from opensd.cli import main

    src, out = tmp_path / "in.png", tmp_path / "pose.png"
    Image.new("RGB", (W, H)).save(src)
    assert main(["preprocess", "dw_openpose_full", str(src), "-o", str(out), "--models-dir", str(models)]) == 0
    want = DW.run(DW.load(DW.find(None, pose_path=next(models.rglob(DW.POSE_FILE))), "cpu"),
                  np.zeros((H, W, 3), np.uint8))[0]
    np.testing.assert_array_equal(np.asarray(Image.open(out)), want)
    # --weights names the pose model; the detector is looked for next to it
    pose = next(models.rglob(DW.POSE_FILE))
    (tmp_path / "bare").mkdir()
    assert main(["preprocess", "dw_openpose_full", str(src), "-o", str(out), "--weights", str(pose),
                 "--models-dir", str(tmp_path / "bare")]) == 0
    np.testing.assert_array_equal(np.asarray(Image.open(out)), want)
    alone = tmp_path / "alone" / DW.POSE_FILE
    alone.parent.mkdir()
    alone.write_bytes(pose.read_bytes())
    assert main(["preprocess", "dw_openpose_full", str(src), "-o", str(out), "--weights", str(alone),
                 "--models-dir", str(tmp_path / "bare")]) == 2
    assert "yolox_l.onnx is not installed" in capsys.readouterr().err
