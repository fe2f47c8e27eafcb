"""The registry of model families (base.py says what a family is; docs/model-families.md how to add one).

Detection asks each family in turn whether a state dict is its own; the UNet family comes last,
because its refusal names whatever else the file looks like (a LoRA, a VAE, an unsupported family).
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ..checkpoints import detect as D
from ..errors import CheckpointError, OpenSDError
from .base import Family, Shapes
from .chroma import CHROMA_FAMILY
from .flux import FLUX
from .flux2 import FLUX2_FAMILY
from .qwen_image import QWEN_IMAGE_FAMILY
from .sd3 import SD3
from .unet import UNET
from .z_image import Z_IMAGE_FAMILY

# Chroma's keys include Flux's, and FLUX.2's Flux's telltale
FAMILIES: tuple[Family, ...] = (SD3, CHROMA_FAMILY, FLUX2_FAMILY, QWEN_IMAGE_FAMILY, FLUX, Z_IMAGE_FAMILY, UNET)


def family_of(cfg) -> Family:
    """The family that owns a model config."""
    for family in FAMILIES:
        if family.owns(cfg):
            return family
    raise ValueError(f"no model family owns configs of family {cfg.family!r}")


def takes_references(family: Family) -> bool:
    """Whether the family's models edit with reference images (txt2img/img2img `references`)."""
    return bool(getattr(family, "reference_latents", False))


def reference_families() -> str:
    """The families whose models take reference images, for messages: "FLUX.2, Qwen-Image (Edit), Flux.1
    (Kontext)" (in Flux.1's and Qwen-Image's families only the editing models were trained for them)."""
    editing = {FLUX: " (Kontext)", QWEN_IMAGE_FAMILY: " (Edit)"}
    return ", ".join(f.label + editing.get(f, "") for f in FAMILIES if takes_references(f))


@contextmanager
def shapes_read(path, family: Family):
    """Around a family's readers of a file's shapes (config from header): they take shapes as released
    files have them, so a damaged or hostile header (a 1-D weight where a matrix belongs, a zero width)
    fails them with plain errors; those become a CheckpointError naming the file and the family."""
    try:
        yield
    except OpenSDError:
        raise
    except (LookupError, ValueError, ArithmeticError, TypeError) as e:
        raise CheckpointError(path, f"damaged: its tensor shapes are not a {family.label} model's "
                                    f"({type(e).__name__}: {e})") from None


def detect(shapes: Shapes, metadata, path: str, prediction=None):
    """(family, config) of an original-layout state dict, or CheckpointError saying what it is instead."""
    for family in FAMILIES:
        with shapes_read(path, family):
            cfg = family.detect(shapes, metadata or {}, path, prediction)
        if cfg is not None:
            return family, cfg
    raise CheckpointError(path, D.what_else(shapes, D.UNET))


def read_folder(path: Path, index: dict):
    """(family, state dict, metadata) of a diffusers folder."""
    for family in FAMILIES:
        found = family.read_folder(path, index)
        if found is not None:
            return (family, *found)
    raise CheckpointError(path, "not a diffusers folder of a model family opensd runs")
