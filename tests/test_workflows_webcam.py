"""ComfyUI's WebcamCapture (comfy_extras/nodes_webcam.py): the uploaded capture read as LoadImage
reads it, from the folder its annotation names; a fresh run on every queueing with
capture_on_queue, else only when the file changes; /object_info as ComfyUI's."""
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_workflows_object_info import check_object_info

from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, GraphError, execute
from opensd.workflows.types import NODES


@pytest.fixture
def ctx(tmp_path):
    ctx = ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                           temp_dir=tmp_path / "temp")
    (ctx.temp_folder() / "webcam").mkdir(parents=True)
    Image.new("RGB", (5, 3), (255, 0, 0)).save(ctx.temp_folder() / "webcam" / "cap.png")
    ctx.inputs_dir.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (4, 2), (0, 0, 255, 10)).save(ctx.inputs_dir / "still.png")
    return ctx


def _graph(image, capture_on_queue=True):
    return {"w": {"class_type": "WebcamCapture", "inputs": {"image": image, "width": 640, "height": 480,
                                                            "capture_on_queue": capture_on_queue}},
            "p": {"class_type": "PreviewAny", "inputs": {"source": ["w", 0]}}}


def test_the_capture_is_read_from_its_folder(ctx):
    fn, call = NODES["WebcamCapture"].fn, SimpleNamespace(ctx=ctx)
    (red,) = fn(call, "webcam/cap.png [temp]", 640, 480, True)
    assert red.shape == (1, 3, 5, 3) and torch.equal(red[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]))
    (blue,) = fn(call, "still.png", 0, 0, False)  # the image only: no mask output
    np.testing.assert_array_equal(blue[0, 0, 0].numpy(), [0.0, 0.0, 1.0])
    assert "tensor" in execute(_graph("webcam/cap.png [temp]"), ctx)["p"]["text"][0]


def test_capture_on_queue_reruns_every_time_otherwise_when_the_file_changes(ctx):
    fp = NODES["WebcamCapture"].fingerprint
    live = {"image": "still.png", "capture_on_queue": True}
    assert fp(ctx, live) != fp(ctx, live)
    still = {"image": "still.png", "capture_on_queue": False}
    first = fp(ctx, still)
    assert fp(ctx, still) == first
    Image.new("RGB", (4, 2), (1, 2, 3)).save(ctx.inputs_dir / "still.png")
    assert fp(ctx, still) != first


def test_a_missing_file_fails_validation(ctx):
    with pytest.raises(GraphError) as e:
        execute(_graph("webcam/gone.png [temp]"), ctx)
    assert "Invalid image file: webcam/gone.png [temp]" in json.dumps(e.value.payload)


def test_object_info_matches_comfyui():
    size = ["INT", {"default": 0, "min": 0, "max": 16384, "step": 1}]
    check_object_info("WebcamCapture", (
        {"image": ["WEBCAM", {}], "width": size, "height": size, "capture_on_queue": ["BOOLEAN", {"default": True}]},
        ["IMAGE"], "image", "Webcam Capture", "comfy_extras.nodes_webcam", {}))
