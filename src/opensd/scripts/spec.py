"""What scripts work on (`Spec`: one generation), what faces give them (`Face`), and what they give
back (`ScriptResult`); `run_specs` runs many Specs with one progress count and stops at an interrupt."""
from __future__ import annotations

import copy
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from PIL import Image

from ..errors import InvalidArgument
from ..pipeline import limits as L
from ..pipeline.img2img import steps_run
from ..pipeline.params import Hires, Params
from ..sampling.names import resolve
from ..text.styles import Style

Progress = Callable[[int, int], None]


@dataclass
class Spec:
    """One generation: prompts, the pipeline's keyword arguments (opensd.pipeline.params.Params fields
    as plain values, "hires" as a dict of Hires fields), seeds and models."""
    prompt: str
    negative_prompt: str
    kwargs: dict
    seed: int
    subseed: int = -1
    n_iter: int = 1
    schedule: str | None = None       # the schedule asked for (None: each sampler's own), kept by a new sampler
    model: str | None = None          # a checkpoint as Face.checkpoint returned it; None: the face's own
    vae: str | None = None            # a VAE as Face.vae returned it; None: the face's own choice
    refiner: str | None = None        # a refiner checkpoint as Face.checkpoint returned it, "None": no
                                      # refiner; None: the face's own
    refiner_switch: float | None = None  # the refiner's switch point; None: the face's own
    init: Image.Image | None = None   # img2img: this image instead of the face's init image

    def but(self, **changes) -> Spec:
        """A copy with `changes`, its kwargs (and hires) its own."""
        return replace(self, kwargs=copy.deepcopy(self.kwargs), **changes)

    @property
    def images(self) -> int:
        return self.n_iter * self.kwargs.get("batch_size", 1)


def planned_steps(spec: Spec, img2img: bool) -> int:
    """Sampling steps one image of `spec` takes (every pass), as the pipeline counts its progress."""
    kw = spec.kwargs
    steps = kw.get("steps", 20)
    if img2img:
        return steps_run(steps, kw.get("strength", 0.75), kw.get("fix_steps", False))
    hires = kw.get("hires")
    if not hires:
        return steps
    return steps + steps_run(hires.get("steps") or steps, hires.get("denoise", 0.7), fixed=True)


@dataclass
class Made:
    """One image a Face made, with its infotext and what it was made from."""
    image: Image.Image
    infotext: str
    seed: int
    subseed: int | None
    prompt: str
    negative_prompt: str


@dataclass
class Generated:
    made: list[Made]
    interrupted: bool = False     # the user stopped the run: scripts stop too


class Face(Protocol):
    """What a face lends a script."""
    img2img: bool

    def generate(self, spec: Spec, progress: Progress) -> Generated:
        """Run `spec` (styles already in its prompts; wildcards and dynamic prompts expanded per image)."""

    def checkpoint(self, name: str, where: str = "Checkpoint name") -> str:
        """The checkpoint `name` as Spec.model and Spec.refiner take it; unknown names raise
        InvalidArgument naming `where`."""

    def vae(self, name: str) -> str:
        """The VAE `name` ("Automatic", "None" or a file) as Spec.vae takes it; unknown names raise."""

    def styles(self) -> dict[str, Style]:
        """The prompt styles there are."""

    def upscalers(self) -> list[str]:
        """The upscalers' names, in the order A1111's upscaler index counts them."""

    def upscale(self, image: Image.Image, name: str, scale: float) -> Image.Image:
        """`image` made `scale` times larger by upscaler `name`."""

    def upscaler(self, name: str, hires: bool = False) -> str:
        """Upscaler `name` as the pipeline (`hires`: the hires fix, which also takes latent modes) and
        `upscale` take it; unknown names raise InvalidArgument."""


@dataclass
class ScriptResult:
    images: list[Image.Image]          # the grids first, then single images
    infotexts: list[str]               # one per image
    made: list[Made] = field(default_factory=list)   # every generation, in order (seeds, prompts)
    grids: int = 0                     # how many of `images` are grids
    interrupted: bool = False


def run_specs(face: Face, specs: Sequence[Spec], progress: Progress | None,
              order: Sequence[int] | None = None) -> tuple[list[Generated | None], bool]:
    """Generate every spec (in `order`), counting progress over all of them; after an interrupt the
    rest are left as None. Returns (results by spec index, interrupted)."""
    sizes = [planned_steps(s, face.img2img) * s.images for s in specs]
    total = sum(sizes)
    results: list[Generated | None] = [None] * len(specs)
    done = 0
    for k in order if order is not None else range(len(specs)):
        def report(i: int, n: int, base: int = done, size: int = sizes[k]) -> None:
            if progress is not None:
                progress(base + (min(size, round(i * size / n)) if n else 0), total)

        results[k] = face.generate(specs[k], report)
        done += sizes[k]
        if results[k].interrupted:
            return results, True
    return results, False


def check(spec: Spec, where: str) -> None:
    """Refuse, naming `where`, a spec the pipeline would refuse: before any image of a script is made."""
    kw = dict(spec.kwargs)
    hires = kw.pop("hires", None)
    try:
        p = Params.of(prompt=spec.prompt, negative_prompt=spec.negative_prompt, seed=spec.seed,
                      hires=Hires(**hires) if hires else None, **kw)
        p.validate()
        resolve(p.sampler, p.scheduler)
    except (InvalidArgument, TypeError) as e:
        raise InvalidArgument(f"{where}: {e}") from None


def fixed_seed(seed: int) -> int:
    """A random seed for -1 (so that a script's images share it), else `seed`."""
    return random.randint(0, L.MAX_SEED - 10_000) if seed == -1 else seed
