"""User-supplied ONNX files run through onnxruntime (an optional install; the extras ``dwpose``,
``faceid`` and ``tagger`` each bring it): DWPose's pose models, InsightFace's packs, the WD14 taggers. An ONNX file is a protobuf
graph; nothing in it is executed as Python code. Depends only on opensd.errors."""
from __future__ import annotations

from .errors import InvalidArgument


def onnxruntime(label: str, extra: str):
    """The onnxruntime module, or an InvalidArgument for `label` saying how to install it (opensd[`extra`])."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise InvalidArgument(f'{label}: onnxruntime is not installed; pip install "opensd[{extra}]"') from None
    return ort


def session(ort, path, device: str, label: str):
    """An InferenceSession of the file at `path` (CUDA first when `device` is CUDA and onnxruntime has it),
    or an InvalidArgument for `label` when the file is not a model onnxruntime can run."""
    providers = ["CPUExecutionProvider"]
    if str(device).startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as e:  # onnxruntime raises its own error kinds for a file that is not a model
        raise InvalidArgument(f"{label}: {path} is not an ONNX model onnxruntime can run ({e})") from None
