"""A batch whose prompt is a template (wildcards, `{a|b}` choices: opensd.text.dynamic_prompts): each
image gets its own prompt, chosen from its own seed, and is generated alone, which the pipeline
makes bit-identical to its place in the batch. Each image keeps its template in `info["template"]`
(and `info["negative_template"]`), which the infotext records under "Template" / "Negative Template"
beside the chosen prompt, so the image reproduces from its prompt alone.
"""
from __future__ import annotations

import random
from collections.abc import Callable

from PIL import Image

from ..text.dynamic_prompts import expand, is_dynamic
from ..text.wildcards import Wildcards
from . import limits as L

# call(prompt, negative_prompt, progress, **overrides) -> images: one pipeline call (txt2img, img2img, ...)
Call = Callable[..., list[Image.Image]]


def generate(call: Call, prompt: str, negative_prompt: str, *, seed: int | None, subseed: int | None = None,
             batch_size: int = 1, wildcards: Wildcards | None = None, progress=None,
             one_by_one: bool = False) -> list[Image.Image]:
    """The batch's images; `call` runs the pipeline with the seeds and batch size it is given.
    `one_by_one`: each image in its own call even when the prompts are plain (a caller whose batch
    items differ in more than the seed: A1111's several img2img init images)."""
    if not (one_by_one or is_dynamic(prompt) or is_dynamic(negative_prompt)):
        return call(prompt, negative_prompt, progress)
    if seed in (None, -1):  # choices need the seed before the pipeline would pick one
        seed = random.randint(0, L.MAX_SEED - batch_size)
    if subseed == -1:
        subseed = random.randint(0, L.MAX_SEED - batch_size)
    images = []
    for k in range(batch_size):
        s = (seed + k) % (L.MAX_SEED + 1)
        chosen = expand(prompt, s, wildcards)
        negative = expand(negative_prompt, f"{s}/negative", wildcards, where="negative_prompt")

        def report(i: int, n: int, k: int = k) -> None:
            if progress is not None:
                progress(k * n + i, batch_size * n)

        extra = {} if subseed is None else {"subseed": (subseed + k) % (L.MAX_SEED + 1)}
        image = call(chosen, negative, report, seed=s, batch_size=1, **extra)[0]
        if chosen != prompt:
            image.info["template"] = prompt
        if negative != negative_prompt:
            image.info["negative_template"] = negative_prompt
        images.append(image)
    return images
