"""GUIDERs: the model plus the conditioning lists a sampler is guided by, and how one step's
predictions of those lists combine (ComfyUI's CFGGuider family).

* CFGGuider: uncond + cfg * (cond - uncond), the negative not evaluated at cfg 1 (its prediction
  is then 0, as in ComfyUI); KSampler samples with it.
* BasicGuider: the positive alone (a CFGGuider without negative at cfg 1).
* DualCFGGuider: CFG(cond2 over the negative, cfg_cond2_negative) + cfg_conds * (cond1 - cond2);
  cond2 counts as a negative-type list (SDXL refiner's aesthetic default).
* PerpNegGuider: Perp-Neg over an empty prompt's prediction (comfy_extras.nodes_perpneg).

A model's pre-CFG functions (APG, TCFG) first replace CFGGuider's [cond, uncond] predictions
(:class:`PreCfgArgs`; ComfyUI's sampler_pre_cfg_function, which its other guiders do not call).
A model's sampler_cfg_function patch (RescaleCFG, PerpNeg) replaces the CFG formula: it gets
:class:`CfgArgs` and returns x - denoised, as in ComfyUI. Its post-CFG functions (CFGZeroStar,
PerturbedAttentionGuidance) then each take :class:`PostCfgArgs` and return the new denoised.

Each list's prediction is conds.calc_cond_batch's composition of its entries. One case keeps the
pipeline's own guidance instead: a guidance-distilled model (the built-in one) guides itself
(pipeline/guidance.py) when the positive is a single plain entry, the scale lies in its trained
range and the model carries no patches.

A model's step cache (EasyCache, LazyCache: step_cache.py) is each image's: EasyCache's lives in
its ModelRun, around the network's calls (a patch: the model then no longer guides itself),
LazyCache's around its guided prediction, whichever way that is computed.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass

import torch

from ..errors import InvalidArgument
from ..pipeline.conditioning import Conditioning, CondSchedule, ScheduledPart
from ..pipeline.guidance import plan, self_guided_scale
from ..sampling.cfg_pp import Guided
from .conds import calc_cond_batch, check_widths, prepare, region
from .gligen_patch import grounded
from .nodes_controlnet import RowControl, chained
from .step_cache import cached_denoiser, network_cache
from .types import ModelRef

# extras that make an entry more than "a prompt for the whole image, all the time"
_PLACED = ("area", "mask", "strength", "mask_strength", "start_percent", "end_percent", "control",
           "concat_latent_image", "concat_mask")


@dataclass
class CfgArgs:
    """What a sampler_cfg_function gets (ComfyUI's args dict, same names)."""
    cond: torch.Tensor             # x - cond_denoised
    uncond: torch.Tensor
    cond_scale: float
    input: torch.Tensor            # x
    sigma: torch.Tensor
    cond_denoised: torch.Tensor
    uncond_denoised: torch.Tensor
    # a CONDITIONING's prediction at this step (negative-type), at x or at another input (SAG's)
    predict: Callable[..., torch.Tensor]


@dataclass
class PreCfgArgs:
    """What a pre-CFG function gets (ComfyUI's args dict, same names); it returns the new conds_out."""
    conds_out: list                # [cond_denoised, uncond_denoised]: zeros where the negative is not evaluated
    conds: list                    # [positive CONDITIONING, negative CONDITIONING or None when not evaluated]
    cond_scale: float
    input: torch.Tensor            # x
    sigma: torch.Tensor
    image: int                     # the image of the batch (each is guided on its own): for state kept per image


@dataclass
class PostCfgArgs:
    """What a post-CFG function gets (ComfyUI's args dict, same names)."""
    denoised: torch.Tensor         # the CFG result so far
    cond_denoised: torch.Tensor
    uncond_denoised: torch.Tensor
    cond_scale: float
    input: torch.Tensor
    sigma: torch.Tensor
    cond: list                     # the CONDITIONING the CFG's positive side came from
    predict: Callable[..., torch.Tensor]  # as CfgArgs.predict; a list the guider holds is taken as prepared
    network: torch.nn.Module       # the model's network, for patches around one more prediction
    uncond: list | None = None     # the CONDITIONING of the negative side (None: there is none)


@dataclass
class CalcCondArgs:
    """What a calc_cond_batch function gets (ComfyUI's args dict, same names)."""
    conds: list                    # [positive entries, negative entries or None when not evaluated]
    input: torch.Tensor            # x
    sigma: torch.Tensor
    calc: Callable[[list], list]   # the plain batch: [entries or None, ...] -> their predictions
    network: torch.nn.Module       # the model's network, for patches around a prediction


class ModelRun:
    """The model on one image's crops: conds.calc_cond_batch's `run`."""

    def __init__(self, model: ModelRef, sampling, image_cond: torch.Tensor | None, image: int):
        self.pipe, self.sampling, self.image_cond, self.image = model.pipe, sampling, image_cond, image
        self.patches = model.network_patches
        self.model_controls = model.model_controls
        self._controls: dict = {}
        self._chained: dict = {}
        self.cache = network_cache(model.step_cache, sampling)  # EasyCache's, for this image and run

    def uncached(self) -> ModelRun:
        """This run without its EasyCache: for predictions besides the step's own lists."""
        plain = copy.copy(self)
        plain.cache = None
        return plain

    def __call__(self, crops: torch.Tensor, sigma: torch.Tensor, entries: list, areas: list) -> torch.Tensor:
        refs = entries[0].references
        placed = {} if refs is None else {"references": self._references(refs),
                                          "reference_method": entries[0].reference_method}
        net = self.pipe.family.net_fn(self.pipe.model, entries[0].guidance, **placed)
        context = torch.cat([e.context for e in entries])
        y = None if entries[0].y is None else torch.cat([e.y for e in entries])
        concat = None if self.image_cond is None else torch.cat([region(self._image_cond(e), a)
                                                                 for e, a in zip(entries, areas)])
        control = self._control(self._with_model_controls(entries[0].control), crops)

        def unet_fn(x, t, context, y):
            residuals = None if control is None else control(x, t, context, y, n_uncond=1, sigma=sigma,
                                                             guidance=entries[0].guidance)
            if concat is not None:  # inpainting models see [x, mask, masked image] channels
                x = torch.cat([x, concat.to(x)], dim=1)
            return net(x, t, context, y, residuals).float()

        with ExitStack() as patched:
            if control is not None and any(getattr(p, "resizes_skips", False) for p in self.patches):
                raise InvalidArgument("model: PatchModelAddDownscale resizes the UNet's skips, which a "
                                      "ControlNet's residuals cannot follow")
            if entries[0].gligen is not None:
                patched.enter_context(grounded(self.pipe.family.network(self.pipe.model), *entries[0].gligen,
                                               crops.shape))
            for patch in self.patches:
                args = (self.pipe.family.network(self.pipe.model), float(sigma.reshape(-1)[0]))
                # a patch holding one value per image of the batch (Fooocus inpaint's head) is told
                # which, and which rows come from a negative list (IP-Adapter's uncond tokens, the
                # regions' attention couple)
                patched.enter_context(patch(*args, image=self.image, negative=tuple(e.negative for e in entries))
                                      if getattr(patch, "per_image", False) else patch(*args))
            if self.cache is not None:
                unet_fn = self.cache.wrap(unet_fn, sigma, entries)
            return self.sampling.denoise(unet_fn, crops, sigma, context=context, y=y)

    def _references(self, refs: tuple) -> list:
        """This image's latent of each reference batch (the batch repeated over the images, as ComfyUI's)."""
        return [r[self.image % len(r)][None] for r in refs]

    def _image_cond(self, entry) -> torch.Tensor:
        """An inpainting model's extra channels: the entry's own (InpaintModelConditioning), else the run's."""
        return self.image_cond if entry.concat is None else entry.concat[self.image % len(entry.concat)][None]

    def _with_model_controls(self, hint):
        """The entry's hint chain with the model's own hints (ZImageFunControlnet) put before it."""
        if not self.model_controls:
            return hint
        key = id(hint)
        if key not in self._chained:
            for head in reversed(self.model_controls):
                hint = chained(head, hint)
            self._chained[key] = hint
        return self._chained[key]

    def _control(self, hint, crops: torch.Tensor):
        """ControlNet residuals for a batch of crops, the hint image fitted to the crop's pixels."""
        if hint is None:
            return None
        self.pipe.family.require("controlnet", "control_net")
        key = (id(hint), tuple(crops.shape))
        if key not in self._controls:
            down = self.pipe.config.vae.downscale
            self._controls[key] = RowControl(self.pipe, [hint] * crops.shape[0], self.image,
                                             crops.shape[3] * down, crops.shape[2] * down, self.sampling)
        return self._controls[key]


@dataclass
class Step:
    x: torch.Tensor
    sigma: torch.Tensor
    predict: Callable[[list], torch.Tensor]
    image: int = 0


class Guider:
    negative_kinds: tuple[str, ...] = ("negative",)

    def __init__(self, model: ModelRef):
        self.model = model
        # set by the run for CFG++ samplers: the negative is evaluated at every scale and each
        # denoiser (a sampling.cfg_pp.Guided) gives its prediction as the unconditional estimate
        self.needs_uncond = False

    def lists(self) -> dict[str, list]:
        """The conditioning lists by ComfyUI's names ("positive", "negative", ...)."""
        raise NotImplementedError

    def evaluated(self) -> list[str]:
        """The lists whose predictions each step needs."""
        return list(self.lists())

    def combine(self, preds: dict[str, torch.Tensor], step: Step) -> torch.Tensor:
        raise NotImplementedError

    def own_guidance(self, image: int, shape, sigmas, image_cond):
        """A denoise function that bypasses ComfyUI's composition, or None."""
        return None

    def denoisers(self, shape, sampling, sigmas: torch.Tensor, image_cond: torch.Tensor | None,
                  seed: int = 0) -> list:
        """denoise(x, sigma) for each image of a latent batch of `shape` (`seed`: the sampler's)."""
        check_widths(self.lists(), self.model.pipe)
        prepared = prepare(self.lists(), shape, self.model.pipe, sampling, self.negative_kinds, seed)
        out = []
        for i in range(shape[0]):
            ic = None if image_cond is None else image_cond[i % image_cond.shape[0]][None]
            own = self.own_guidance(i, shape, sigmas, ic)
            run = ModelRun(self.model, sampling, ic, i)
            denoise = own or self._composed(prepared, run, i, shape, sampling, seed)
            out.append(cached_denoiser(self.model.step_cache, denoise, run))
        return out

    def calc(self, run: ModelRun, sets: list, x: torch.Tensor, sigma: torch.Tensor, image: int) -> list:
        """The predictions of the evaluated lists' entries at one step."""
        return calc_cond_batch(run, sets, x, sigma, image)

    def _composed(self, prepared: dict, run: ModelRun, image: int, shape, sampling, seed: int = 0):
        names = self.evaluated()
        extra: dict[int, list] = {}
        plain = run.uncached()

        for name, conditioning in self.lists().items():  # the guider's own lists come prepared
            extra[id(conditioning)] = prepared[name]

        def predict(conditioning: list, x: torch.Tensor | None = None) -> torch.Tensor:
            if id(conditioning) not in extra:
                extra[id(conditioning)] = prepare({"negative": conditioning}, shape, self.model.pipe,
                                                  sampling, seed=seed)["negative"]
            return calc_cond_batch(plain, [extra[id(conditioning)]], step.x if x is None else x, step.sigma, image)[0]

        def both(x: torch.Tensor, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            nonlocal step
            step = Step(x, sigma, predict, image)
            preds = dict(zip(names, self.calc(run, [prepared[n] for n in names], x, sigma, image)))
            guided = self.combine(preds, step)
            return guided, preds.get("negative", guided)

        step = None
        return Guided(both)


def cfg_combine(model: ModelRef, cond: torch.Tensor, uncond: torch.Tensor, scale: float, step: Step,
                cond_list: list, uncond_list: list | None) -> torch.Tensor:
    """ComfyUI's cfg_function: the model's sampler_cfg_function patch, else plain CFG, then its
    post-CFG functions in order. `cond_list`, `uncond_list`: the CONDITIONINGs `cond` and `uncond`
    are the predictions of."""
    x = step.x
    if model.cfg_function is not None:
        out = x - model.cfg_function(CfgArgs(x - cond, x - uncond, scale, x, step.sigma, cond, uncond, step.predict))
    else:
        out = uncond + (cond - uncond) * scale
    return post_cfg(model, out, cond, uncond, scale, step, cond_list, uncond_list)


def post_cfg(model: ModelRef, out: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor, scale: float, step: Step,
             cond_list: list, uncond_list: list | None) -> torch.Tensor:
    """The model's post-CFG functions, in order, on a guided prediction `out`."""
    for fn in model.post_cfg_functions:
        out = fn(PostCfgArgs(out, cond, uncond, scale, step.x, step.sigma, cond_list, step.predict,
                             model.pipe.family.network(model.pipe.model), uncond_list))
    return out


class CFGGuider(Guider):
    def __init__(self, model: ModelRef, positive: list, negative: list | None, cfg: float):
        super().__init__(model)
        if not positive:
            raise ValueError("positive: the conditioning is empty")
        self.positive, self.negative, self.cfg = positive, negative, float(cfg)

    def lists(self) -> dict[str, list]:
        return {"positive": self.positive} if self.negative is None else \
            {"positive": self.positive, "negative": self.negative}

    def evaluated(self) -> list[str]:
        skip = math.isclose(self.cfg, 1.0) and not self.needs_uncond  # ComfyUI's cfg1 optimization
        return ["positive"] if self.negative is None or skip else ["positive", "negative"]

    def calc(self, run, sets, x, sigma, image):
        fn = self.model.calc_cond_batch_function
        if fn is None:
            return super().calc(run, sets, x, sigma, image)
        pipe = self.model.pipe
        out = fn(CalcCondArgs([sets[0], sets[1] if len(sets) > 1 else None], x, sigma,
                              lambda conds: calc_cond_batch(run, conds, x, sigma, image),
                              pipe.family.network(pipe.model)))
        return out[:len(sets)]

    def combine(self, preds, step):
        cond, uncond = preds["positive"], preds.get("negative", torch.zeros_like(step.x))
        conds = [self.positive, self.negative if "negative" in preds else None]
        for fn in self.model.pre_cfg_functions:
            cond, uncond = fn(PreCfgArgs([cond, uncond], conds, self.cfg, step.x, step.sigma, step.image))[:2]
        return cfg_combine(self.model, cond, uncond, self.cfg, step, self.positive, self.negative)

    def own_guidance(self, image, shape, sigmas, image_cond):
        pipe, m = self.model.pipe, self.model
        plain = all(not any(k in (extra or {}) for k in _PLACED) for _, extra in self.positive + (self.negative or []))
        patched = m.sampling is not None or m.latent_format is not None or m.cfg_function or m.output_block_patches \
            or m.post_cfg_functions or m.network_patches or m.pre_cfg_functions or m.calc_cond_batch_function \
            or (m.step_cache is not None and m.step_cache.per_network_call)
        text_meta = any(p.is_meta for enc in pipe.family.text_modules(pipe.model) for p in enc.parameters())
        if not pipe.config.cfg_embed_channels or len(self.positive) != 1 or not plain or patched or text_meta \
                or self.needs_uncond:
            return None  # (a UNet loaded alone has no text encoders for the pipeline's own guidance)
        n = len(sigmas) - 1
        down = pipe.config.vae.downscale
        w, h = shape[3] * down, shape[2] * down
        cond = _schedule(self.positive, n, pipe.device)
        if self_guided_scale(pipe.config, cond, self.cfg) is None:
            return None
        uncond = None if not self.negative else _schedule(self.negative[:1], n, pipe.device)
        guidance = plan(pipe.config, cond, self.cfg, None if uncond is None else (lambda: uncond),
                        lambda: pipe.cond_schedule("", None, n, w, h, negative=True))
        return pipe.denoiser(guidance, sigmas, image_cond)


def _schedule(conditioning: list, steps: int, device) -> CondSchedule:
    """A plain CONDITIONING (no SDXL sizes: only guidance-distilled models come here) as the
    pipeline's prompt schedule: its entries averaged."""
    parts = [ScheduledPart(1.0 / len(conditioning), "", [(steps, "")], [Conditioning(ctx.to(device), None)])
             for ctx, _ in conditioning]
    return CondSchedule("", steps, parts, [])


class BasicGuider(CFGGuider):
    def __init__(self, model: ModelRef, conditioning: list):
        super().__init__(model, conditioning, None, 1.0)


class DualCFGGuider(Guider):
    negative_kinds = ("negative", "middle")

    def __init__(self, model: ModelRef, cond1: list, cond2: list, negative: list, cfg_conds: float,
                 cfg_cond2_negative: float):
        super().__init__(model)
        self.conds = {"positive": cond1, "middle": cond2, "negative": negative}
        self.cfg1, self.cfg2 = float(cfg_conds), float(cfg_cond2_negative)

    def lists(self):
        return self.conds

    def combine(self, preds, step):
        middle = preds["middle"]
        return cfg_combine(self.model, middle, preds["negative"], self.cfg2, step, self.conds["middle"],
                           self.conds["negative"]) + \
            (preds["positive"] - middle) * self.cfg1


def perp_neg(pos_pred, neg_pred, nocond_pred, neg_scale: float, cond_scale: float) -> torch.Tensor:
    """CFG away from only the part of the negative direction perpendicular to the positive one
    (Armandpour et al. 2023). A positive equal to the empty prompt has no direction: the
    projection is then dropped (ComfyUI's nan_to_num) and this is plain CFG."""
    pos, neg = pos_pred - nocond_pred, neg_pred - nocond_pred
    along = torch.nan_to_num((neg * pos).sum() / torch.norm(pos) ** 2, nan=0.0, posinf=0.0, neginf=0.0)
    return nocond_pred + cond_scale * (pos - (neg - along * pos) * neg_scale)


class PerpNegGuider(Guider):
    """Perp-Neg as a guider (ComfyUI's Guider_PerpNeg): the empty prompt is the unconditional
    prediction, the negative only pushes away perpendicular to the positive. At neg_scale 0 the
    negative is not evaluated (nor the empty prompt when cfg is also 1); the model's
    sampler_cfg_function is not used, its post-CFG functions are."""
    negative_kinds = ("negative", "empty_negative_prompt")

    def __init__(self, model: ModelRef, positive: list, negative: list, empty: list, cfg: float, neg_scale: float):
        super().__init__(model)
        self.conds = {"positive": positive, "negative": negative, "empty_negative_prompt": empty}
        self.cfg, self.neg_scale = float(cfg), float(neg_scale)

    def lists(self):
        return self.conds

    def evaluated(self):
        names = list(self.conds)
        if math.isclose(self.neg_scale, 0.0) and not self.needs_uncond:
            names.remove("negative")
            if math.isclose(self.cfg, 1.0):
                names.remove("empty_negative_prompt")
        return names

    def combine(self, preds, step):
        zeros = torch.zeros_like(step.x)
        pos, neg = preds["positive"], preds.get("negative", zeros)
        out = perp_neg(pos, neg, preds.get("empty_negative_prompt", zeros), self.neg_scale, self.cfg)
        return post_cfg(self.model, out, pos, neg, self.cfg, step, self.conds["positive"], self.conds["negative"])
