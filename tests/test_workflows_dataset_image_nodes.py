"""ComfyUI's dataset image transforms (comfy_extras.nodes_dataset): sizes and values worked out from
its formulas (8-bit truncation n = floor(255 x) for the PIL-based ones), per-image processing of a
batch, the grid's layout, and the size and channel checks."""
import pytest
import torch

from opensd.errors import InvalidArgument
from opensd.workflows import NODES
from opensd.workflows import nodes_dataset_image as D


def run(name, images, **options):
    return NODES[name].fn(None, images, **options)[0]


def q(x):  # ComfyUI's tensor -> 8-bit -> tensor round trip
    return torch.floor(torch.as_tensor(x) * 255).clamp(0, 255) / 255


def test_brightness_contrast_normalize():
    x = torch.tensor([0.0, 0.25, 0.5, 0.9]).reshape(1, 1, 4, 1).expand(1, 1, 4, 3)
    torch.testing.assert_close(run("AdjustBrightness", x, factor=1.5)[0, 0, :, 0],
                               torch.tensor([0.0, 0.375, 0.75, 1.0]))
    torch.testing.assert_close(run("AdjustContrast", x, factor=2.0)[0, 0, :, 0], torch.tensor([0.0, 0.0, 0.5, 1.0]))
    torch.testing.assert_close(run("NormalizeImages", x, mean=0.5, std=0.25)[0, 0, :, 0],
                               torch.tensor([-2.0, -1.0, 0.0, 1.6]))


def test_resizes_by_edge_keep_the_aspect_ratio_truncated():
    img = torch.full((2, 20, 30, 3), 0.5)  # two 30 x 20 images
    out = run("ResizeImagesByShorterEdge", img, shorter_edge=10)
    assert out.shape == (2, 10, 15, 3)       # h is shorter: h = 10, w = int(30 * 10 / 20)
    torch.testing.assert_close(out, torch.full_like(out, float(q(0.5))))  # 127 / 255: truncated, not rounded
    assert run("ResizeImagesByLongerEdge", img, longer_edge=7).shape == (2, 4, 7, 3)  # int(20 * 7 / 30) = 4
    tall = torch.rand(1, 9, 4, 3)
    assert run("ResizeImagesByShorterEdge", tall, shorter_edge=8).shape == (1, 18, 8, 3)
    assert run("ResizeImagesByLongerEdge", tall, longer_edge=3).shape == (1, 3, 1, 3)  # int(4 * 3 / 9) = 1
    with pytest.raises(InvalidArgument, match="would be resized to 0 x 1"):
        run("ResizeImagesByLongerEdge", torch.rand(1, 9, 2, 3), longer_edge=1)
    with pytest.raises(InvalidArgument, match="1 channels"):
        run("ResizeImagesByLongerEdge", torch.rand(1, 9, 2, 1), longer_edge=18)


def test_center_crop_takes_the_middle_of_each_image():
    img = torch.rand(2, 7, 9, 3)
    out = run("CenterCropImages", img, width=4, height=3)
    # left = (9 - 4) // 2 = 2, top = (7 - 3) // 2 = 2
    torch.testing.assert_close(out, q(img[:, 2:5, 2:6]), atol=1e-6, rtol=0)
    assert run("CenterCropImages", img, width=20, height=5).shape == (2, 5, 9, 3)  # wider than the image: all


def test_image_grid_layout():
    red, green, blue = (torch.zeros(1, 8, 8, 3).index_fill_(3, torch.tensor([c]), 1.0) for c in range(3))
    two = torch.cat([green, blue])
    grid = NODES["ImageGrid"].fn(None, [red, two], [2], [32], [32], [4])[0]
    assert grid.shape == (1, 2 * 32 + 4, 2 * 32 + 4, 3)     # 3 cells in 2 columns: 2 rows
    assert grid[0, 0, 0].tolist() == [1.0, 0.0, 0.0]         # red at row 0 column 0
    assert grid[0, 0, 36].tolist() == [0.0, 1.0, 0.0]        # green at column 1 (x = 32 + 4)
    assert grid[0, 36, 0].tolist() == [0.0, 0.0, 1.0]        # blue on row 1
    assert grid[0, 10, 33].tolist() == [0.0, 0.0, 0.0]       # padding
    assert grid[0, 50, 50].tolist() == [0.0, 0.0, 0.0]       # the empty fourth cell
    with pytest.raises(InvalidArgument, match="the list is empty"):
        NODES["ImageGrid"].fn(None, [], [2], [32], [32], [4])


def test_grid_in_a_graph_gets_a_list(tmp_path):
    from opensd.library.models_dir import ModelFolders
    from opensd.workflows import ExecutionContext, execute
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    g = {"a": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 3, "color": 0xFF0000}},
         "c": {"class_type": "AdjustBrightness", "inputs": {"images": ["a", 0], "factor": 0.5}},
         "g": {"class_type": "ImageGrid", "inputs": {"images": ["c", 0], "columns": 3, "cell_width": 32,
                                                      "cell_height": 32, "padding": 0}},
         "s": {"class_type": "GetImageSize", "inputs": {"image": ["g", 0]}},
         "p": {"class_type": "PreviewAny", "inputs": {"source": ["s", 0]}}}
    assert list(execute(g, ctx)["p"]["text"]) == ["96"]
    assert D.from_pil(D.to_pil(torch.full((2, 2, 3), 0.5))).shape == (1, 2, 2, 3)
