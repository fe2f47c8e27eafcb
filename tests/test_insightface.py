"""InsightFace face analysis (adapters/insightface.py, insightface_detect.py) on tiny ONNX models with the
released files' inputs and outputs: an SCRFD detector (``input.1`` (1, 3, ?, ?) -> nine outputs: scores,
box distances and keypoint offsets for strides 8, 16, 32, 2 anchors a cell) whose outputs are fixed here,
and an "ArcFace" recogniser ((n, 3, 112, 112) -> (1, 512)) that is a known linear map of its input's
channel means. Every number that comes back is worked out by hand: letterbox, anchor decoding, the
score threshold and NMS, largest face first, the similarity alignment onto the ArcFace template, the
recogniser's (x - 127.5) / 127.5 RGB input; then finding a model pack and the errors."""
from __future__ import annotations

import numpy as np
import pytest

ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from test_dwpose import _const_model  # noqa: E402

from opensd.adapters import insightface as IF  # noqa: E402
from opensd.adapters import insightface_detect as SCRFD  # noqa: E402
from opensd.errors import InvalidArgument  # noqa: E402
from opensd.library.models_dir import ModelFolders  # noqa: E402

W, H = 320, 160  # the picture: letterboxed at scale 2 into the top half of 640 x 640
NAMES = ["448", "471", "494", "451", "474", "497", "454", "477", "500"]  # det_10g.onnx's output names
GRID = {8: 80, 16: 40, 32: 20}
OFFSETS = [(-1, -1), (1, -1), (0, 0), (-1, 1), (1, 1)]  # keypoint offsets of the big face, in stride units


def _index(stride, cx, cy, anchor):
    return (cy * GRID[stride] + cx) * 2 + anchor


def _detections() -> list[np.ndarray]:
    """The nine outputs (scores, distances, keypoints per stride) with four anchors set."""
    scores = {s: np.zeros((GRID[s] ** 2 * 2, 1), np.float32) for s in GRID}
    boxes = {s: np.zeros((GRID[s] ** 2 * 2, 4), np.float32) for s in GRID}
    points = {s: np.zeros((GRID[s] ** 2 * 2, 10), np.float32) for s in GRID}

    def put(stride, cx, cy, anchor, score, dist, kps=((0, 0),) * 5):
        i = _index(stride, cx, cy, anchor)
        scores[stride][i], boxes[stride][i], points[stride][i] = score, dist, np.ravel(kps)

    # BIG: stride 16, cell (10, 6), anchor 1: centre (160, 96); distances x16 = (32, 48, 64, 80)
    #      -> (128, 48, 224, 176) in the input, (64, 24, 112, 88) in the picture; 0.9
    put(16, 10, 6, 1, 0.9, (2, 3, 4, 5), OFFSETS)
    # the same box from stride 8 (cell (20, 12), distances x8), 0.6: suppressed by NMS (IoU 1)
    put(8, 20, 12, 0, 0.6, (4, 6, 8, 10))
    # SMALL: stride 32, cell (2, 1), anchor 0: centre (64, 32); (32, 0, 96, 64) -> (16, 0, 48, 32); 0.95, best score
    put(32, 2, 1, 0, 0.95, (1, 1, 1, 1))
    # under the 0.5 threshold: dropped
    put(32, 15, 15, 1, 0.49, (1, 1, 1, 1))
    return [scores[s] for s in GRID] + [boxes[s] for s in GRID] + [points[s] for s in GRID]


BIG_BOX, SMALL_BOX = [64, 24, 112, 88], [16, 0, 48, 32]
BIG_KPS = (np.array([160, 96]) + np.array(OFFSETS) * 16) / 2  # (72, 40), (88, 40), (80, 48), (72, 56), (88, 56)
EMBED_W = np.random.default_rng(0).normal(size=(3, 512)).astype(np.float32)


def _recogniser(path, output="fc1"):
    """(n, 3, 112, 112) -> the channel means times EMBED_W, (1, 512)."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("GlobalAveragePool", ["input.1"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], [output])]
    graph = helper.make_graph(nodes, "arcface", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT,
                                                                               ["None", 3, 112, 112])],
                              [helper.make_tensor_value_info(output, TensorProto.FLOAT, [1, 512])],
                              [numpy_helper.from_array(EMBED_W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def write_pack(root):
    """The tiny buffalo_l pack in the models folder `root`, where FaceAnalysis users keep it."""
    pack = root / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    _const_model(pack / "det_10g.onnx", "input.1", [1, 3, "?", "?"], dict(zip(NAMES, _detections())))
    _recogniser(pack / "w600k_r50.onnx")
    return pack


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    write_pack(root)
    return root


@pytest.fixture(scope="module")
def analysis(models_root):
    return IF.load(IF.find_pack(ModelFolders(models_root), "buffalo_l"))


def _picture() -> np.ndarray:
    """A gradient picture: red = x, green = y, blue 200 (so the crop's colours say where they came from)."""
    ys, xs = np.mgrid[0:H, 0:W]
    return np.stack([np.minimum(xs, 255), ys, np.full_like(xs, 200)], -1).astype(np.uint8)


def test_letterbox_fills_the_width_and_normalises_by_127_5_and_128():
    x, scale = SCRFD.letterbox(np.full((H, W, 3), 255, np.uint8))
    assert x.shape == (1, 3, 640, 640) and scale == 2.0
    assert np.allclose(x[0, :, :320, :], 127.5 / 128) and np.allclose(x[0, :, 320:, :], -127.5 / 128)
    tall, scale = SCRFD.letterbox(np.zeros((300, 100, 3), np.uint8))  # the height fills: 213 x 640
    assert np.isclose(scale, 640 / 300) and np.allclose(tall[0, :, :, 213:], -127.5 / 128)
    assert np.allclose(tall[0, :, :, :213], -127.5 / 128)  # black stays black: (0 - 127.5) / 128


def test_anchor_centres_are_cell_corners_twice_row_major():
    c = SCRFD.anchor_centres(640, 16)
    assert c.shape == (3200, 2)
    assert c[_index(16, 10, 6, 0)].tolist() == c[_index(16, 10, 6, 1)].tolist() == [160, 96]
    assert c[1].tolist() == [0, 0] and c[2].tolist() == [16, 0] and c[80].tolist() == [0, 16]


def test_decoding_distances_and_keypoints_in_input_pixels():
    scores, boxes, points = SCRFD.decode(_detections())
    big = 12800 + _index(16, 10, 6, 1)
    assert scores[big] == pytest.approx(0.9)
    assert boxes[big].tolist() == [128, 48, 224, 176]
    assert points[big].tolist() == (BIG_KPS * 2).tolist()
    small = 12800 + 3200 + _index(32, 2, 1, 0)
    assert boxes[small].tolist() == [32, 0, 96, 64]


def test_detector_thresholds_suppresses_and_scales_back(analysis):
    boxes, points, scores = SCRFD.detect_faces(analysis.detector, _picture())
    assert scores.tolist() == pytest.approx([0.95, 0.9])  # best first; 0.6 suppressed, 0.49 under 0.5
    assert boxes.tolist() == [SMALL_BOX, BIG_BOX]
    assert np.allclose(points[1], BIG_KPS)


def test_faces_come_largest_first(analysis):
    found = IF.faces(analysis, _picture())
    assert [f.box.tolist() for f in found] == [BIG_BOX, SMALL_BOX]
    assert found[0].score == pytest.approx(0.9) and found[0].embedding is None


def test_similarity_recovers_a_known_transform():
    angle, scale, shift = np.deg2rad(30), 2.5, np.array([40.0, -7.0])
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = IF.TEMPLATE
    dst = src @ (scale * rot).T + shift
    m = IF.similarity(src, dst)
    assert np.allclose(m[:, :2], scale * rot) and np.allclose(m[:, 2], shift)
    # noisy points: the least-squares fit has zero mean residual and no residual rotation direction left
    noisy = dst + np.random.default_rng(1).normal(scale=0.5, size=dst.shape)
    m = IF.similarity(src, noisy)
    assert np.allclose((src @ m[:, :2].T + m[:, 2] - noisy).mean(0), 0, atol=1e-9)


def test_templates_scale_as_norm_crop_does():
    assert np.allclose(IF.template(224), IF.TEMPLATE * 2)
    assert np.allclose(IF.template(256), IF.TEMPLATE * 2 + [16, 0])
    with pytest.raises(InvalidArgument, match="112"):
        IF.template(200)


def test_alignment_maps_the_keypoints_onto_the_template():
    # keypoints = the template at half size, shifted by (30, 10): the crop doubles the picture about them
    kps = IF.TEMPLATE / 2 + [30, 10]
    crop = IF.align(_picture(), kps)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for u, v in [(0, 0), (56, 56), (111, 100), (38, 51)]:
        # crop pixel (u, v) comes from picture (u / 2 + 30, v / 2 + 10): red = x, green = y (bilinear)
        assert abs(int(crop[v, u, 0]) - (u / 2 + 30)) <= 1 and abs(int(crop[v, u, 1]) - (v / 2 + 10)) <= 1
        assert crop[v, u, 2] == 200


def test_embedding_reads_the_aligned_face_in_rgb_scaled_by_127_5(analysis):
    face = IF.largest_face(analysis, _picture())
    assert face.box.tolist() == BIG_BOX
    crop = IF.align(_picture(), BIG_KPS)
    means = ((crop.astype(np.float32) - 127.5) / 127.5).mean((0, 1))  # R, G, B in that order
    assert np.allclose(face.embedding, means @ EMBED_W, atol=1e-3)
    assert np.isclose(np.linalg.norm(face.normed), 1.0)
    assert not np.allclose(face.embedding, means[::-1] @ EMBED_W, atol=1e-2)  # BGR would differ


def test_no_face_is_a_clear_error(tmp_path):
    pack = tmp_path / "blank"
    pack.mkdir()
    zeros = [np.zeros_like(o) for o in _detections()]
    _const_model(pack / "det_10g.onnx", "input.1", [1, 3, 640, 640], dict(zip(NAMES, zeros)))
    _recogniser(pack / "w600k_r50.onnx")
    analysis = IF.load(IF.find_pack(None, str(pack)))
    with pytest.raises(InvalidArgument, match="image: InsightFace found no face"):
        IF.largest_face(analysis, _picture())


def test_missing_and_wrong_files_are_named(tmp_path, models_root):
    folders = ModelFolders(models_root)
    with pytest.raises(InvalidArgument, match="antelopev2.*not installed.*insightface/models/antelopev2"):
        IF.find_pack(folders, "antelopev2")
    half = tmp_path / "half"
    half.mkdir()
    (half / "det_10g.onnx").write_bytes((models_root / "insightface/models/buffalo_l/det_10g.onnx").read_bytes())
    with pytest.raises(InvalidArgument, match="no face recogniser.*w600k_r50.onnx or glintr100.onnx"):
        IF.find_pack(None, str(half))
    (half / "w600k_r50.onnx").write_bytes(b"not a model")
    with pytest.raises(InvalidArgument, match="not an ONNX model"):
        IF.load(IF.find_pack(None, str(half)))
    swapped = {"detector": str(half / "det_10g.onnx"), "recogniser": str(half / "det_10g.onnx")}
    with pytest.raises(InvalidArgument, match="ArcFace recogniser takes"):
        IF.load(swapped)
    swapped = {"detector": str(models_root / "insightface/models/buffalo_l/w600k_r50.onnx"),
               "recogniser": str(models_root / "insightface/models/buffalo_l/w600k_r50.onnx")}
    with pytest.raises(InvalidArgument, match="1 outputs; an SCRFD face detector with keypoints has 9"):
        IF.load(swapped)
