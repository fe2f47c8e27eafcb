"""What a generation adds to every pass besides the prompt: ControlNets, Flux.1 Kontext's reference
images, an IP-Adapter image prompt and a refiner, each checked against the pipeline's model."""
from __future__ import annotations

from contextlib import nullcontext

from ..errors import InvalidArgument
from ..families import family_of
from . import guidance as G
from .kontext import reference_latents
from .refiner import Refiner


class GenerationExtras:
    """A Pipeline's per-generation extras (a part of Pipeline, kept in its own file)."""

    def _set_extras(self, controls, references, ip_adapter, refiner) -> None:
        """What the coming generation adds to every pass: ControlNets, Kontext references, an image
        prompt, a refiner (each checked against this model)."""
        self._controls = _controls(controls, self.config)
        self._references = reference_latents(self, references)
        self._ip_adapter = _ip_adapter(ip_adapter, self)
        self._refiner = self._checked(refiner)

    def _checked(self, refiner: Refiner | None) -> Refiner | None:
        if refiner is None:
            return None
        refiner.check(self)
        if refiner.pipe is self or refiner.pipe.loaded.path == self.loaded.path:
            return None  # A1111 does not switch to the checkpoint already running
        refiner.pipe.apply_loras("")  # its own weights (LoRAs are for the main model)
        return refiner

    def _image_prompt(self, g: G.Guidance):
        """The IP-Adapter's patch of the UNet for one pass (removed after it), or nothing."""
        if self._ip_adapter is None:
            return nullcontext()
        from ..adapters.ip_adapter import applied
        return applied(self._ip_adapter, self.family.network(self.model), lambda: self._n_uncond)


def _controls(controls, config) -> list:
    if not controls:
        return []
    from ..adapters.controlnet import validate_controls
    family_of(config).require("controlnet", "controls")
    return validate_controls(controls, config)


def _ip_adapter(spec, pipe):
    if spec is None:
        return None
    from ..adapters.ip_adapter import validated
    from .openvino_unet import OpenVINOUNet
    pipe.family.require("ip_adapter", "ip_adapter")
    if isinstance(getattr(pipe.family.network(pipe.model), "_compiled_call_impl", None), OpenVINOUNet):
        raise InvalidArgument("ip_adapter: an IP-Adapter patches the UNet's PyTorch attention layers, which the "
                              "openvino backend does not run; use the default backend")
    return validated(spec)
