"""Read IP-Adapter files (h94/IP-Adapter's safetensors releases): the base, Plus and Full Face variants.

Every file holds ``ip_adapter.N.to_k_ip.weight`` / ``to_v_ip.weight`` per cross-attention layer
(N = 1, 3, 5, ...) and an image projection whose keys name the variant:

* base: ``image_proj.proj.*`` + ``image_proj.norm.*`` (one linear to 4 tokens);
* Plus (ip-adapter-plus*, plus-face*): ``image_proj.latents``, ``proj_in``, ``proj_out``, ``norm_out``
  and ``layers.N.0.{norm1,norm2,to_q,to_kv,to_out}`` (attention) + ``layers.N.1.{0,1,3}`` (feed-forward);
* Full Face: ``image_proj.proj.0`` / ``proj.2`` (linears) + ``proj.3`` (LayerNorm).

The sizes (image width, Resampler width, heads = to_q rows / 64, depth, tokens) are read from the
shapes; every key of the module they make must be in the file with its shape. FaceID files (their
``perceiver_resampler``, their LoRA keys, or ``proj.0``/``proj.2`` + ``norm``) need InsightFace face
embeddings and are refused by name. The .bin releases are pickles: refused, the .safetensors of the
same name is to be used.
"""
from __future__ import annotations

import re
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.ip_adapter import DIM_HEAD, ImageProjection, IPAdapter, MLPProjection, Resampler
from .files import read_state_dict

_LAYER = re.compile(r"ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight")
_BLOCK = re.compile(r"image_proj\.layers\.(\d+)\.")
SUPPORTED = "the base IP-Adapter, Plus, Plus Face and Full Face are"
NAMES = {"base": "IP-Adapter", "plus": "IP-Adapter Plus", "full": "IP-Adapter Full Face"}


def variant(keys) -> str:
    """The variant of an IP-Adapter file's keys: "base", "plus" or "full" (FaceID: see refusal)."""
    keys = set(keys)
    if any(k.startswith(("image_proj.latents", "image_proj.proj_in.", "image_proj.layers.")) for k in keys):
        return "plus"
    if "image_proj.proj.3.weight" in keys:
        return "full"
    return "base"


def refusal(keys) -> str | None:
    """Why a file of these keys is not run (FaceID), or None."""
    keys = set(keys)
    has = lambda part: any(part in k for k in keys)  # noqa: E731
    if has("perceiver_resampler") or has("lora") or \
            ("image_proj.proj.0.weight" in keys and "image_proj.norm.weight" in keys):
        return f"IP-Adapter FaceID (it needs InsightFace face embeddings) is not supported; {SUPPORTED}"
    return None


def _shape(shapes, key, path, ndim, kind="base") -> tuple:
    shape = shapes.get(key)
    if shape is None:
        what = "not an IP-Adapter: it" if kind == "base" else f"this {NAMES[kind]} file"
        raise CheckpointError(path, f"{what} lacks {key!r}")
    if len(shape) != ndim or not all(shape):
        raise CheckpointError(path, f"{key} has shape {tuple(shape)}; an IP-Adapter's is {ndim}-dimensional")
    return tuple(shape)


def _projection(shapes, path, kind: str):
    """(the image projection, the context width) of a `kind` file."""
    if kind == "plus":
        _, tokens, dim = _shape(shapes, "image_proj.latents", path, 3, kind)
        image_dim = _shape(shapes, "image_proj.proj_in.weight", path, 2, kind)[1]
        width = _shape(shapes, "image_proj.proj_out.weight", path, 2, kind)[0]
        inner = _shape(shapes, "image_proj.layers.0.0.to_q.weight", path, 2, kind)[0]
        ff_inner = _shape(shapes, "image_proj.layers.0.1.1.weight", path, 2, kind)[0]
        if inner % DIM_HEAD:
            raise CheckpointError(path, f"image_proj.layers.0.0.to_q.weight has {inner} rows, not heads of {DIM_HEAD}")
        blocks = sorted({int(m.group(1)) for k in shapes if (m := _BLOCK.match(k))})
        if blocks != list(range(len(blocks))):
            raise CheckpointError(path, f"its image_proj.layers are numbered {blocks}, not 0, 1, 2, ...")
        return Resampler(image_dim, width, dim, len(blocks), inner // DIM_HEAD, ff_inner, tokens), width
    if kind == "full":
        image_dim = _shape(shapes, "image_proj.proj.0.weight", path, 2, kind)[1]
        width = _shape(shapes, "image_proj.proj.3.weight", path, 1, kind)[0]
        return MLPProjection(image_dim, width), width
    proj = _shape(shapes, "image_proj.proj.weight", path, 2)
    width = _shape(shapes, "image_proj.norm.weight", path, 1)[0]
    if proj[0] % width:
        raise CheckpointError(path, f"image_proj.proj.weight {proj} does not fit a norm of ({width},)")
    return ImageProjection(proj[1], width, proj[0] // width), width


def _build(shapes: dict[str, tuple], path: Path) -> IPAdapter:
    """The IPAdapter (meta device) the key shapes describe; CheckpointError (one line) if a key it
    needs is missing or of another shape."""
    reason = refusal(shapes)
    if reason is not None:
        raise CheckpointError(path, reason)
    kind = variant(shapes)
    with torch.device("meta"):
        proj, width = _projection(shapes, path, kind)
    numbers = sorted({int(m.group(1)) for k in shapes if (m := _LAYER.fullmatch(k))})
    if not numbers or numbers != list(range(1, 2 * len(numbers), 2)):
        raise CheckpointError(path, "its ip_adapter layers are not numbered 1, 3, 5, ... (an IP-Adapter file "
                                    "holds one per cross-attention layer)")
    inners = []
    for n in numbers:
        k, v = shapes.get(f"ip_adapter.{n}.to_k_ip.weight"), shapes.get(f"ip_adapter.{n}.to_v_ip.weight")
        if k is None or v is None or tuple(k) != tuple(v) or len(k) != 2 or k[1] != width:
            raise CheckpointError(path, f"ip_adapter.{n}: to_k_ip/to_v_ip must both be (inner, {width})")
        inners.append(k[0])
    with torch.device("meta"):
        adapter = IPAdapter(proj.image_dim, width, inners, image_proj=proj)
    for key, param in adapter.state_dict().items():
        if key not in shapes:
            raise CheckpointError(path, f"this {NAMES[kind]} file lacks {key!r}")
        if tuple(shapes[key]) != tuple(param.shape):
            raise CheckpointError(path, f"{key} has shape {tuple(shapes[key])}; this {NAMES[kind]} needs "
                                        f"{tuple(param.shape)}")
    return adapter


def build_ip_adapter(shapes: dict[str, tuple], path=Path("<file>")) -> IPAdapter:
    """The IPAdapter of a file's key shapes, on the meta device (what load_ip_adapter fills)."""
    return _build({k: tuple(v) for k, v in shapes.items()}, Path(path))


def load_ip_adapter(path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> IPAdapter:
    """An IP-Adapter file (base, Plus or Full Face) as an eval :class:`IPAdapter`; CheckpointError
    (one line) otherwise."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(path, "IP-Adapter files are read as .safetensors only (the .bin/.pt releases are "
                                    "pickles); use the .safetensors file of the same name")
    sd = read_state_dict(path)
    adapter = build_ip_adapter({k: tuple(v.shape) for k, v in sd.items()}, path)
    wanted = adapter.state_dict().keys()
    adapter.load_state_dict({k: sd[k].to(device=device, dtype=dtype) for k in wanted}, assign=True)
    return adapter.eval()


def header_ip_adapter(entries: dict, path) -> IPAdapter:
    """The IPAdapter (meta device) of a safetensors header's entries (read_safetensors_header's),
    checked as load_ip_adapter checks the file: for the faces that look before loading."""
    return build_ip_adapter({k: tuple(v["shape"]) for k, v in entries.items() if isinstance(v, dict)
                             and "shape" in v}, path)
