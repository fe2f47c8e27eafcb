"""Read IP-Adapter files (h94/IP-Adapter's and h94/IP-Adapter-FaceID's releases): the base, Plus, Full
Face, FaceID (and Portrait) and FaceID Plus (v2) variants.

Every file holds ``ip_adapter.N.to_k_ip.weight`` / ``to_v_ip.weight`` per cross-attention layer
(N = 1, 3, 5, ...) and an image projection whose keys name the variant:

* base: ``image_proj.proj.*`` + ``image_proj.norm.*`` (one linear to 4 tokens);
* Plus (ip-adapter-plus*, plus-face*): ``image_proj.latents``, ``proj_in``, ``proj_out``, ``norm_out``
  and ``layers.N.0.{norm1,norm2,to_q,to_kv,to_out}`` (attention) + ``layers.N.1.{0,1,3}`` (feed-forward);
* Full Face: ``image_proj.proj.0`` / ``proj.2`` (linears) + ``proj.3`` (LayerNorm);
* FaceID, FaceID Portrait: ``image_proj.proj.0`` / ``proj.2`` (linears) + ``image_proj.norm`` (tokens =
  proj.2's rows / the norm's width: 4, Portrait 16);
* FaceID Plus (v2): those + ``image_proj.perceiver_resampler.{proj_in,proj_out,norm_out,layers.N...}``
  (v2 differs by its name only: "v2" in it, as the A1111 extension and cubiq's nodes tell them apart).

FaceID files also carry LoRA weights for the UNet's attention (``ip_adapter.N.to_q_lora.down.weight``,
...): not read here; the same LoRA ships as the separate ``*_lora.safetensors`` loaded as a LoRA.

The sizes (image width, Resampler width, heads = to_q rows / 64, depth, tokens) are read from the
shapes; every key of the module they make must be in the file with its shape. The FaceID releases are
pickles (.bin) only: pickles are read through opensd's restricted loader (checkpoints/safe_pickle:
tensors and plain containers, no code). FaceID Portrait "unnorm" (SDXL) is refused.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.ip_adapter import DIM_HEAD, ImageProjection, IPAdapter, MLPProjection, Resampler
from ..models.ip_adapter_faceid import FaceIDPlusProjection, FaceIDProjection
from .files import read_safetensors_header, read_state_dict, sniff_format

_LAYER = re.compile(r"ip_adapter\.(\d+)\.(to_k_ip|to_v_ip)\.weight")
_BLOCK = re.compile(r"image_proj\.layers\.(\d+)\.")
_FACE_BLOCK = re.compile(r"image_proj\.perceiver_resampler\.layers\.(\d+)\.")
NAMES = {"base": "IP-Adapter", "plus": "IP-Adapter Plus", "full": "IP-Adapter Full Face",
         "faceid": "IP-Adapter FaceID", "faceid_plus": "IP-Adapter FaceID Plus"}


def variant(keys) -> str:
    """The variant of an IP-Adapter file's keys: "base", "plus", "full", "faceid" or "faceid_plus"."""
    keys = set(keys)
    if any(k.startswith("image_proj.perceiver_resampler.") for k in keys):
        return "faceid_plus"
    if any(k.startswith(("image_proj.latents", "image_proj.proj_in.", "image_proj.layers.")) for k in keys):
        return "plus"
    if "image_proj.proj.3.weight" in keys:
        return "full"
    if "image_proj.proj.0.weight" in keys and "image_proj.norm.weight" in keys:
        return "faceid"
    return "base"


def refusal(shapes) -> str | None:
    """Why a file of these key shapes is not run as an IP-Adapter, or None."""
    if not any(k.startswith("image_proj.") for k in shapes) and any("lora" in k for k in shapes):
        return ("this is a LoRA (the FaceID LoRA ships as ip-adapter-faceid*_lora.safetensors), not an IP-Adapter: "
                "load it as a LoRA, and the ip-adapter-faceid*.bin file as the IP-Adapter")
    proj_in = shapes.get("image_proj.proj_in.weight")
    if "image_proj.latents" in shapes and proj_in is not None and len(proj_in) == 2 and proj_in[1] == 512:
        return ("IP-Adapter FaceID Portrait unnorm (a Resampler over unnormalised face embeddings) is not supported; "
                "the base, Plus, Full Face, FaceID, FaceID Portrait and FaceID Plus (v2) adapters are")
    return None


def is_v2(path) -> bool:
    """Whether a FaceID Plus file is v2 (its name says so: ip-adapter-faceid-plusv2_*)."""
    return "v2" in Path(path).name.lower()


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
    if kind.startswith("faceid"):
        return _faceid_projection(shapes, path, kind)
    proj = _shape(shapes, "image_proj.proj.weight", path, 2)
    width = _shape(shapes, "image_proj.norm.weight", path, 1)[0]
    if proj[0] % width:
        raise CheckpointError(path, f"image_proj.proj.weight {proj} does not fit a norm of ({width},)")
    return ImageProjection(proj[1], width, proj[0] // width), width


def _faceid_projection(shapes, path, kind: str):
    hidden, id_dim = _shape(shapes, "image_proj.proj.0.weight", path, 2, kind)
    rows = _shape(shapes, "image_proj.proj.2.weight", path, 2, kind)[0]
    width = _shape(shapes, "image_proj.norm.weight", path, 1, kind)[0]
    if rows % width:
        raise CheckpointError(path, f"image_proj.proj.2.weight has {rows} rows, not tokens of the norm's {width}")
    if kind == "faceid":
        return FaceIDProjection(id_dim, width, rows // width, hidden), width
    pre = "image_proj.perceiver_resampler."
    dim, clip_dim = _shape(shapes, pre + "proj_in.weight", path, 2, kind)
    inner = _shape(shapes, pre + "layers.0.0.to_q.weight", path, 2, kind)[0]
    ff_inner = _shape(shapes, pre + "layers.0.1.1.weight", path, 2, kind)[0]
    if dim != width or inner % DIM_HEAD:
        raise CheckpointError(path, f"its perceiver is {dim} wide with {inner} attention rows; FaceID Plus's is as "
                                    f"wide as its tokens ({width}), in heads of {DIM_HEAD}")
    blocks = sorted({int(m.group(1)) for k in shapes if (m := _FACE_BLOCK.match(k))})
    if blocks != list(range(len(blocks))):
        raise CheckpointError(path, f"its perceiver_resampler.layers are numbered {blocks}, not 0, 1, 2, ...")
    return FaceIDPlusProjection(id_dim, width, rows // width, hidden, clip_dim, len(blocks), inner // DIM_HEAD,
                                ff_inner), width


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
    """An IP-Adapter file (.safetensors, or a .bin pickle read by the restricted loader) as an eval
    :class:`IPAdapter`; CheckpointError (one line) otherwise."""
    path = Path(path)
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


def describe_ip_adapter(path) -> IPAdapter:
    """The IPAdapter (meta device) of an IP-Adapter file, checked as load_ip_adapter checks it: from its
    header for a .safetensors file, else from the restricted loader's tensors (the .bin releases; their
    key shapes are remembered per file, size and mtime, as the server asks per request)."""
    path = Path(path)
    if sniff_format(path) == "safetensors":
        return header_ip_adapter(read_safetensors_header(path)[0], path)
    st = path.stat()
    return build_ip_adapter(dict(_pickle_shapes(str(path.resolve()), st.st_size, st.st_mtime_ns)), path)


@lru_cache(maxsize=8)
def _pickle_shapes(path: str, size: int, mtime: int) -> tuple:
    return tuple((k, tuple(v.shape)) for k, v in read_state_dict(path).items())
