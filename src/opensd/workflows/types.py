"""What flows between workflow nodes, how a node is declared, and the context a run gets.

Values on the wires follow ComfyUI's conventions so graphs written for it mean the same here:

* MODEL / CLIP / VAE: :class:`ModelRef`, :class:`ClipRef`, :class:`VaeRef` -- a loaded
  :class:`~opensd.pipeline.pipeline.Pipeline` plus the LoRAs stacked on it by LoraLoader nodes.
  LoRAs are applied to the shared pipeline just before the weights are used, so one loaded
  checkpoint serves several branches with different LoRA stacks.
* CONDITIONING: ``[[context (1, T, D), {"pooled_output": tensor | None, ...}], ...]``, the extras
  under ComfyUI's keys ("area", "mask", "strength", "start_percent", "width", ...; see conds.py).
* SAMPLER, NOISE: :class:`SamplerRef`, :class:`NoiseRef`; SIGMAS: a 1-D float tensor; GUIDER: a
  :class:`~opensd.workflows.guiders.Guider`.
* LATENT: ``{"samples": (B, C, h, w), "noise_mask"?: (B|1, 1, H, W)}``. As in ComfyUI the samples
  are the VAE's *raw* latents; the model's scaling factor is applied inside the sampler.
* IMAGE: float (B, H, W, C) in 0..1. MASK: float (B, H, W), 1 = repaint.
"""
from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..errors import InvalidArgument, OpenSDError

MAX_RESOLUTION = 16384
MAX_SEED = 0xFFFFFFFFFFFFFFFF
# The most values one tensor a node makes from a graph's numbers may hold (4 GiB of float32, a
# 16384 x 16384 RGB image fits): ComfyUI's per-input maxima multiply out to terabytes (EmptyImage
# 16384 x 16384 x 4096), which either fail deep in the allocator or, below the machine's memory,
# take it all. Checked before allocating (check_size).
MAX_ELEMENTS = 1 << 30
# The most tensor values one graph's node outputs may hold together (16 GiB of float32): each node
# within MAX_ELEMENTS, ten of them kept for the graph's run would still take the machine.
MAX_GRAPH_ELEMENTS = 4 * MAX_ELEMENTS


class GraphError(OpenSDError):
    """A prompt (API-format graph) that cannot run. ``payload`` is the body ComfyUI answers
    ``POST /prompt`` with (HTTP 400): ``{"error": {...}, "node_errors": {...}}``."""

    def __init__(self, error: dict, node_errors: dict | None = None):
        self.payload = {"error": error, "node_errors": node_errors or {}}
        super().__init__(f"{error.get('message', 'invalid prompt')}: {error.get('details', '')}".rstrip(": "))


def check_size(what: str, *shape: int) -> None:
    """Refuse, in one line naming `what`, a tensor of `shape` over MAX_ELEMENTS values or with a
    side of 0, before it is made."""
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise InvalidArgument(f"{what}: {' x '.join(map(str, shape))} is {count:,} values, more than the "
                              f"{MAX_ELEMENTS:,} one node may make; ask for fewer or smaller images")
    if count == 0:
        raise InvalidArgument(f"{what}: {' x '.join(map(str, shape))} holds no values")


class NodeError(OpenSDError):
    """A node raised while running. The fields are those of ComfyUI's ``execution_error`` message."""

    def __init__(self, node_id: str, class_type: str, exc: BaseException, executed: list[str], tb: list[str]):
        self.node_id = node_id
        self.node_type = class_type
        self.exception_message = str(exc)
        self.exception_type = f"{type(exc).__module__}.{type(exc).__qualname__}".removeprefix("builtins.")
        self.traceback = tb
        self.executed = executed
        super().__init__(f"node {node_id} ({class_type}): {exc}")


# --- values on the wires ----------------------------------------------------------------------

@dataclass(frozen=True)
class LoraEntry:
    path: Path
    unet: float
    te: float


@dataclass(frozen=True)
class MergeEntry:
    """A merge node's patch (loras.py): the weights of `base` (the MODEL or CLIP before the merge)
    times self_strength plus those of `other` times other_strength."""
    base: Any
    other: Any
    self_strength: float
    other_strength: float


@dataclass(frozen=True)
class ModelRef:
    pipe: Any                      # opensd.pipeline.pipeline.Pipeline
    name: str
    loras: tuple[LoraEntry, ...] = ()
    # ComfyUI's model patches (derive with dataclasses.replace, so they stack as its clones do):
    sampling: Any = None           # model_sampling.ModelSampling replacing the checkpoint's own
    # scaled(z)/unscaled(z) in place of the VAE config's (a yaml's scale_factor, Playground v2.5's)
    latent_format: Any = None
    pre_cfg_functions: tuple = ()  # fn(PreCfgArgs) -> [cond, uncond] before CFG, in CFGGuider (APG, TCFG)
    cfg_function: Any = None       # sampler_cfg_function(CfgArgs) -> x - denoised (RescaleCFG, PerpNeg)
    post_cfg_functions: tuple = ()  # fn(PostCfgArgs) -> denoised, after CFG (CFGZeroStar, PAG)
    # fn(CalcCondArgs) -> [cond, uncond] predictions of a CFGGuider's step (SkipLayerGuidanceDiTSimple)
    calc_cond_batch_function: Any = None
    # fn(network, sigma) -> a context manager around one network call (PatchModelAddDownscale)
    network_patches: tuple = ()
    output_block_patches: tuple = ()  # fn(h, skip) -> (h, skip) before each up block's concat (FreeU)
    # fn(sigma, mask, sampling, sigmas) -> this step's noise mask (DifferentialDiffusion)
    denoise_mask_function: Any = None
    merge: MergeEntry | None = None  # ModelMergeSimple/Add/Subtract
    # differences added to the network's weights after the merge, before the LoRAs (loras.py):
    # objects with check(params) and deltas(params) -> (name, float32 diff) (Fooocus inpaint's patch)
    weight_patches: tuple = ()
    # EasyCache / LazyCache: steps whose prediction is reused from the last (step_cache.StepCache)
    step_cache: Any = None
    # ControlNet hints on every conditioning entry (nodes_controlnet.ControlHint chain heads, applied
    # after the entry's own): ZImageFunControlnet's model patch
    model_controls: tuple = ()


@dataclass(frozen=True)
class ClipRef:
    pipe: Any
    name: str
    loras: tuple[LoraEntry, ...] = ()
    clip_skip: int | None = None
    merge: MergeEntry | None = None  # CLIPMergeSimple/Add/Subtract
    # CLIPAttentionMultiply's q, k, v, out factors (stacked nodes multiply them): clip_patches.py
    attention: tuple[float, float, float, float] | None = None
    t5_padding: tuple[int, int] | None = None  # T5TokenizerOptions' (min_padding, min_length): nodes_dit.py


@dataclass(frozen=True)
class VaeRef:
    pipe: Any
    name: str


@dataclass(frozen=True)
class SamplerRef:
    """SAMPLER: a sampler by ComfyUI name, with the extra options its sampler function takes."""
    name: str
    options: tuple[tuple[str, Any], ...] = ()


@dataclass(frozen=True)
class NoiseRef:
    """NOISE: RandomNoise's seed, or DisableNoise (seed None: zeros, and seed 0 for the sampler)."""
    seed: int | None


# --- node declarations --------------------------------------------------------------------------

@dataclass(frozen=True)
class Choices:
    """An enum input whose values come from the run's context: model files of a ``ModelFolders``
    kind ("checkpoints", "loras", ...), "input_images" (images in ``inputs_dir``) or
    "input_latents" (.latent files at its top). ``strict=False``: listed in object_info but checked
    by the node's own ``check`` (ComfyUI's VALIDATE_INPUTS)."""
    source: str
    strict: bool = True

    def values(self, ctx: ExecutionContext | None) -> list[str] | None:
        """The allowed names, or None when there is no context to list them from."""
        if ctx is None:
            return None
        if self.source == "input_images":
            return list_input_images(ctx.inputs_dir)
        if self.source == "input_latents":
            return list_input_latents(ctx.inputs_dir)
        if ctx.folders is None:
            return None
        return [m.name for m in ctx.folders.list(self.source)]


# An input spec is ComfyUI's (type, options) pair: type is "INT"/"FLOAT"/"STRING"/"BOOLEAN", a
# link type ("MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK", "CONTROL_NET"),
# a list of allowed values, or a Choices resolved per context.
InputSpec = tuple
# The options of an input ComfyUI declares as (TYPE, {}) rather than (TYPE,): object_info shows the
# empty options (["WEBCAM", {}]) where an input written ("X", {}) here shows ["X"]
SHOWN_EMPTY: Any = MappingProxyType({})


@dataclass
class NodeCall:
    """Given to every node function: the run's context and reporting hooks."""
    ctx: ExecutionContext
    node_id: str
    prompt: dict
    emit: Callable[[str, object], None]

    def progress(self, value: int, maximum: int) -> None:
        self.emit("progress", {"value": value, "max": maximum, "node": self.node_id})


@dataclass(frozen=True)
class NodeDef:
    name: str
    fn: Callable[..., Any]          # fn(call: NodeCall, **inputs) -> tuple | {"result": tuple, "ui": dict}
    required: dict[str, InputSpec]
    outputs: tuple[str, ...] = ()
    output_names: tuple[str, ...] | None = None
    optional: dict[str, InputSpec] = field(default_factory=dict)
    hidden: dict[str, str] = field(default_factory=dict)
    category: str = ""
    display_name: str | None = None
    description: str = ""
    output_node: bool = False
    experimental: bool = False      # ComfyUI's EXPERIMENTAL: object_info says "experimental": true
    deprecated: bool = False        # ComfyUI's DEPRECATED (V3 is_deprecated): "deprecated": true
    # check(ctx, inputs) -> None or an error text (ComfyUI's VALIDATE_INPUTS); literal inputs only (a
    # linked one is absent: the node checks it when it runs)
    check: Callable[[ExecutionContext | None, dict], str | None] | None = None
    # fingerprint(ctx, inputs) -> str that changes when the node's outside world does (IS_CHANGED)
    fingerprint: Callable[[ExecutionContext, dict], str] | None = None
    # ComfyUI's INPUT_IS_LIST / OUTPUT_IS_LIST (executor.py): the node gets every input as a list
    # (called once), and which of its outputs are lists of values (ListOutput)
    input_is_list: bool = False
    output_is_list: tuple[bool, ...] = ()
    # where ComfyUI defines the node (object_info's "python_module"): "nodes" for its core file,
    # "comfy_extras.nodes_mask" etc. for the bundled extras
    module: str = "nodes"


class ListOutput(list):
    """An output slot holding several values (ComfyUI's OUTPUT_IS_LIST, or a node run once per item
    of a list input): a node reading it runs once per item, unless it takes its inputs as lists."""


NODES: dict[str, NodeDef] = {}


def register(node: NodeDef) -> NodeDef:
    if node.name in NODES:
        raise ValueError(f"node type {node.name} registered twice")
    NODES[node.name] = node
    return node


# --- the run's context ---------------------------------------------------------------------------

@dataclass
class ExecutionContext:
    folders: Any                                  # opensd.library.models_dir.ModelFolders
    load_pipeline: Callable[[str], Any]           # checkpoint name -> Pipeline (the caller caches)
    outputs_dir: Path
    inputs_dir: Path
    should_stop: Callable[[], bool] = lambda: False
    cache: Any = None                             # executor.OutputCache, reused across runs
    temp_dir: Path | None = None                  # PreviewImage files ("type": "temp")
    extra_pnginfo: dict | None = None             # extra_data["extra_pnginfo"] ("workflow"), saved in PNGs
    previews: bool = True                         # send ("preview", PIL image) after sampling steps
    device: str | None = None                     # where part loaders (VAELoader, UNETLoader, CLIPLoader...)
    precision: str = "fp32"                       # put their weights: a device name (None: auto), fp32/fp16/bf16

    def temp_folder(self) -> Path:
        return Path(self.temp_dir) if self.temp_dir is not None else Path(tempfile.gettempdir()) / "opensd-temp"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_input_images(inputs_dir: Path) -> list[str]:
    """Image files under ``inputs_dir`` as forward-slash relative names, sorted (LoadImage's list)."""
    root = Path(inputs_dir)
    if not root.is_dir():
        return []
    base = root.resolve()
    names = []
    for p in root.rglob("*"):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            try:
                p.resolve().relative_to(base)
            except ValueError:  # a symlink leading outside
                continue
            names.append(p.relative_to(root).as_posix())
    return sorted(names)


def list_input_latents(inputs_dir: Path) -> list[str]:
    """The .latent files at the top of ``inputs_dir``, sorted (LoadLatent's list: ComfyUI's does not
    look into subfolders)."""
    root = Path(inputs_dir)
    if not root.is_dir():
        return []
    base = root.resolve()
    return sorted(p.name for p in root.iterdir()
                  if p.suffix == ".latent" and p.is_file() and p.resolve().is_relative_to(base))
