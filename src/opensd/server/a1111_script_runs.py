"""AUTOMATIC1111's selectable scripts through its API: `script_name` "X/Y/Z plot", "Prompt matrix",
"Prompts from file or textbox" and (img2img) "SD upscale", with `script_args` in the order A1111's
scripts take them (opensd.scripts.*: `from_script_args`).

Each request is planned when it arrives: every generation the script will make is built and checked
(a bad argument or axis value is a 422 naming it) and their work together is held to the server's
work budget. On the worker, the script runs its generations through `a1111_run.generate`, exactly
as the same settings sent as plain requests would run, with one progress count over all of them;
an interrupt stops it with what is done. The response lists the grids first, as A1111's does
(`index_of_first_image` in the info says how many).
"""
from __future__ import annotations

import copy
from pathlib import Path

from PIL import Image

from ..scripts import prompt_matrix, prompts_file, sd_upscale, xyz
from ..scripts.spec import Generated, Progress, ScriptResult, Spec
from ..text.styles import Style
from . import a1111_apply, a1111_refiner, a1111_run, a1111_unsupported, work_budget
from .a1111_scripts import Script, register


class _CellControl:
    """A generation's view of the job's Control inside a script: its steps count within the script's."""

    def __init__(self, ctl, progress: Progress):
        self.ctl, self.progress = ctl, progress

    def step(self, i: int, n: int) -> None:
        self.progress(i, n)

    def phase(self, phase: str) -> None:
        self.ctl.phase(phase)

    def image(self, index: int, count: int) -> None:
        pass  # /progress counts the script's steps, not each generation's images

    def preview(self, image) -> None:
        self.ctl.preview(image)


class ServerFace:
    """What the A1111 API lends a script: generation as its requests run, and its names."""

    def __init__(self, state, payload: dict, req, ctl=None):
        self.state, self.p, self.req, self.ctl = state, payload, req, ctl
        self.img2img = payload["mode"] == "img2img"
        self.opts = state.options.effective(req.override_settings)

    def generate(self, spec: Spec, progress: Progress) -> Generated:
        model = spec.model or self.p["model_path"]
        vae = self._vae_path(spec, Path(model))
        refiner = a1111_refiner.for_cell(self.req, self.opts, self.p.get("refiner"), spec.refiner, spec.refiner_switch)
        p = dict(self.p, kwargs=spec.kwargs, prompt=spec.prompt, negative_prompt=spec.negative_prompt,
                 model_path=model, vae_path=str(vae) if vae else None, refiner=refiner)
        req = self.req.model_copy(update={"seed": spec.seed, "subseed": spec.subseed, "n_iter": spec.n_iter})
        return a1111_run.generate(self.state, p, req, _CellControl(self.ctl, progress), init=spec.init)

    def _vae_path(self, spec: Spec, model: Path) -> Path | None:
        if spec.vae is None:
            if spec.model is None:
                return Path(self.p["vae_path"]) if self.p.get("vae_path") else None
            return a1111_apply.vae_path(self.state.folders, self.opts, model)  # the setting, for that model
        if spec.vae in ("Automatic", "None"):
            return a1111_apply.vae_path(self.state.folders, {"sd_vae": spec.vae}, model)
        return Path(spec.vae)

    def checkpoint(self, name: str, where: str = "Checkpoint name") -> str:
        return str(self.state.cache.resolve(name, where))

    def vae(self, name: str) -> str:
        key = name.strip().lower()
        if key in ("auto", "automatic"):
            return "Automatic"
        if key == "none":
            return "None"
        return str(a1111_apply.vae_path(self.state.folders, {"sd_vae": name.strip()}, Path(), where="VAE"))

    def styles(self) -> dict[str, Style]:
        return self.state.styles()

    def upscalers(self) -> list[str]:
        return self.state.cache.upscalers.names()  # as GET /sdapi/v1/upscalers lists them

    def upscale(self, image: Image.Image, name: str, scale: float) -> Image.Image:
        return self.state.cache.upscalers.upscale(image, scale, name, "upscaler_index")

    def upscaler(self, name: str, hires: bool = False) -> str:
        if hires:
            return a1111_run.hires_upscaler(name, self.state.cache.upscalers)
        found = self.state.cache.upscalers.find(name, "upscaler_index")
        return found if isinstance(found, str) else name


def _base(p: dict, req) -> Spec:
    schedule = req.scheduler if req.scheduler and req.scheduler.strip().lower() != "automatic" else None
    return Spec(p["prompt"], p.get("negative_prompt", req.negative_prompt), copy.deepcopy(p["kwargs"]),
                req.seed, req.subseed, req.n_iter, schedule=schedule)


def _check_work(state, specs: list[Spec], title: str) -> None:
    cost = sum(work_budget.a1111_cost(s.kwargs, s.n_iter)[0] for s in specs)
    work_budget.check(cost, f"{len(specs)} generations of the {title}", state.settings.work_budget)


def _finish(state, job, p: dict, req, result: ScriptResult):
    files, pngs = a1111_run.save(state, job.id, p, result.images, result.infotexts, req.send_images,
                                 result.grids)
    made, path = result.made, Path(p["model_path"])
    info = a1111_run.info_dict(req, p["kwargs"], path.stem if path.is_file() else path.name,
                               state.cache.short_hash(path), [m.seed for m in made], [m.subseed for m in made],
                               result.infotexts, p["mode"] == "img2img")
    info.update(all_prompts=[m.prompt for m in made], all_negative_prompts=[m.negative_prompt for m in made],
                interrupted=result.interrupted, index_of_first_image=result.grids,
                **a1111_unsupported.info_fields([tuple(g) for g in p.get("gaps", [])]))
    if made:
        info.update(prompt=made[0].prompt, negative_prompt=made[0].negative_prompt)
    return {"files": files, "info": info}, {"pngs": pngs, "info": info}


def _runner(plan, execute, count):
    """A script's prepare (plan and check the work, count the images it will save) and run (plan again
    on the worker, then execute). count(base, options, specs): the images execute returns."""
    def prepare(state, req, payload: dict) -> dict:
        face = ServerFace(state, payload, req)
        base = _base(payload, req)
        options, specs = plan(face, base)
        _check_work(state, specs, req.script_name)
        payload["images"] = count(base, options, specs)
        return payload

    def run(state, job, ctl):
        p = job.payload
        req = a1111_run.request_of(p)
        face = ServerFace(state, p, req, ctl)
        options, _ = plan(face, _base(p, req))
        return _finish(state, job, p, req, execute(face, _base(p, req), options, ctl.step))

    return prepare, run


def _xyz_plan(face: ServerFace, base: Spec):
    axes, options = xyz.from_script_args(face.req.script_args, base, face.img2img)
    if face.p.get("every_image"):  # A1111 saves every cell when it saves, whatever its answer holds
        options.include_lone_images = True
    return (axes, options), xyz.cells(base, axes, options, face)


def _matrix_plan(face: ServerFace, base: Spec):
    options = prompt_matrix.from_script_args(face.req.script_args)
    return options, prompt_matrix.cells(base, options)


def _file_plan(face: ServerFace, base: Spec):
    options = prompts_file.from_script_args(face.req.script_args)
    return options, prompts_file.cells(base, options, face)


def _init(face: ServerFace) -> Image.Image:
    return a1111_run.init_image(face.req, face.p, face.state.settings.max_image_pixels)


def _upscale_plan(face: ServerFace, base: Spec):
    options = sd_upscale.from_script_args(face.req.script_args, face)
    tiles = sd_upscale.layout(base, _init(face), options)
    return options, [s for group in sd_upscale.cells(base, tiles) for s in group]


def _args(names: tuple[str, ...], defaults: tuple) -> tuple[dict, ...]:
    return tuple({"label": n, "value": v, "minimum": None, "maximum": None, "step": None, "choices": None}
                 for n, v in zip(names, defaults))


def _register() -> None:
    def xyz_run(face, base, options, progress):
        axes, grid_options = options
        return xyz.run(base, axes, grid_options, face, progress)

    def upscale_run(face, base, options, progress):
        return sd_upscale.run(base, _init(face), options, face, progress)

    for title, modes, args, plan, execute, count in (
        (xyz.TITLE, ("txt2img", "img2img"), _args(xyz.ARG_NAMES, xyz.ARG_DEFAULTS), _xyz_plan, xyz_run,
         lambda base, options, specs: xyz.image_count(options[0], options[1], specs)),
        (prompt_matrix.TITLE, ("txt2img", "img2img"), _args(prompt_matrix.ARG_NAMES, (False, False, "positive", "comma", 0)),
         _matrix_plan, lambda face, base, o, progress: prompt_matrix.run(base, o, face, progress),
         lambda base, options, specs: prompt_matrix.image_count(specs)),
        (prompts_file.TITLE, ("txt2img", "img2img"), _args(prompts_file.ARG_NAMES, (False, False, "start", "")),
         _file_plan, lambda face, base, o, progress: prompts_file.run(base, o, face, progress),
         lambda base, options, specs: sum(s.images for s in specs)),
        (sd_upscale.TITLE, ("img2img",), _args(sd_upscale.ARG_NAMES, (None, 64, 1, 2.0)), _upscale_plan, upscale_run,
         lambda base, options, specs: base.n_iter),  # one upscaled image per iteration
    ):
        prepare, run = _runner(plan, execute, count)
        register(Script(title, alwayson=False, modes=modes, args=args, run=run, prepare=prepare))


_register()
