"""--backend openvino: the UNet runs through OpenVINO on the CPU (optional: pip install "opensd[openvino]").

Our own UNet module, with whatever LoRAs are patched into its weights at the time, is converted by
`openvino.convert_model` (traced from an fp32 twin: OpenVINO's converter mishandles bf16 weights in
channels_last) and saved under ~/.cache/opensd/openvino/<key>/, the key being a SHA-256 of the
weights' bytes, names, dtypes and shapes, the UNet's config, the calling signature, the inference
precision and OpenVINO's version. The next process with the same weights reads the saved model instead
of converting (SD 1.5: about 90 s to convert, 2 s to read and compile). Each input shape (resolution,
batch) is compiled with static shapes, the two most recent kept; bf16 inference where the pipeline
runs in bf16 (weights stored in fp16 then), else fp32.

A weight change in place (a LoRA patch) is seen through the parameters' version counters, as
pipeline/compiled.py does, and leads to the model for the new weights. Calls the converted graph
cannot represent run eagerly: gradients, ControlNet residuals, forward hooks (FreeU, offloading),
circular padding (A1111's Tiling).
"""
from __future__ import annotations

import copy
import hashlib
import os
import shutil
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import InvalidArgument
from ..models.unet import UNetModel

CACHE = Path(os.environ.get("OPENSD_OPENVINO_CACHE", Path.home() / ".cache" / "opensd" / "openvino"))
KEEP_COMPILED = 2  # input shapes kept compiled (a hires fix alternates two)


def _openvino():
    # OpenVINO's converter reports usage to Intel at import unless its telemetry package is
    # missing; opensd never phones home, so the package is hidden from it.
    sys.modules.setdefault("openvino_telemetry", None)
    try:
        import openvino
    except ImportError:
        raise InvalidArgument('backend: openvino is not installed; pip install "opensd[openvino]"') from None
    return openvino


def weights_key(module: nn.Module, *extra: str) -> str:
    """SHA-256 of the module's state (names, dtypes, shapes, bytes) and `extra` strings."""
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().data)
    for s in extra:
        h.update(s.encode())
    return h.hexdigest()


def _stamp(module: nn.Module) -> tuple:
    return tuple((id(p), p._version) for p in module.parameters())


def _eager_only(module: nn.Module, control) -> bool:
    """Calls the converted graph would get wrong."""
    if control is not None or torch.is_grad_enabled():
        return True
    return any(m._forward_hooks or m._forward_pre_hooks or getattr(m, "padding_mode", "zeros") != "zeros"
               for m in module.modules())


class OpenVINOUNet:
    """Runs `unet`'s inference calls through OpenVINO (install with `use_openvino`)."""

    def __init__(self, unet: UNetModel, bf16: bool, threads: int | None = None):
        self.ov = _openvino()
        self.unet, self.bf16 = unet, bf16
        self.core = self.ov.Core()
        self.config = {"INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32", "PERFORMANCE_HINT": "LATENCY",
                       "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        self.stamp: tuple | None = None
        self.key: str | None = None
        self.compiled: OrderedDict = OrderedDict()  # (key, input shapes) -> compiled model
        self.conversions = 0  # how many times this process converted (a cache hit converts none)

    def __call__(self, x, timesteps, context, y=None, control=None):
        if _eager_only(self.unet, control):
            return self.unet._call_impl(x, timesteps, context, y, control)
        inputs = [x, timesteps.expand(x.shape[0]), context] + ([] if y is None else [y])
        arrays = [t.detach().float().cpu().numpy() for t in inputs]
        out = self._compiled(arrays)(arrays)[0]
        dtype = next(self.unet.parameters()).dtype
        return torch.from_numpy(np.ascontiguousarray(out)).to(x.device, dtype)

    def _compiled(self, arrays: list[np.ndarray]):
        signature = f"inputs={len(arrays)}"
        if _stamp(self.unet) != self.stamp:  # new weights (or first call): find their model
            self.key = weights_key(self.unet, repr(self.unet.config), signature, self.config["INFERENCE_PRECISION_HINT"],
                                   self.ov.get_version())
            self.stamp = _stamp(self.unet)
        shapes = (self.key, tuple(a.shape for a in arrays))
        if shapes in self.compiled:
            self.compiled.move_to_end(shapes)
            return self.compiled[shapes]
        model = self.core.read_model(self._saved(arrays))
        model.reshape({port: self.ov.PartialShape(list(a.shape)) for port, a in zip(model.inputs, arrays)})
        self.compiled[shapes] = self.core.compile_model(model, "CPU", self.config)
        while len(self.compiled) > KEEP_COMPILED:
            self.compiled.popitem(last=False)
        return self.compiled[shapes]

    def _saved(self, arrays: list[np.ndarray]) -> Path:
        """The converted model of the current weights on disk (converted now if it is not there)."""
        folder = CACHE / self.key
        xml = folder / "unet.xml"
        if xml.is_file():
            return xml
        twin = copy.deepcopy(self.unet).float().to(memory_format=torch.contiguous_format)
        for m in twin.modules():
            if hasattr(m, "kv_cache"):
                m.kv_cache = None  # no cross-attention K/V reuse inside the traced graph
        example = tuple(torch.from_numpy(a) for a in arrays)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's deprecation and shape-as-constant notes
            model = self.ov.convert_model(twin, example_input=example)
        del twin
        part = folder.with_name(folder.name + f".part{os.getpid()}")
        shutil.rmtree(part, ignore_errors=True)
        part.mkdir(parents=True)
        self.ov.save_model(model, part / "unet.xml", compress_to_fp16=self.bf16)
        try:
            part.rename(folder)  # atomic: another process's finished copy wins
        except OSError:
            shutil.rmtree(part, ignore_errors=True)
        self.conversions += 1
        return xml


def check_openvino(device: torch.device) -> None:
    """InvalidArgument (one line) unless OpenVINO is installed and `device` is the CPU."""
    if device.type != "cpu":
        raise InvalidArgument(f"backend: openvino runs on the CPU, not {device.type} (use --device cpu)")
    _openvino()


def use_openvino(pipe) -> OpenVINOUNet:
    """Run `pipe`'s UNet through OpenVINO from now on (CPU, UNet families only)."""
    check_openvino(pipe.device)
    network = pipe.family.network(pipe.model)
    if not isinstance(network, UNetModel):
        raise InvalidArgument(f"backend: openvino runs UNet models (SD 1.x/2.x/SDXL), not {pipe.config.family}")
    runner = OpenVINOUNet(network, bf16=pipe.dtype == torch.bfloat16)
    network._compiled_call_impl = runner  # what nn.Module.compile sets: __call__ goes through it
    return runner
