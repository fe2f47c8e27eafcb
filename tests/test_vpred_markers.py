"""Checkpoints whose prediction and noise schedule are marked by tensors in the state dict (the keys
ComfyUI reads): "v_pred" (+ "ztsnr") for NoobAI/Illustrious v-pred SDXL, "edm_vpred.sigma_max/min"
for CosXL's continuous EDM v-prediction, and CosXL Edit (the same with an 8-channel UNet). They load
and sample without flags; the EDM step is checked against EDM's formulas written out here."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from PIL import Image, ImageDraw

from opensd.checkpoints import detect as D
from opensd.checkpoints import markers as M
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.library.model_catalog import _checkpoint
from opensd.library.model_info import checkpoint_config
from opensd.library.synthetic import random_state_dict
from opensd.pipeline.pipeline import load
from opensd.sampling import samplers as S
from opensd.sampling.schedule_options import ZTSNR_LAST
from test_detect import full_size
from workflow_models import TINY_SDXL

V_PRED = {"v_pred": torch.tensor([])}
ZTSNR = {"v_pred": torch.tensor([]), "ztsnr": torch.tensor([])}
COSXL = {"edm_vpred.sigma_max": torch.tensor(80.0), "edm_vpred.sigma_min": torch.tensor(0.03)}


def _shapes(sd):
    return {k: tuple(v.shape) for k, v in sd.items()}


def _write(path, markers, cfg=TINY_SDXL, metadata=None):
    """A single-file SDXL-layout checkpoint (random weights) with the marker tensors added."""
    save_safetensors(random_state_dict(cfg) | markers, path, metadata=metadata or {})
    return path


# --- detection ----------------------------------------------------------------------------------

def test_full_size_sdxl_markers_set_prediction_and_schedule():
    sd, expected = full_size("sdxl")
    assert D.detect(_shapes(sd)) == expected and expected.prediction == "eps" and not expected.zsnr
    with torch.device("meta"):
        v = D.detect(_shapes(sd | V_PRED))
        z = D.detect(_shapes(sd | ZTSNR))
        edm = D.detect(_shapes(sd | COSXL), metadata=M.marker_metadata(COSXL))
        header_only = D.detect(_shapes(sd | COSXL))  # a listing reads no tensor values
    assert (v.prediction, v.zsnr, v.edm) == ("v", False, None)
    assert (z.prediction, z.zsnr, z.edm) == ("v", True, None)
    assert edm.prediction == "v" and (edm.edm.sigma_min, edm.edm.sigma_max, edm.edm.sigma_data) == (
        pytest.approx(0.03), 80.0, 1.0)
    assert header_only.edm == M.C.ContinuousEDM()  # ComfyUI's defaults: 0.002 .. 120
    assert replace(edm, prediction="eps", edm=None) == expected  # the architecture is untouched


def test_markers_beat_metadata_and_an_explicit_prediction_beats_markers():
    sd, _ = full_size("sdxl")
    shapes = _shapes(sd | V_PRED)
    assert D.detect(shapes, metadata={D.META_PREDICTION: "epsilon"}).prediction == "v"
    assert D.detect(shapes, prediction="eps").prediction == "eps"


def test_bad_markers_are_clear_errors():
    sd, _ = full_size("sdxl")
    with pytest.raises(CheckpointError, match="sigma_min < sigma_max"):
        D.detect(_shapes(sd | COSXL), metadata={M.META_EDM_MIN: "5", M.META_EDM_MAX: "1"})


def test_our_metadata_round_trips_the_schedule():
    sd, expected = full_size("sdxl")
    cfg = replace(expected, prediction="v", edm=M.C.ContinuousEDM(0.01, 90.0))
    assert D.detect(_shapes(sd), metadata=D.metadata_for(cfg)) == cfg
    cfg = replace(expected, prediction="v", zsnr=True)
    assert D.detect(_shapes(sd), metadata=D.metadata_for(cfg)) == cfg


# --- single files: listing, loading, sampling ----------------------------------------------------

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("markers")
    edit = replace(TINY_SDXL, unet=replace(TINY_SDXL.unet, in_channels=8))
    return {"ztsnr": _write(root / "noob-vpred.safetensors", ZTSNR),
            "cosxl": _write(root / "cosxl.safetensors", COSXL),
            "edit": _write(root / "cosxl-edit.safetensors", COSXL, edit)}


def test_listings_show_what_the_markers_say(files):
    assert _checkpoint(files["ztsnr"])[1] == "1024 px, v, zero terminal SNR"
    assert _checkpoint(files["cosxl"])[1] == "1024 px, v, EDM"
    assert _checkpoint(files["edit"])[1] == "1024 px, v, EDM, instruct-pix2pix (edit)"
    assert checkpoint_config(files["edit"]).edit


def test_ztsnr_model_samples_on_the_rescaled_schedule(files, caplog):
    pipe = load(files["ztsnr"], precision="fp32")
    assert (pipe.config.prediction, pipe.config.zsnr) == ("v", True)
    assert pipe.loaded.unknown_keys == [] and "not used" not in caplog.text  # markers are no stray weights
    assert float(pipe.alphas_cumprod[-1]) == pytest.approx(ZTSNR_LAST, rel=1e-3)
    ms = pipe.model_sampling()
    assert ms.prediction == "v" and ms.sigma_max == pytest.approx(math.sqrt((1 - ZTSNR_LAST) / ZTSNR_LAST), rel=1e-3)
    image = pipe.txt2img("a cat", steps=3, width=64, height=64, seed=1, sampler="Euler")[0]
    assert image.size == (64, 64)
    seen = _sampled(lambda: pipe.txt2img("a cat", steps=3, width=64, height=64, seed=1, sampler="Euler"))
    assert float(seen["sigmas"][0]) == pytest.approx(ms.sigma_max, rel=1e-3) and torch.isfinite(seen["out"]).all()


def _sampled(run):
    """Run `run` with Euler recording its sigmas, first input and result."""
    seen = {}
    euler = S.SAMPLERS["euler"]

    def spy(denoise, x, sigmas, *args, **kwargs):
        seen.update(sigmas=sigmas.clone(), x=x.clone())
        seen["out"] = euler(denoise, x, sigmas, *args, **kwargs)
        return seen["out"]

    S.SAMPLERS["euler"] = spy
    try:
        run()
    finally:
        S.SAMPLERS["euler"] = euler
    return seen


def test_edm_vpred_step_matches_the_formula(files):
    pipe = load(files["cosxl"], precision="fp32")
    assert pipe.config.edm.sigma_max == 80.0 and pipe.config.edm.sigma_min == pytest.approx(0.03)
    ms = pipe.model_sampling()
    assert (ms.sigma_max, ms.sigma_min) == (pytest.approx(80.0), pytest.approx(0.03))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 5
    calls = []

    def net(x_in, t, **cond):
        calls.append((x_in, t))
        return torch.tanh(x_in) * 0.7  # any function of the input: the scalings are what is checked

    for sigma in (0.05, 1.0, 14.6, 80.0):
        s = torch.tensor([sigma])
        out = ms.denoise(net, x, s)
        c_in, c_skip = 1 / math.sqrt(sigma ** 2 + 1), 1 / (sigma ** 2 + 1)
        c_out = -sigma / math.sqrt(sigma ** 2 + 1)  # v-prediction, sigma_data 1
        x_in, t = calls[-1]
        torch.testing.assert_close(x_in, x * c_in)
        assert float(t) == pytest.approx(0.25 * math.log(sigma), abs=1e-6)
        torch.testing.assert_close(out, c_skip * x + c_out * torch.tanh(x * c_in) * 0.7)
    seen = _sampled(lambda: pipe.txt2img("a cat", steps=4, width=64, height=64, seed=2, sampler="Euler",
                                               scheduler="karras"))
    assert float(seen["sigmas"][0]) == pytest.approx(80.0, rel=1e-4) and float(seen["sigmas"][-2]) == pytest.approx(0.03, rel=1e-4)
    assert torch.isfinite(seen["out"]).all()


def _picture():
    image = Image.new("RGB", (64, 64), (200, 40, 40))
    ImageDraw.Draw(image).rectangle((10, 10, 40, 50), fill=(20, 180, 60))
    return image


def test_cosxl_edit_model_edits_an_image_end_to_end(files, monkeypatch):
    pipe = load(files["edit"], precision="fp32")
    assert pipe.config.edit and pipe.config.edm is not None and pipe.config.prediction == "v"
    net = pipe.model.unet
    inputs = []
    forward = net.forward

    def spy(x, *args, **kwargs):
        inputs.append(x.detach().clone())
        return forward(x, *args, **kwargs)

    monkeypatch.setattr(net, "forward", spy)
    out = pipe.img2img(_picture(), "make it blue", "blurry", steps=3, cfg=5.0, strength=1.0, seed=4,
                       sampler="Euler", image_cfg_scale=1.5, width=64, height=64)
    assert out[0].size == (64, 64)
    assert len(inputs) == 6 and torch.isfinite(torch.cat(inputs)).all()  # 3 steps x (CFG rows, image-free row)
    with_image, without = inputs[0][:, 4:], inputs[1][:, 4:]
    assert with_image.shape[0] == 2 and without.shape[0] == 1 and not without.any()
    # CosXL Edit takes the scaled latent (ComfyUI's cosxl ip2p rule), not the unscaled one SD1's take
    torch.testing.assert_close(with_image, pipe.encode(_picture()).expand(2, -1, -1, -1), rtol=1e-4, atol=1e-4)


def test_a_diffusers_folder_with_zero_snr_betas_loads_on_that_schedule(tmp_path):
    """diffusers' scheduler flag rescale_betas_zero_snr is the same fact as the "ztsnr" marker."""
    from test_loader import _edit_json, make_diffusers_folder
    from opensd.pipeline.loader import load_model
    make_diffusers_folder(tmp_path / "model")
    _edit_json(tmp_path / "model" / "scheduler" / "scheduler_config.json", rescale_betas_zero_snr=True,
               prediction_type="v_prediction")
    cfg = load_model(tmp_path / "model").config
    assert (cfg.zsnr, cfg.prediction) == (True, "v")


def test_comfyui_instructpix2pix_conditioning_feeds_cosxl_edit_the_scaled_latent(files):
    """ComfyUI's rule for an SDXL edit model of EDM v type: the VAE's raw latent through the SDXL
    latent format (process_in); an SD1 InstructPix2Pix model gets the raw latent."""
    from opensd.workflows.conds import _concat
    pipe = load(files["edit"], precision="fp32")
    raw = torch.randn(1, 4, 8, 8)
    got = _concat({"concat_latent_image": raw}, (1, 4, 8, 8), pipe)
    torch.testing.assert_close(got, raw * 0.13025)
    plain = load(_write(files["edit"].with_name("ip2p-xl.safetensors"), {}, pipe.config), precision="fp32")
    torch.testing.assert_close(_concat({"concat_latent_image": raw}, (1, 4, 8, 8), plain), raw)


def test_comfyui_save_writes_the_markers_back_and_discrete_sampling_starts_from_the_files_schedule(files):
    from opensd.workflows import nodes_checkpoint_save as CS
    from opensd.workflows.nodes_model_patches import model_sampling_discrete
    from opensd.workflows.types import ModelRef
    z = load(files["ztsnr"], precision="fp32")
    meta, extra = CS._extra(ModelRef(z, "noob"), z)
    assert meta == {"modelspec.predict_key": "v"} and set(extra) == {"v_pred", "ztsnr"}
    cos = load(files["cosxl"], precision="fp32")
    meta, extra = CS._extra(ModelRef(cos, "cosxl"), cos)
    assert meta == {} and set(extra) == {"edm_vpred.sigma_max", "edm_vpred.sigma_min"}  # ComfyUI: EDM v type
    assert extra["edm_vpred.sigma_max"].item() == 80.0
    assert M.with_sampling(cos.config, extra, M.marker_metadata(extra), "x").edm == cos.config.edm
    # ComfyUI's ModelSamplingDiscrete builds from the file's schedule: zsnr off undoes the rescale
    plain = model_sampling_discrete(None, ModelRef(z, "noob"), "v_prediction", False)[0].sampling
    again = model_sampling_discrete(None, ModelRef(z, "noob"), "v_prediction", True)[0].sampling
    assert plain.sigma_max == pytest.approx(14.6146, rel=1e-3) and not plain.zsnr
    assert again.sigma_max == pytest.approx(z.model_sampling().sigma_max, rel=1e-4) and again.zsnr
    meta, extra = CS._extra(ModelRef(z, "noob", sampling=plain), z)
    assert set(extra) == {"v_pred"}


def test_training_uses_the_ztsnr_schedule_and_refuses_an_edm_model(files):
    from opensd.errors import InvalidArgument
    from opensd.training import finetune as FT
    z = FT.load_base(files["ztsnr"])
    assert float(FT.alphas_of(z)[-1]) == pytest.approx(ZTSNR_LAST, rel=1e-3)
    with pytest.raises(InvalidArgument, match="continuous-time EDM model"):
        FT.load_base(files["cosxl"])


def test_a_unet_only_file_with_markers_loads_as_its_kind(tmp_path):
    """ComfyUI's diffusion_models files (the UNet alone, no prefix) keep the marker tensors."""
    from opensd.pipeline.parts import load_unet
    unet = {k[len(D.UNET):]: v for k, v in random_state_dict(TINY_SDXL).items() if k.startswith(D.UNET)}
    save_safetensors(unet | COSXL, tmp_path / "cosxl-unet.safetensors")
    save_safetensors(unet | ZTSNR, tmp_path / "noob-unet.safetensors")
    cos, noob = load_unet(tmp_path / "cosxl-unet.safetensors"), load_unet(tmp_path / "noob-unet.safetensors")
    assert (cos.config.prediction, cos.config.edm.sigma_max) == ("v", 80.0)
    assert (noob.config.prediction, noob.config.zsnr, noob.config.edm) == ("v", True, None)
    assert float(noob.alphas_cumprod[-1]) == pytest.approx(ZTSNR_LAST, rel=1e-3)


def test_conversions_keep_the_kind(files, tmp_path):
    from opensd.errors import InvalidArgument
    from opensd.library.convert import convert_to_diffusers, convert_to_safetensors
    from opensd.pipeline.loader import load_model
    half = convert_to_safetensors(files["cosxl"], tmp_path / "cosxl-fp16.safetensors", half=True)
    assert load_model(half).config.edm == load_model(files["cosxl"]).config.edm  # bounds kept exact (fp32)
    folder = convert_to_diffusers(files["ztsnr"], tmp_path / "noob")
    cfg = load_model(folder).config
    assert (cfg.prediction, cfg.zsnr) == ("v", True)
    with pytest.raises(InvalidArgument, match="continuous-time EDM"):
        convert_to_diffusers(files["cosxl"], tmp_path / "cosxl")


def test_comfyui_graph_samples_cosxl_edit_on_its_own_edm_schedule(files, tmp_path):
    """CheckpointLoaderSimple alone gives the CosXL Edit MODEL its EDM v sampling (no
    ModelSamplingContinuousEDM node), as ComfyUI's loader does from the markers."""
    import shutil
    from opensd.library.models_dir import ModelFolders
    from opensd.workflows import execute
    from workflow_fixtures import Loader, make_ctx
    (tmp_path / "models" / "checkpoints").mkdir(parents=True)
    shutil.copy(files["edit"], tmp_path / "models" / "checkpoints" / "cosxl-edit.safetensors")
    folders = ModelFolders(tmp_path / "models", include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    graph = {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "cosxl-edit.safetensors"}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "make it blue", "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0xC82828}},
        "5": {"class_type": "InstructPixToPixConditioning", "inputs": {
            "positive": ["2", 0], "negative": ["3", 0], "vae": ["1", 2], "pixels": ["4", 0]}},
        "6": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "seed": 1, "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "karras",
            "positive": ["5", 0], "negative": ["5", 1], "latent_image": ["5", 2], "denoise": 1.0}},
        "7": {"class_type": "VAEDecode", "inputs": {"samples": ["6", 0], "vae": ["1", 2]}},
        "8": {"class_type": "SaveImage", "inputs": {"images": ["7", 0], "filename_prefix": "cosxl"}},
    }
    seen = _sampled(lambda: execute(graph, ctx))
    assert float(seen["sigmas"][0]) == pytest.approx(80.0, rel=1e-4) and torch.isfinite(seen["out"]).all()
    assert list((tmp_path / "output").glob("cosxl_*.png"))
