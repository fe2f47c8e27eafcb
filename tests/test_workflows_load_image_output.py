"""LoadImageOutput (ComfyUI's nodes.py): an image by its annotated name ("x.png [output]" in the
output folder, " [temp]" in the temp folder, no annotation in the input folder, as
get_annotated_filepath reads them), pixels and 1 - alpha as LoadImage gives them, and no name that
leaves its folder."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from opensd.workflows import ExecutionContext, validate_prompt
from opensd.workflows.types import NODES, GraphError, NodeCall


@pytest.fixture
def ctx(tmp_path):
    c = ExecutionContext(None, lambda name: None, tmp_path / "output", tmp_path / "input", temp_dir=tmp_path / "temp")
    for folder in (c.outputs_dir / "sub", c.inputs_dir, c.temp_dir):
        folder.mkdir(parents=True)
    return c


def _rgba(path, red: int, alpha: int):
    px = np.zeros((3, 4, 4), dtype=np.uint8)
    px[..., 0] = red
    px[..., 1] = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    px[..., 3] = alpha
    Image.fromarray(px, "RGBA").save(path)


def _load(ctx, name):
    return NODES["LoadImageOutput"].fn(NodeCall(ctx, "1", {}, lambda *a: None), image=name)


def test_loads_from_the_folder_its_annotation_names(ctx):
    _rgba(ctx.outputs_dir / "sub" / "x.png", 200, 51)
    _rgba(ctx.inputs_dir / "x.png", 10, 255)
    _rgba(ctx.temp_dir / "x.png", 30, 0)
    image, mask = _load(ctx, "sub/x.png [output]")
    assert image.shape == (1, 3, 4, 3) and mask.shape == (1, 3, 4)
    assert torch.allclose(image[0, ..., 0], torch.full((3, 4), 200 / 255))
    assert torch.allclose(image[0, ..., 1], torch.arange(12.0).reshape(3, 4) * 20 / 255)
    assert torch.allclose(mask, torch.full((1, 3, 4), 1 - 51 / 255))
    assert torch.allclose(_load(ctx, "x.png")[0][0, 0, 0, 0], torch.tensor(10 / 255))  # ComfyUI: input folder
    assert torch.allclose(_load(ctx, "x.png [input]")[0][0, 0, 0, 0], torch.tensor(10 / 255))
    image, mask = _load(ctx, "x.png [temp]")
    assert torch.allclose(image[0, 0, 0, 0], torch.tensor(30 / 255)) and mask.eq(1).all()


def _graph(name) -> dict:
    return {"l": {"class_type": "LoadImageOutput", "inputs": {"image": name}},
            "o": {"class_type": "PreviewImage", "inputs": {"images": ["l", 0]}}}


def test_validation_accepts_output_files_and_refuses_names_outside(ctx, tmp_path):
    _rgba(ctx.outputs_dir / "sub" / "x.png", 200, 51)
    _rgba(tmp_path / "secret.png", 1, 1)
    os.symlink(tmp_path / "secret.png", ctx.outputs_dir / "link.png")
    assert validate_prompt(_graph("sub/x.png [output]"), ctx) == {}
    for name in ("../secret.png [output]", str(tmp_path / "secret.png") + " [output]", "link.png [output]",
                 "sub/x.png", "missing.png [output]", "", None, 5, "a\x00b.png [output]"):
        with pytest.raises(GraphError) as e:
            validate_prompt(_graph(name), ctx)
        (error,) = e.value.payload["node_errors"]["l"]["errors"]
        assert error["type"] == "custom_validation_failed", (name, error)
        assert error["details"] == f"Invalid image file: {name}"
    with pytest.raises(FileNotFoundError, match="Invalid image file: ../secret.png"):
        _load(ctx, "../secret.png [output]")
