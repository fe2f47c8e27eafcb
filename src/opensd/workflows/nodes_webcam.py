"""ComfyUI's WebcamCapture (comfy_extras/nodes_webcam.py): the frame the frontend captured and uploaded,
read as LoadImage reads a file (its IMAGE only). The name may carry ComfyUI's folder annotation
("webcam/123.png [temp]"); width and height are the frontend's capture size and change nothing here.
With capture_on_queue the node runs on every queueing (a new capture each time), as ComfyUI's
IS_CHANGED makes it; without, when the file changes."""
from __future__ import annotations

import time

from .nodes_image import annotated_path, input_file_check, input_file_fingerprint, load_image_output
from .types import MAX_RESOLUTION, SHOWN_EMPTY, NodeDef, register

_file_fingerprint = input_file_fingerprint("image", annotated_path)


def webcam_capture(call, image, width=0, height=0, capture_on_queue=True):
    return (load_image_output(call, image)[0],)


def _fingerprint(ctx, inputs) -> str:
    return repr(time.time_ns()) if inputs.get("capture_on_queue", True) else _file_fingerprint(ctx, inputs)


def _size():
    return ("INT", {"default": 0, "min": 0, "max": MAX_RESOLUTION, "step": 1})


register(NodeDef(
    "WebcamCapture", webcam_capture,
    {"image": ("WEBCAM", SHOWN_EMPTY), "width": _size(), "height": _size(),
     "capture_on_queue": ("BOOLEAN", {"default": True})},
    ("IMAGE",), category="image", display_name="Webcam Capture", module="comfy_extras.nodes_webcam",
    check=input_file_check("image", annotated_path), fingerprint=_fingerprint))
