"""A T2I-Adapter where ControlNets load: the model listing, the CLI's --control, an A1111 ControlNet
unit (and /controlnet/model_list), ComfyUI's ControlNetLoader + ControlNetApplyAdvanced."""
import copy

import numpy as np
import pytest
import torch
import webuiapi
from PIL import Image, ImageDraw
from reference import randomize_
from server_live import LiveServer, models_dir
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.adapters.controlnet import ControlApplier, ControlSpec, load_controlnet
from opensd.checkpoints.t2i_adapter_files import save_t2i_adapter
from opensd.cli import main
from opensd.library.model_catalog import describe
from opensd.library.models_dir import ModelFile
from opensd.library.synthetic import write_random_checkpoint
from opensd.models.t2i_adapter import T2IAdapter, T2IAdapterConfig
from opensd.server import a1111_run
from opensd.server.a1111_models import Txt2ImgRequest
from opensd.server.settings import Settings
from opensd.workflows import execute
from opensd.workflows.nodes_controlnet import ControlHint, ControlNetRef, RowControl

NAME = "t2iadapter_tiny_sketch"


def _write(path):
    cfg = T2IAdapterConfig(channels=(32, 64), num_res_blocks=2, unshuffle=8, downsamples=(False, True))
    save_t2i_adapter(randomize_(T2IAdapter(cfg), seed=3, std=0.2), path, dtype=torch.float32)
    return path


def _edges():
    im = Image.new("RGB", (64, 64))
    ImageDraw.Draw(im).rectangle((10, 12, 40, 50), outline=(255, 255, 255), width=2)
    return im


def test_listing_names_it_a_t2i_adapter(tmp_path):
    path = _write(tmp_path / f"{NAME}.safetensors")
    entry = describe(ModelFile("controlnet", path.name, path))
    assert entry.detail == "T2I-Adapter (full), 3-channel hint"


def test_cli_control_with_an_adapter(tmp_path):
    model = write_random_checkpoint(tmp_path / "tiny.safetensors")
    ad = _write(tmp_path / f"{NAME}.safetensors")
    _edges().save(tmp_path / "edges.png")
    outs = {}
    for w in ("0", "1"):
        outs[w] = tmp_path / f"w{w}.png"
        assert main(["generate", "a box", "--model", str(model), "--steps", "2", "--seed", "1", "-o", str(outs[w]),
                     "--control", f"{ad},{tmp_path / 'edges.png'},weight={w}"]) == 0
    plain = tmp_path / "plain.png"
    assert main(["generate", "a box", "--model", str(model), "--steps", "2", "--seed", "1", "-o", str(plain)]) == 0
    px = lambda p: np.asarray(Image.open(p), dtype=np.int16)  # noqa: E731
    assert np.array_equal(px(plain), px(outs["0"])) and np.abs(px(plain) - px(outs["1"])).max() > 0


def test_a1111_unit_and_model_list(tmp_path):
    models = models_dir(tmp_path)
    (models / "ControlNet").mkdir()
    _write(models / "ControlNet" / f"{NAME}.safetensors")
    with LiveServer(Settings(models_dir=models, outputs_dir=tmp_path / "outputs")) as live:
        api = webuiapi.WebUIApi(host="127.0.0.1", port=live.port, sampler="Euler", steps=3)
        listed = api.controlnet_model_list()
        assert any(n.startswith(f"{NAME} [") for n in listed)
        unit = webuiapi.ControlNetUnit(image=_edges(), module="none", model=NAME, weight=0.8,
                                       resize_mode="Just Resize")
        got = api.txt2img(prompt="a box", width=64, height=64, seed=11, cfg_scale=5, controlnet_units=[unit],
                          override_settings={"sd_model_checkpoint": "tiny"}, alwayson_scripts={})
        pipe = live.state.cache.get(live.state.cache.resolve("tiny"))
        req = Txt2ImgRequest(prompt="a box", width=64, height=64, seed=11, cfg_scale=5, steps=3, sampler_name="Euler")
        kw, _ = a1111_run.plan(req, False, 20_000, live.state.options.view())
        net = load_controlnet(live.state.folders.resolve("controlnet", NAME), pipe)
        direct = pipe.txt2img("a box", "", seed=11, controls=[ControlSpec(net, _edges(), weight=0.8)], **kw)[0]
        plain = pipe.txt2img("a box", "", seed=11, **kw)[0]
    assert np.array_equal(np.asarray(direct), np.asarray(got.image.convert("RGB")))
    assert not np.array_equal(np.asarray(direct), np.asarray(plain))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("wft2i")
    folders = make_models(tmp / "models")
    (tmp / "models" / "controlnet").mkdir()
    _write(tmp / "models" / "controlnet" / f"{NAME}.safetensors")
    return folders, Loader(folders)


def test_comfy_nodes_apply_it_and_rows_equal_the_pipeline_applier(env, tmp_path):
    folders, loader = env
    ctx = make_ctx(folders, loader, tmp_path)
    ctx.inputs_dir.mkdir(parents=True)
    _edges().save(ctx.inputs_dir / "edges.png")

    def run(strength):
        g = default_graph()
        g["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": f"{NAME}.safetensors"}}
        g["11"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
        g["12"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "control_net": ["10", 0], "image": ["11", 0],
            "strength": strength, "start_percent": 0.0, "end_percent": 1.0}}
        g["3"]["inputs"]["positive"], g["3"]["inputs"]["negative"] = ["12", 0], ["12", 1]
        (entry,) = execute(copy.deepcopy(g), ctx)["9"]["images"]
        return np.asarray(Image.open(ctx.outputs_dir / entry["subfolder"] / entry["filename"]), dtype=np.float32)

    assert np.abs(run(1.0) - run(0.0)).mean() > 0.1

    pipe = loader("tiny.safetensors")
    path = folders.resolve("controlnet", f"{NAME}.safetensors")
    image = torch.from_numpy(np.asarray(_edges(), dtype=np.float32) / 255.0)[None].movedim(-1, 1)
    hint = ControlHint(ControlNetRef(path, NAME), image, 0.7)
    ours = RowControl(pipe, [hint, hint], 0, 64, 64)
    theirs = ControlApplier([ControlSpec(load_controlnet(path, pipe), _edges(), weight=0.7)], 64, 64, pipe.device,
                            pipe.dtype)
    g = torch.Generator().manual_seed(0)
    x, ctx_ = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 77, 64, generator=g)
    a, b = ours(x, torch.tensor([500.0]), ctx_, None, 0.0), theirs(x, torch.tensor([500.0]), ctx_, None, 0.0)
    assert [i for i, v in enumerate(a.inner) if v is not None] == [i for i, v in enumerate(b.inner) if v is not None]
    for p, q in zip(a.inner, b.inner):
        assert (p is None) == (q is None) and (p is None or torch.allclose(p, q, atol=1e-5))
