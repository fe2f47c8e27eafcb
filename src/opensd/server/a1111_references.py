"""opensd's extension of the A1111 generation requests: `reference_images`, base64 images (as
init_images) that the models editing with reference images (Flux.1 Kontext, FLUX.2, Qwen-Image-Edit: the
family's `reference_latents`) see beside the prompt (pipeline/kontext.py). A1111 clients never send
the field; for other models a request with it is refused before queueing, naming the models that take it."""
from __future__ import annotations

from pathlib import Path

from ..errors import InvalidArgument
from ..families import reference_families
from ..library.model_info import check_reference_count, takes_references
from .images_io import decode_b64

FIELD = "reference_images"
# diffusers' FluxKontextPipeline takes one image and Flux2KleinPipeline sets no cap; BFL's FLUX.2
# documents up to 10 references. Each adds about a 1 MP image's tokens to every step.
MAX_REFERENCES = 10


def check(req, model_path: Path, max_pixels: int) -> None:
    """Refuse (422) what cannot run: too many references, a model that takes none, an image that is
    not one or is over the server's pixel limit."""
    images = req.reference_images
    if not images:
        return
    if len(images) > MAX_REFERENCES:
        raise InvalidArgument(f"{FIELD}: {len(images)} images; at most {MAX_REFERENCES} are taken")
    if takes_references(model_path) is False:  # None (not told by the header): the pipeline checks on loading
        raise InvalidArgument(f"{FIELD}: {model_path.name} takes no reference images; only "
                              f"{reference_families()} models do")
    try:
        check_reference_count(model_path, len(images))  # Qwen-Image-Edit's one, before queueing
    except InvalidArgument as e:
        raise InvalidArgument(f"{FIELD}: {e}") from None
    decode(req, max_pixels)


def decode(req, max_pixels: int) -> list:
    """The request's reference images, in order (decoded once per job: every image of it sees them)."""
    return [decode_b64(text, f"{FIELD}[{i}]", max_pixels) for i, text in enumerate(req.reference_images)]
