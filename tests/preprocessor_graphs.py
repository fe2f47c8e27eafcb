"""Shared by the preprocessor node tests: a context whose input folder holds one picture, and a
LoadImage -> preprocessor -> SaveImage graph run through it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def node_ctx(models: Path, tmp_path: Path, picture: Image.Image):
    from opensd.library.models_dir import ModelFolders
    from opensd.workflows import ExecutionContext

    models.mkdir(parents=True, exist_ok=True)
    inputs = tmp_path / "input"
    inputs.mkdir(exist_ok=True)
    picture.save(inputs / "photo.png")
    return ExecutionContext(folders=ModelFolders(models), load_pipeline=None, outputs_dir=tmp_path / "out",
                            inputs_dir=inputs, device="cpu")


def run_node(ctx, node: str, **inputs) -> np.ndarray:
    """The RGB map `node` (with `inputs`) makes of the context's picture."""
    from opensd.workflows import execute

    graph = {"1": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
             "2": {"class_type": node, "inputs": {"image": ["1", 0], **inputs}},
             "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": node}}}
    execute(graph, ctx)
    (saved,) = (Path(ctx.outputs_dir)).rglob(f"{node}*.png")
    return np.asarray(Image.open(saved).convert("RGB"))


class _RunsCode:
    def __reduce__(self):
        import os
        return (os.system, ("echo pwned",))


def write_code_pickle(path: Path, key: str = "conv1_1.weight") -> Path:
    """A pickle that would run a shell command when unpickled without restriction (as a weight file)."""
    import pickle

    with open(path, "wb") as f:
        pickle.dump({key: _RunsCode()}, f)
    return path
