"""Control-LoRA: a file written from a known ControlNet (its encoder = the base UNet's weights plus
chosen low-rank deltas, some layers replaced outright, the ControlNet-only layers random) loads to
that ControlNet: the same residuals and the same images; full-size SDXL key sets on meta; listing,
ComfyUI loader; clear errors."""
import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from reference import assert_close_scaled, randomize_

from opensd.adapters.control_lora import control_lora_weights
from opensd.adapters.controlnet import ControlApplier, ControlSpec, load_controlnet
from opensd.checkpoints.controlnet_files import CONTROL_LORA_MARKER, describe_control_lora, save_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.library.model_catalog import describe
from opensd.library.models_dir import ModelFile
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models import config as C
from opensd.models.controlnet import ControlNet, ControlNetConfig
from opensd.models.unet import UNetModel
from opensd.pipeline.pipeline import load

RANK = 2
OWN = ("input_hint_block.", "zero_convs.", "middle_block_out.")  # the ControlNet-only layers


def _pair(weight: torch.Tensor, g: torch.Generator, rank: int = RANK):
    up = torch.randn(weight.shape[0], rank, *([1] * (weight.ndim - 2)), generator=g) * 0.05
    down = torch.randn(rank, *weight.shape[1:], generator=g) * 0.05
    return up, down


def _files(pipe, d):
    """(Control-LoRA path, path of the ControlNet it stands for), both for `pipe`'s network."""
    g = torch.Generator().manual_seed(3)
    base = {k: v.float() for k, v in pipe.family.network(pipe.model).state_dict().items()}
    net = randomize_(ControlNet(ControlNetConfig(TINY.unet)), seed=5, std=0.1)
    known, lora = {}, {CONTROL_LORA_MARKER: torch.zeros(1)}
    for k, v in net.state_dict().items():
        layer = k.rsplit(".", 1)[0]
        if k.startswith(OWN) or k == "input_blocks.1.0.in_layers.0.weight":  # a norm replaced outright
            known[k] = lora[k] = v
        elif k.endswith(".weight") and v.ndim >= 2 and len(known) % 3 != 1:  # most matrices get a delta
            up, down = _pair(v, g)
            lora[layer + ".up"], lora[layer + ".down"] = up, down
            known[k] = base[k] + (up.flatten(1) @ down.flatten(1)).reshape(v.shape)
        else:
            known[k] = base[k]
    net.load_state_dict(known)
    save_controlnet(net, d / "known.safetensors", "small", dtype=torch.float32)
    save_safetensors({k: v.contiguous() for k, v in lora.items()}, d / "control-lora-tiny-rank2.safetensors")
    return d / "control-lora-tiny-rank2.safetensors", d / "known.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    d = tmp_path_factory.mktemp("clora")
    pipe = load(write_random_checkpoint(d / "tiny.safetensors"))
    return (pipe, *_files(pipe, d))


def _edges():
    im = Image.new("RGB", (64, 64))
    ImageDraw.Draw(im).rectangle((12, 12, 50, 44), outline=(255, 255, 255), width=2)
    return im


def test_control_lora_is_the_controlnet_it_was_written_from(env):
    pipe, lora_path, known_path = env
    lora = load_controlnet(lora_path, pipe, dtype=torch.float32)
    known = load_controlnet(known_path, pipe, dtype=torch.float32)
    assert not lora.is_adapter and lora.family == pipe.config.family
    for k, v in known.net.state_dict().items():
        torch.testing.assert_close(lora.net.state_dict()[k], v, rtol=1e-6, atol=1e-6)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([500, 20])
    ctx = torch.randn(2, 5, TINY.unet.context_dim, generator=g)
    a = ControlApplier([ControlSpec(lora, _edges())], 64, 64, "cpu", torch.float32)(x, t, ctx, None, 0.0)
    b = ControlApplier([ControlSpec(known, _edges())], 64, 64, "cpu", torch.float32)(x, t, ctx, None, 0.0)
    for p, q in zip(a.outputs, b.outputs):
        assert_close_scaled(p, q)
    assert max(float(p.abs().max()) for p in a.outputs) > 1e-3


def test_same_images_as_the_known_controlnet(env):
    pipe, lora_path, known_path = env
    run = lambda p: np.asarray(pipe.txt2img("a box", steps=3, seed=4, cfg=5.0, controls=[  # noqa: E731
        ControlSpec(load_controlnet(p, pipe), _edges(), weight=0.9)])[0]).astype(np.int16)
    mine, known = run(lora_path), run(known_path)
    plain = np.asarray(pipe.txt2img("a box", steps=3, seed=4, cfg=5.0)[0]).astype(np.int16)
    assert np.abs(mine - known).max() <= 1  # the deltas summed in another order: float rounding only
    assert np.abs(mine - plain).max() > 5


def test_listing_and_errors(env, tmp_path):
    pipe, lora_path, _ = env
    assert describe(ModelFile("controlnet", lora_path.name, lora_path)).detail == "Control-LoRA (rank 2), 3-channel hint"
    with pytest.raises(CheckpointError, match="no model was given"):
        load_controlnet(lora_path, pipe.config, device="cpu", dtype=torch.float32)
    other = C.ModelConfig(family="small", unet=C.UNetConfig(model_channels=64, channel_mult=(1, 2), num_res_blocks=1,
                                                             transformer_depth=(1, 1), context_dim=64),
                          vae=TINY.vae, text_encoders=TINY.text_encoders)

    class Other:  # a pipeline-like base of another shape
        config, device, dtype, family = other, "cpu", torch.float32, pipe.family
        model = type("M", (), {"unet": UNetModel(other.unet)})()
    with pytest.raises(CheckpointError, match="does not fit|do not fit"):
        load_controlnet(lora_path, Other(), device="cpu", dtype=torch.float32)


def test_full_size_sdxl_key_set_on_meta():
    cfg = C.sdxl()
    with torch.device("meta"):
        wanted = {k: v for k, v in ControlNet(ControlNetConfig(cfg.unet)).state_dict().items()}
        base = UNetModel(cfg.unet).state_dict()
    file = {CONTROL_LORA_MARKER: torch.zeros(1, device="meta")}
    for k, v in wanted.items():
        if k.startswith(OWN) or v.ndim < 2:
            file[k] = torch.empty(v.shape, device="meta")
        else:
            layer = k.rsplit(".", 1)[0]
            file[layer + ".up"] = torch.empty(v.shape[0], 128, *([1] * (v.ndim - 2)), device="meta")
            file[layer + ".down"] = torch.empty(128, *v.shape[1:], device="meta")
    got = control_lora_weights(file, base, {k: tuple(v.shape) for k, v in wanted.items()})
    assert {k: tuple(v.shape) for k, v in got.items()} == {k: tuple(v.shape) for k, v in wanted.items()}
    family, line = describe_control_lora({k: tuple(v.shape) for k, v in file.items()})
    assert family == "sdxl" and line == "Control-LoRA (rank 128), 3-channel hint"


def test_comfy_controlnet_loader_takes_it(env, tmp_path):
    import copy

    from workflow_fixtures import Loader, default_graph, make_ctx, make_models

    from opensd.workflows import execute
    pipe, lora_path, _ = env
    folders = make_models(tmp_path / "models")
    (tmp_path / "models" / "controlnet").mkdir()
    (tmp_path / "models" / "controlnet" / lora_path.name).write_bytes(lora_path.read_bytes())
    ctx = make_ctx(folders, Loader(folders), tmp_path / "run")
    ctx.inputs_dir.mkdir(parents=True)
    _edges().save(ctx.inputs_dir / "edges.png")

    def run(strength):
        g = default_graph()
        g["10"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": lora_path.name}}
        g["11"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
        g["12"] = {"class_type": "ControlNetApply", "inputs": {
            "conditioning": ["6", 0], "control_net": ["10", 0], "image": ["11", 0], "strength": strength}}
        g["3"]["inputs"]["positive"] = ["12", 0]
        (entry,) = execute(copy.deepcopy(g), ctx)["9"]["images"]
        return np.asarray(Image.open(ctx.outputs_dir / entry["subfolder"] / entry["filename"]), dtype=np.float32)

    assert np.abs(run(1.0) - run(0.0)).mean() > 0.1
