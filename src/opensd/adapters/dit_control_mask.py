"""Which DiT ControlNets inpaint from a mask, and img2img inpainting's default for them.

Two files take a mask (white = repaint): a Z-Image Fun ControlNet 2.x (with an image to inpaint; grey
when none) and DiffSynth's Qwen-Image blockwise Inpaint file (its keep channel). One rule for every
caller (the CLI's img2img, the A1111 API, the web UI's Inpaint tab, all through Pipeline.img2img): an
inpainting request's own mask goes to such a unit that gives none of its own, and for Z-Image Fun the
init image is the image to inpaint, as the Inpaint tab's user expects. Other ControlNets are left
as they are (SD's inpaint modules have their own rule: server/a1111_cn_inpaint.py)."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ..checkpoints.files import read_safetensors_header
from ..checkpoints.qwen_image_controlnet_files import is_qwen_image_blockwise, is_qwen_image_controlnet
from ..checkpoints.z_image_controlnet_files import TELLTALE, is_z_image_controlnet
from ..errors import CheckpointError

LATENT_PATCH_CHANNELS = 4 * 16  # 2x2 patches of the 16 latent channels: a file with no more has no mask input


def takes_mask(loaded) -> bool:
    """A loaded ControlNet (adapters/controlnet.LoadedControlNet) with mask channels."""
    config = loaded.net.config
    if loaded.is_z_image:
        return config.in_channels > config.base.in_channels
    return loaded.is_qwen_image and bool(getattr(config, "extra_channels", 0))


def file_has_mask_channels(path, blockwise: bool = False) -> bool:
    """The same, read from a Z-Image Fun (or, `blockwise`, a Qwen-Image blockwise) file's header."""
    entries, _ = read_safetensors_header(path)
    key = "img_in.weight" if blockwise else TELLTALE
    return entries[key]["shape"][1] > LATENT_PATCH_CHANNELS


def file_takes_mask(path) -> bool | None:
    """From a file's header, before loading it: True for the two files above, False for other Z-Image
    and Qwen-Image ControlNet files, None for anything else (SD's, other DiT families', folders)."""
    path = Path(path)
    if not path.is_file() or path.suffix != ".safetensors":
        return None
    try:
        entries, _ = read_safetensors_header(path)
    except (CheckpointError, OSError):
        return None  # refused with its reason when the unit is run
    if is_qwen_image_blockwise(entries):
        return file_has_mask_channels(path, blockwise=True)
    if is_z_image_controlnet(entries):
        return file_has_mask_channels(path)
    return False if is_qwen_image_controlnet(entries) else None


def with_request_mask(spec, mask, init):
    """`spec` (a ControlSpec) given an inpainting request's prepared mask (white = repaint, the init
    image's size) and, for Z-Image Fun, its init image, when its ControlNet takes a mask and it has none."""
    if spec.mask is not None or spec.inpaint is not None or not takes_mask(spec.model):
        return spec
    image = spec.inpaint_image if spec.inpaint_image is not None or not spec.model.is_z_image else init
    return replace(spec, mask=mask, inpaint_image=image)
