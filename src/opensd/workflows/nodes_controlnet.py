"""ControlNet nodes with ComfyUI's names, inputs and semantics: ControlNetLoader, DiffControlNetLoader,
ControlNetApply, ControlNetApplyAdvanced, ControlNetApplySD3 (the same with the vae required) and
SetUnionControlNetType. As in ComfyUI, ControlNetLoader
loads T2I-Adapters too; they apply with the same strength and percent window.

SetUnionControlNetType picks a Union ControlNet's control type ("auto" or one of ComfyUI's type
names, in its order: adapters/union_types.py). As in ComfyUI the type rides on the CONTROL_NET and
is ignored for a ControlNet that is not a union one; a type the file lacks ("tile", "repaint"
on a 6-type file) fails when sampling, naming the ProMax file.

A diff ControlNet (a file whose weights are differences from a UNet's, marked by a "difference"
key) gets the UNet weights of DiffControlNetLoader's MODEL added when it is loaded for sampling, as
they stand then (the branch's LoRAs in when it is the sampling model); other files load as
ControlNetLoader loads them. Where ComfyUI's ControlNetLoader loads a diff file as it is (with a
warning that it will not work), ours adds the sampling model's weights.

As in ComfyUI the hint travels on the conditioning: every entry's extras get a ``"control"`` (a
:class:`ControlHint`, chained to the entry's previous one, so several ControlNets add up) and a
``"control_apply_to_uncond"`` flag. Sampling then runs each entry's hints on that entry's model
call (conds.py, guiders.ModelRun):

* ControlNetApplyAdvanced hints both the positive and the negative conditioning it is given;
* ControlNetApply (ComfyUI's older node) hints the conditioning it is given and sets
  ``control_apply_to_uncond``: when no negative entry has a hint of its own, the negative row
  gets the positive's hint too (ComfyUI's rule for that flag).

A hint runs while the current sigma lies between the sigmas at ``start_percent`` and
``end_percent`` of the model's timesteps (ComfyUI's percent-to-sigma rule), its image scaled to
the latent's pixel size by a centre crop to the aspect ratio and a nearest-exact resize, and its
residuals multiplied by ``strength``. ``vae`` encodes the image for ControlNets that take latents
(Flux's; without it the model's own VAE, which a network loaded alone lacks: then an error asks for
it); the others ignore it. On a flow model (Flux) the window is in the model's flow sigmas.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ..adapters.union_types import COMFY_NAMES, check_control_type, control_type_index
from ..adapters.z_image_controlnet import INPAINT_HINT_CHANNELS
from .types import Choices, NodeDef, register


@dataclass(frozen=True, eq=False)
class ControlNetRef:
    """CONTROL_NET: a ControlNet file, loaded onto the sampling model's device/dtype when used."""
    path: Path
    name: str
    base: Any = None                 # DiffControlNetLoader's Pipeline: a diff ControlNet's weights add to its UNet's
    control_type: int | None = None  # SetUnionControlNetType's type index (None: auto)


@dataclass(frozen=True, eq=False)
class ControlHint:
    net: ControlNetRef
    image: torch.Tensor              # (B, C, H, W) float 0..1, on the CPU
    strength: float
    start: float = 0.0
    end: float = 1.0
    previous: ControlHint | None = None
    vae: Any = None                  # ControlNetApplyAdvanced's VAE: encodes the image for Flux ControlNets
    refiner_in_model: bool = False   # ZImageFunControlnet's: ComfyUI's order for a Z-Image 2.x file's refiner

    def chain(self) -> list[ControlHint]:
        out, h = [], self
        while h is not None:
            out.append(h)
            h = h.previous
        return out


def chained(head: ControlHint, tail: ControlHint | None) -> ControlHint:
    """`head`'s chain followed by `tail`'s (a new chain; the hints keep their images and windows)."""
    if tail is None:
        return head
    return replace(head, previous=chained(head.previous, tail) if head.previous is not None else tail)


def _image(image) -> torch.Tensor:
    if not isinstance(image, torch.Tensor) or image.ndim != 4:
        raise ValueError("image: expected an IMAGE (B, H, W, C)")
    return image.movedim(-1, 1).float().cpu()


def controlnet_loader(call, control_net_name):
    path = call.ctx.folders.resolve("controlnet", control_net_name)
    return (ControlNetRef(path, control_net_name),)


register(NodeDef(
    "ControlNetLoader", controlnet_loader, {"control_net_name": (Choices("controlnet"), {})},
    ("CONTROL_NET",), category="loaders", display_name="Load ControlNet Model",
    description="Loads a ControlNet from the controlnet folders (ControlNet/ or controlnet/)."))


def diff_controlnet_loader(call, model, control_net_name):
    path = call.ctx.folders.resolve("controlnet", control_net_name)
    return (ControlNetRef(path, control_net_name, model.pipe),)


register(NodeDef(
    "DiffControlNetLoader", diff_controlnet_loader,
    {"model": ("MODEL", {}), "control_net_name": (Choices("controlnet"), {})},
    ("CONTROL_NET",), category="loaders", display_name="Load ControlNet Model (diff)"))


def set_union_controlnet_type(call, control_net, type):
    return (replace(control_net, control_type=control_type_index(type, "type")),)


register(NodeDef(
    "SetUnionControlNetType", set_union_controlnet_type,
    {"control_net": ("CONTROL_NET", {}), "type": (["auto", *COMFY_NAMES], {})},
    ("CONTROL_NET",), category="conditioning/controlnet",
    description="Sets the control type of a Union ControlNet (ControlNet++); auto leaves it unset."))


def _hinted(conditioning: list, make, to_uncond: bool) -> list:
    out, made = [], {}
    for context, extra in conditioning:
        d = dict(extra or {})
        prev = d.get("control")
        if id(prev) not in made:  # entries sharing a previous hint share the new one (batched together)
            made[id(prev)] = make(prev)
        d["control"] = made[id(prev)]
        d["control_apply_to_uncond"] = to_uncond
        out.append([context, d])
    return out


def controlnet_apply(call, conditioning, control_net, image, strength):
    if strength == 0:
        return (conditioning,)
    hint = _image(image)
    return (_hinted(conditioning, lambda prev: ControlHint(control_net, hint, float(strength), previous=prev), True),)


_STRENGTH = ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01})
register(NodeDef(
    "ControlNetApply", controlnet_apply,
    {"conditioning": ("CONDITIONING", {}), "control_net": ("CONTROL_NET", {}), "image": ("IMAGE", {}),
     "strength": _STRENGTH},
    ("CONDITIONING",), category="conditioning/controlnet", display_name="Apply ControlNet (OLD)",
    description="Attaches a ControlNet hint to the conditioning (the negative gets it too unless it "
                "has its own)."))


def controlnet_apply_advanced(call, positive, negative, control_net, image, strength, start_percent, end_percent,
                              vae=None):
    if strength == 0:
        return positive, negative
    hint = _image(image)
    made: dict = {}

    def make(prev):  # one hint per previous hint, shared by the positive and the negative
        if id(prev) not in made:
            made[id(prev)] = ControlHint(control_net, hint, float(strength), float(start_percent),
                                         float(end_percent), prev, vae)
        return made[id(prev)]

    return _hinted(positive, make, False), _hinted(negative, make, False)


_PERCENT = {"min": 0.0, "max": 1.0, "step": 0.001}
register(NodeDef(
    "ControlNetApplyAdvanced", controlnet_apply_advanced,
    {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "control_net": ("CONTROL_NET", {}),
     "image": ("IMAGE", {}), "strength": _STRENGTH,
     "start_percent": ("FLOAT", {"default": 0.0, **_PERCENT}), "end_percent": ("FLOAT", {"default": 1.0, **_PERCENT})},
    ("CONDITIONING", "CONDITIONING"), output_names=("positive", "negative"), optional={"vae": ("VAE", {})},
    category="conditioning/controlnet", display_name="Apply ControlNet",
    description="Attaches a ControlNet hint, active between start_percent and end_percent, to the positive "
                "and the negative conditioning."))




def controlnet_apply_sd3(call, positive, negative, control_net, vae, image, strength, start_percent, end_percent):
    return controlnet_apply_advanced(call, positive, negative, control_net, image, strength, start_percent,
                                     end_percent, vae)


register(NodeDef(
    "ControlNetApplySD3", controlnet_apply_sd3,
    {"positive": ("CONDITIONING", {}), "negative": ("CONDITIONING", {}), "control_net": ("CONTROL_NET", {}),
     "vae": ("VAE", {}), "image": ("IMAGE", {}), "strength": _STRENGTH,
     "start_percent": ("FLOAT", {"default": 0.0, **_PERCENT}), "end_percent": ("FLOAT", {"default": 1.0, **_PERCENT})},
    ("CONDITIONING", "CONDITIONING"), output_names=("positive", "negative"), category="_for_testing/sd3",
    display_name="Apply Controlnet with VAE",
    description="ComfyUI's older SD3 node: Apply ControlNet with the vae input required (deprecated there)."))


# --- sampling ----------------------------------------------------------------------------------

def center_resize(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Crop the middle to the target aspect ratio, then nearest-exact resize (ComfyUI's hint fitting)."""
    h0, w0 = image.shape[-2:]
    old, new = w0 / h0, width / height
    x = y = 0
    if old > new:
        x = round((w0 - w0 * new / old) / 2)
    elif old < new:
        y = round((h0 - h0 * old / new) / 2)
    image = image[..., y:h0 - y, x:w0 - x]
    if image.shape[-2:] == (height, width):
        return image
    return F.interpolate(image, size=(height, width), mode="nearest-exact")


class RowControl:
    """The ``control`` callable for Pipeline.denoiser: residuals for every row of the batch, each row
    with its conditioning entry's hints (zeros for rows without any)."""

    def __init__(self, pipe, rows: list[ControlHint | None], image_index: int, width: int, height: int,
                 sampling=None):
        from ..adapters.controlnet import cached_controlnet

        self.rows, self.pipe, self.sampling = rows, pipe, sampling
        self.hints, self.nets, self.features = {}, {}, {}
        for head in {id(h): h for h in rows if h is not None}.values():
            for h in head.chain():
                if id(h) in self.hints:
                    continue
                img = h.image[image_index % h.image.shape[0]][None]
                if img.shape[1] == 1:
                    img = img.expand(-1, 3, -1, -1)
                self.nets[id(h)] = net = cached_controlnet(h.net.path, pipe, diff_base=h.net.base)
                img = img if img.shape[1] == INPAINT_HINT_CHANNELS else img[:, :3]  # a Z-Image inpainting hint: all
                self.hints[id(h)] = center_resize(img, *net.hint_size(width, height)).to(pipe.device, pipe.dtype)
                union_types = net.union_types
                if union_types:  # ComfyUI ignores a type set on a plain ControlNet
                    check_control_type(h.net.control_type, union_types, h.net.name)

    @staticmethod
    def _active(h: ControlHint, t: float) -> bool:
        """sigma_end <= sigma <= sigma_start, where the sigma at percent p is the model's sigma at
        timestep (1 - p) * 999, p <= 0 means no upper bound and p >= 1 a bound of 0; compared here
        as timesteps (sigma grows with the timestep). Sampling sigmas are > 0, so start >= 1 or
        end <= 0 never runs."""
        if h.start >= 1 or h.end <= 0:
            return False
        return (h.start <= 0 or t <= (1 - h.start) * 999 + 1e-4) and (h.end >= 1 or t >= (1 - h.end) * 999 - 1e-4)

    def _active_at_sigma(self, h: ControlHint, sigma: float) -> bool:
        """The same window in sigmas of the model's own percent rule (flow models: a Flux ControlNet)."""
        ms = self.sampling
        return ms.percent_to_sigma(h.end) <= sigma <= ms.percent_to_sigma(h.start) and h.start < 1 and h.end > 0

    def __call__(self, x, t, context, y, fraction=None, n_uncond=1, sigma=None, guidance=None):
        """`sigma` and `guidance` (the entry's distilled guidance): for Flux ControlNets."""
        tt = t.reshape(-1)[:1].expand(len(x))
        now = float(tt[0])
        at = None if sigma is None else float(sigma.reshape(-1)[0])
        groups: dict = {}
        rows = self.rows if n_uncond else self.rows[1:]  # at cfg 1 the uncond row is not run
        for r, h in enumerate(rows[:len(x)]):
            if h is not None:
                groups.setdefault(id(h), (h, []))[1].append(r)
        total = None
        for head, rows in groups.values():
            idx = torch.tensor(rows, device=x.device)
            xs, ctx, ys = x[idx], context[idx], None if y is None else y[idx]
            res = None
            for h in head.chain():
                net = self.nets[id(h)]
                flux = net.is_dit and self.sampling is not None and at is not None
                if not (self._active_at_sigma(h, at) if flux else self._active(h, now)) or h.strength == 0:
                    continue
                with torch.no_grad():
                    kind = h.net.control_type if net.union_types else None
                    out = net.residuals(xs, self.hints[id(h)], tt[idx], ctx, ys, kind, cache=self.features,
                                        guidance=guidance, encoder=None if h.vae is None else h.vae.pipe,
                                        in_model=h.refiner_in_model)
                out = out.map(lambda o: o * h.strength)
                res = out if res is None else res + out
            if res is None:
                continue
            total = _scatter(res, idx, len(x)) if total is None else total + _scatter(res, idx, len(x))
        return total


def _scatter(res, idx: torch.Tensor, n: int):
    """`res` (rows idx of a batch of n) as a Control for the whole batch, zeros elsewhere."""
    def full(r):
        out = torch.zeros(n, *r.shape[1:], device=r.device)
        out[idx] = r
        return out
    return res.map(full)
