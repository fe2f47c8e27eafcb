"""ComfyUI's CheckpointSave (and CLIPSave, ModelSave, VAESave) on the tiny model: the file (read back with the safetensors library)
holds the loaded checkpoint's tensors under its own names with ComfyUI's metadata, numbered inside
the output folder; a branch's LoRAs are baked in (the saved checkpoint samples as the LoRA'd one);
parts that do not fit, or a family it cannot write, are one error line."""
import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch
from safetensors import safe_open
from server_live import write_lora
from workflow_fixtures import Loader, make_ctx, make_models
from workflow_models import make_all_models

from opensd.errors import InvalidArgument
from opensd.families import FLUX
from opensd.workflows import GraphError, execute, validate_prompt
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_checkpoint_save as CS
from opensd.workflows import nodes_loaders as L
from opensd.workflows.loras import release_all
from opensd.sampling.model_sampling import continuous_sampling
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, LoraEntry, ModelRef, NodeCall, VaeRef


@pytest.fixture
def ctx(tmp_path):
    folders = make_models(tmp_path / "models")
    write_lora(tmp_path / "models" / "loras" / "style.safetensors")
    return make_ctx(folders, Loader(folders), tmp_path, extra_pnginfo={"workflow": {"nodes": []}})


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def _graph(prefix="checkpoints/ComfyUI"):
    return {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
            "9": {"class_type": "CheckpointSave", "inputs": {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2],
                                                             "filename_prefix": prefix}}}


def test_checkpoint_save_writes_the_loaded_checkpoint_with_comfyuis_metadata(ctx, tmp_path):
    graph = _graph()
    assert "9" not in execute(graph, ctx)  # no UI output, as ComfyUI's
    saved, meta = _read(ctx.outputs_dir / "checkpoints" / "ComfyUI_00001_.safetensors")
    original, _ = _read(tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    assert saved.keys() == original.keys() and all(torch.equal(saved[k], original[k]) for k in original)
    assert json.loads(meta["prompt"]) == graph and json.loads(meta["workflow"]) == {"nodes": []}
    assert meta["modelspec.predict_key"] == "epsilon" and "modelspec.architecture" not in meta
    for prefix in ("../x", "/abs", "checkpoints/"):
        with pytest.raises(GraphError):
            validate_prompt(_graph(prefix), ctx)


def test_a_saved_checkpoint_samples_as_the_lora_branch_it_was_saved_from(ctx, tmp_path):
    pipe = ctx.load_pipeline("tiny.safetensors")
    lora = LoraEntry(tmp_path / "models" / "loras" / "style.safetensors", 1.0, 0.7)
    model, clip = ModelRef(pipe, "tiny", (lora,)), ClipRef(pipe, "tiny", (lora,))
    call = NodeCall(ctx, "9", {}, lambda kind, data: None)
    CS.checkpoint_save(call, model, clip, VaeRef(pipe, "tiny"), "baked")
    release_all()
    baked_path = tmp_path / "models" / "checkpoints" / "baked.safetensors"
    shutil.copy(ctx.outputs_dir / "baked_00001_.safetensors", baked_path)
    saved, _ = _read(baked_path)
    original, _ = _read(tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    changed = {k.split(".")[0] for k in original if not torch.equal(saved[k], original[k])}
    assert changed == {"model", "cond_stage_model"}  # the UNet and the text encoder carry the LoRA

    def sample(m, c):
        pos, neg = clip_text_encode(None, "a red boat", c)[0], clip_text_encode(None, "fog", c)[0]
        return K.sample(m, pos, neg, {"samples": torch.zeros(1, 4, 8, 8)}, seed=5, steps=3, cfg=5.0,
                        sampler_name="euler", scheduler="normal")["samples"]
    want = sample(model, clip)
    baked = ctx.load_pipeline("baked.safetensors")
    torch.testing.assert_close(sample(ModelRef(baked, "baked"), ClipRef(baked, "baked")), want, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(sample(ModelRef(pipe, "tiny"), ClipRef(pipe, "tiny")), want, atol=1e-3)


def test_parts_that_do_not_fit_and_other_families_are_one_line(ctx):
    pipe = ctx.load_pipeline("tiny.safetensors")
    call = NodeCall(ctx, "9", {}, lambda kind, data: None)
    model, vae = ModelRef(pipe, "tiny"), VaeRef(pipe, "tiny")
    te = {k: v for k, v in pipe.model.state_dict().items() if k.startswith("cond_stage_model.")}

    class foreign:  # another pipeline, as far as CheckpointSave looks at one
        lora_specs = []

        def __init__(self, tensors):
            self.model = SimpleNamespace(state_dict=lambda: tensors)

        def set_loras(self, specs):
            pass

        def apply_loras(self, prompt):
            pass
    unloaded = ClipRef(foreign({k: torch.empty(v.shape, device="meta") for k, v in te.items()}), "unet-only")
    with pytest.raises(InvalidArgument, match="^clip: unet-only holds no text encoder weights to save$"):
        CS.checkpoint_save(call, model, unloaded, vae, "x")
    key = next(iter(te))
    odd = ClipRef(foreign(dict(te, **{key: torch.zeros(3)})), "odd")
    with pytest.raises(InvalidArgument, match="^clip: the text encoder of odd does not fit"):
        CS.checkpoint_save(call, model, odd, vae, "x")
    with pytest.raises(InvalidArgument, match="^model: CheckpointSave .* not available for Flux"):
        CS.checkpoint_save(call, ModelRef(SimpleNamespace(family=FLUX), "flux"), odd, vae, "x")
    assert not list(ctx.outputs_dir.glob("x_*"))  # nothing left behind by a refused save
    release_all()


def test_v_prediction_markers_as_comfyui_writes_them(ctx):
    pipe = ctx.load_pipeline("tiny.safetensors")
    v_pipe = SimpleNamespace(config=replace(pipe.config, prediction="v"))
    meta, extra = CS._extra(ModelRef(v_pipe, "v"), v_pipe)
    assert meta == {"modelspec.predict_key": "v"} and extra["v_pred"].shape == (0,)
    edm = ModelRef(pipe, "cosxl", sampling=continuous_sampling("edm", "v", 0.002, 120.0))
    meta, extra = CS._extra(edm, pipe)
    assert meta == {"modelspec.predict_key": "epsilon"}
    assert extra["edm_vpred.sigma_max"].item() == pytest.approx(120.0)
    assert extra["edm_vpred.sigma_min"].item() == pytest.approx(0.002)


def test_model_save_and_vae_save_write_their_parts(ctx, tmp_path):
    graph = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
             "m": {"class_type": "ModelSave", "inputs": {"model": ["4", 0],
                                                         "filename_prefix": "diffusion_models/ComfyUI"}},
             "v": {"class_type": "VAESave", "inputs": {"vae": ["4", 2], "filename_prefix": "vae/ComfyUI_vae"}}}
    execute(graph, ctx)
    original, _ = _read(tmp_path / "models" / "checkpoints" / "tiny.safetensors")
    model, meta = _read(ctx.outputs_dir / "diffusion_models" / "ComfyUI_00001_.safetensors")
    want = {k: v for k, v in original.items() if k.startswith("model.")}
    assert model.keys() == want.keys() and all(torch.equal(model[k], want[k]) for k in want)
    assert meta["modelspec.predict_key"] == "epsilon" and json.loads(meta["prompt"]) == graph
    vae, meta = _read(ctx.outputs_dir / "vae" / "ComfyUI_vae_00001_.safetensors")
    want = {k.removeprefix("first_stage_model."): v for k, v in original.items() if k.startswith("first_stage_model.")}
    assert vae.keys() == want.keys() and all(torch.equal(vae[k], want[k]) for k in want)
    assert json.loads(meta["workflow"]) == {"nodes": []} and "modelspec.predict_key" not in meta


def test_clip_save_writes_each_text_encoder_as_clip_loader_reads_it(tmp_path):
    folders, names = make_all_models(tmp_path / "models", {})
    write_lora(tmp_path / "models" / "loras" / "style.safetensors")
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    graph = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_xl.safetensors"}},
             "s": {"class_type": "CLIPSave", "inputs": {"clip": ["4", 1], "filename_prefix": "clip/ComfyUI"}}}
    execute(graph, ctx)
    for tag in ("l", "g"):  # SDXL's two encoders, each as the separate download ComfyUI users keep
        saved, meta = _read(ctx.outputs_dir / "clip" / f"ComfyUI_clip_{tag}_00001_.safetensors")
        want, _ = _read(tmp_path / "models" / "clip" / names[f"xl_clip_{tag}"])
        assert saved.keys() == want.keys() and all(torch.equal(saved[k], want[k]) for k in want)
        assert meta["format"] == "pt" and json.loads(meta["prompt"]) == graph
    # an SD 1.x CLIP with a LoRA baked in: CLIPLoader reads the file back as that CLIP
    pipe = ctx.load_pipeline("tiny.safetensors")
    lora = LoraEntry(tmp_path / "models" / "loras" / "style.safetensors", 1.0, 0.7)
    call = NodeCall(ctx, "9", {}, lambda kind, data: None)
    CS.clip_save(call, ClipRef(pipe, "tiny", (lora,)), "clip/baked")
    release_all()
    baked = ctx.outputs_dir / "clip" / "baked_clip_l_00001_.safetensors"
    shutil.copy(baked, tmp_path / "models" / "clip" / "baked_clip_l.safetensors")
    (loaded,) = L.clip_loader(call, "baked_clip_l.safetensors", "stable_diffusion")
    want = clip_text_encode(None, "a red boat", ClipRef(pipe, "tiny", (lora,)))[0][0][0]
    torch.testing.assert_close(clip_text_encode(None, "a red boat", loaded)[0][0][0], want)
    assert not torch.allclose(clip_text_encode(None, "a red boat", ClipRef(pipe, "tiny"))[0][0][0], want)
    release_all()
    flux = ClipRef(SimpleNamespace(config=SimpleNamespace(family="flux"), family=FLUX), "flux")
    with pytest.raises(InvalidArgument, match="^clip: CLIPSave writes the text encoders of SD 1.x/2.x/XL models"):
        CS.clip_save(call, flux, "clip/x")
