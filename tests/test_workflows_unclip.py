"""unCLIP: ComfyUI's unCLIPConditioning and unCLIPCheckpointLoader, the noise-augmented image
embedding (comfy/model_base.py unclip_adm with CLIPEmbeddingNoiseAugmentation: the 1000-step
squaredcos_cap_v2 schedule, identity embedding statistics, CPU noise from manual_seed(seed - 10)),
worked here from the published formulas; as a Stable unCLIP 2.1 model's "y" (zeros without an
image), as SDXL's pooled text ("ReVision"), ignored by other models; and a whole graph on a tiny
random Stable unCLIP checkpoint whose image encoder lives inside it."""
from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_workflows_object_info import check_object_info
from vision_fixtures import clip_vision
from workflow_fixtures import Loader, make_ctx
from workflow_models import TINY_SDXL

from opensd.checkpoints import detect as D
from opensd.checkpoints.files import save_safetensors
from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.library.synthetic import TINY, random_state_dict
from opensd.models import config as C
from opensd.models.clip_vision import VisionOutput, preprocess
from opensd.pipeline.unclip import noise_schedule, unclip_vector
from opensd.workflows import execute
from opensd.workflows.conds import prepare
from opensd.workflows.nodes_unclip import unclip_conditioning
from opensd.workflows.types import NODES, NodeCall

D_EMB = 24  # vision_fixtures' projection width
TINY_UNCLIP = C.ModelConfig(
    family="sd2", unet=replace(TINY.unet, adm_in_channels=2 * D_EMB, unclip=True, use_linear_in_transformer=True),
    vae=TINY.vae, prediction="v", resolution=64,
    text_encoders=(C.TextEncoderConfig(naming="openclip", width=64, layers=2, heads=1, act="gelu", skip=1,
                                       final_norm=True, pad_token=0),))


def _alpha_bar(t: float) -> float:
    return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2


def _temb(level: int, dim: int) -> torch.Tensor:
    half = dim // 2
    args = level * torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    return torch.cat([torch.cos(args), torch.sin(args)])[None]


def _by_hand(x: torch.Tensor, level: int, noise: torch.Tensor) -> torch.Tensor:
    ac = np.cumprod([1 - min(1 - _alpha_bar((i + 1) / 1000) / _alpha_bar(i / 1000), 0.999) for i in range(1000)])
    z = float(np.sqrt(ac[level])) * x + float(np.sqrt(1 - ac[level])) * noise
    return torch.cat([z, _temb(level, x.shape[1])], dim=1)


def _output(embeds: torch.Tensor) -> VisionOutput:
    return VisionOutput(torch.zeros(1), embeds, torch.zeros(1))


def test_schedule_is_the_capped_cosine():
    keep, add = noise_schedule()
    beta0 = 1 - _alpha_bar(0.001) / _alpha_bar(0.0)
    assert keep[0].item() == pytest.approx(math.sqrt(1 - beta0), rel=1e-6)
    torch.testing.assert_close(keep ** 2 + add ** 2, torch.ones(1000))
    assert (keep[999] / keep[998]).item() ** 2 == pytest.approx(0.001, rel=1e-4)  # the last beta capped at 0.999


def test_one_image_is_noised_and_weighted():
    x = torch.randn(1, 16, generator=torch.Generator().manual_seed(1))
    got = unclip_vector([(x, 0.7, 0.25)], seed=33, merge=0.05)
    noise = torch.randn(1, 16, generator=torch.Generator().manual_seed(33))
    torch.testing.assert_close(got, _by_hand(x, 250, noise) * 0.7)  # round(999 * 0.25) = 250
    torch.testing.assert_close(unclip_vector([(x, 1.0, 0.0)], 33, 0.05)[:, 16:], _temb(0, 16))


def test_several_images_are_summed_and_noised_again_at_the_merge_level():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(2, 16, generator=g), torch.randn(1, 16, generator=g)
    got = unclip_vector([(a, 1.0, 0.1), (b, -0.5, 0.5)], seed=-3, merge=0.05)
    gen = torch.Generator().manual_seed(-3)
    noise = torch.randn(1, 16, generator=gen)  # every image: the first draw after seeding
    merge_noise = torch.randn(1, 16, generator=gen)  # the merge: the next draw
    total = _by_hand(a[:1], 100, noise) + _by_hand(a[1:], 100, noise) - 0.5 * _by_hand(b, 500, noise)
    torch.testing.assert_close(got, _by_hand(total[:, :16], 50, merge_noise))  # round(999 * 0.05) = 50


def _cond(width=64, **extra):
    return [[torch.zeros(1, 3, width), extra]]


def _pipe(cfg):
    return SimpleNamespace(config=cfg, device=torch.device("cpu"))


SHAPE = (1, 4, 8, 8)


def test_stable_unclip_takes_the_vector_as_y_and_zeros_without_an_image():
    embeds = torch.randn(1, D_EMB, generator=torch.Generator().manual_seed(3))
    (with_image,) = unclip_conditioning(None, _cond(), _output(embeds), 0.8, 0.3)
    got = prepare({"positive": with_image, "negative": _cond()}, SHAPE, _pipe(TINY_UNCLIP), None, seed=42)
    torch.testing.assert_close(got["positive"][0].y, unclip_vector([(embeds, 0.8, 0.3)], 32, 0.05))
    torch.testing.assert_close(got["negative"][0].y, torch.zeros(1, 2 * D_EMB))
    (wrong,) = unclip_conditioning(None, _cond(), _output(torch.zeros(1, 32)), 1.0, 0.0)
    with pytest.raises(InvalidArgument, match="takes CLIP image embeddings 24 wide"):
        prepare({"positive": wrong}, SHAPE, _pipe(TINY_UNCLIP), None)


def test_sdxl_takes_the_noised_embedding_as_its_pooled_text():
    pooled = torch.randn(1, 64, generator=torch.Generator().manual_seed(4))
    embeds = torch.randn(1, 64, generator=torch.Generator().manual_seed(5))
    (revision,) = unclip_conditioning(None, _cond(96, pooled_output=pooled), _output(embeds), 1.5, 0.1)
    got = prepare({"a": revision, "b": _cond(96, pooled_output=pooled)}, SHAPE, _pipe(TINY_SDXL), None, seed=7)
    y, plain = got["a"][0].y, got["b"][0].y
    torch.testing.assert_close(y[:, :64], unclip_vector([(embeds, 1.5, 0.1)], -3, 0.0)[:, :64])
    torch.testing.assert_close(y[:, 64:], plain[:, 64:])  # the size ids stay
    (wrong,) = unclip_conditioning(None, _cond(96, pooled_output=pooled), _output(torch.zeros(1, 24)), 1.0, 0.0)
    with pytest.raises(InvalidArgument, match="SDXL takes CLIP image embeddings 64 wide"):
        prepare({"a": wrong}, SHAPE, _pipe(TINY_SDXL), None)
    # a model without a "y" ignores the image, as ComfyUI does
    (ignored,) = unclip_conditioning(None, _cond(), _output(embeds), 1.0, 0.0)
    assert prepare({"a": ignored}, SHAPE, _pipe(TINY), None)["a"][0].y is None


def test_the_node_appends_to_each_entry_and_strength_zero_is_a_no_op():
    out = _output(torch.zeros(1, 4))
    base = [[torch.zeros(1, 2, 3), {"x": 1}], [torch.ones(1, 2, 3), None]]
    (once,) = unclip_conditioning(None, base, out, 0.5, 0.2)
    (twice,) = unclip_conditioning(None, once, out, -1.0, 0.0)
    assert [len(e[1]["unclip_conditioning"]) for e in twice] == [2, 2]
    assert twice[0][1]["unclip_conditioning"][1] == {"clip_vision_output": out, "strength": -1.0,
                                                     "noise_augmentation": 0.0}
    assert len(once[0][1]["unclip_conditioning"]) == 1 and base[0][1] == {"x": 1}  # inputs untouched
    assert unclip_conditioning(None, base, out, 0.0, 0.5)[0] is base
    with pytest.raises(InvalidArgument, match="CLIP_VISION_OUTPUT"):
        unclip_conditioning(None, base, torch.zeros(1, 4), 1.0, 0.0)


def test_object_info_matches_comfyui():
    check_object_info("unCLIPConditioning", (
        {"conditioning": ["CONDITIONING"], "clip_vision_output": ["CLIP_VISION_OUTPUT"],
         "strength": ["FLOAT", {"default": 1.0, "min": -10.0, "max": 10.0, "step": 0.01}],
         "noise_augmentation": ["FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01}]},
        ["CONDITIONING"], "conditioning", "unCLIPConditioning", "nodes", {}))
    check_object_info("unCLIPCheckpointLoader", (
        {"ckpt_name": [[]]}, ["MODEL", "CLIP", "VAE", "CLIP_VISION"], "loaders", "unCLIPCheckpointLoader", "nodes",
        {}))


# --- a whole graph on a tiny Stable unCLIP checkpoint ---------------------------------------------


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("unclip")
    encoder = clip_vision(seed=6)
    sd = random_state_dict(TINY_UNCLIP)
    sd.update({"embedder.model." + k: v.contiguous() for k, v in encoder.state_dict().items()})
    (tmp / "models" / "checkpoints").mkdir(parents=True)
    save_safetensors(sd, tmp / "models" / "checkpoints" / "unclip_tiny.safetensors",
                     metadata=D.metadata_for(TINY_UNCLIP) | {"num_attention_heads": "4", "hidden_act": "quick_gelu"})
    save_safetensors(random_state_dict(TINY), tmp / "models" / "checkpoints" / "plain.safetensors",
                     metadata=D.metadata_for(TINY))
    folders = ModelFolders(tmp / "models", include_builtin=False)
    return make_ctx(folders, Loader(folders), tmp), encoder


def _graph(ckpt="unclip_tiny.safetensors", strength=1.0, noise_augmentation=0.2):
    n = lambda cls, **kw: {"class_type": cls, "inputs": kw}  # noqa: E731
    return {
        "ck": n("unCLIPCheckpointLoader", ckpt_name=ckpt),
        "img": n("EmptyImage", width=40, height=32, batch_size=1, color=0x40A0C0),
        "cv": n("CLIPVisionEncode", clip_vision=["ck", 3], image=["img", 0], crop="center"),
        "pos": n("CLIPTextEncode", text="a lighthouse", clip=["ck", 1]),
        "neg": n("CLIPTextEncode", text="", clip=["ck", 1]),
        "un": n("unCLIPConditioning", conditioning=["pos", 0], clip_vision_output=["cv", 0], strength=strength,
                noise_augmentation=noise_augmentation),
        "lat": n("EmptyLatentImage", width=64, height=64, batch_size=1),
        "ks": n("KSampler", model=["ck", 0], seed=5, steps=2, cfg=4.0, sampler_name="euler", scheduler="normal",
                positive=["un", 0], negative=["neg", 0], latent_image=["lat", 0], denoise=1.0),
        "dec": n("VAEDecode", samples=["ks", 0], vae=["ck", 2]),
        "out": n("PreviewImage", images=["dec", 0]),
    }


def test_a_stable_unclip_graph_feeds_the_image_embedding_to_the_unet(env):
    ctx, encoder = env
    pipe = ctx.load_pipeline("unclip_tiny.safetensors")
    assert pipe.config.unet.unclip and not pipe.config.size_conditioned
    seen = []
    hook = pipe.family.network(pipe.model).label_emb.register_forward_hook(lambda m, i, o: seen.append(i[0].float()))
    try:
        execute(_graph(), ctx)
    finally:
        hook.remove()
    # the encoder inside the checkpoint gives transformers' image embedding
    image = torch.tensor([0x40, 0xA0, 0xC0], dtype=torch.float32).div(255).expand(1, 32, 40, 3)
    with torch.no_grad():
        want = encoder(pixel_values=preprocess(image, pipe_vision_config(ctx), crop=True)).image_embeds
    y = unclip_vector([(want, 1.0, 0.2)], 5 - 10, 0.05)
    rows = torch.cat(seen)
    assert any(torch.allclose(r, y[0], atol=1e-3) for r in rows)
    assert any(torch.equal(r, torch.zeros_like(r)) for r in rows)  # the negative: zeros


def pipe_vision_config(ctx):
    call = NodeCall(ctx, "x", {}, lambda kind, data: None)
    return NODES["unCLIPCheckpointLoader"].fn(call, "unclip_tiny.safetensors")[3].model.config


def test_a_checkpoint_without_an_image_encoder_says_so_at_the_encode(env):
    ctx, _ = env
    with pytest.raises(Exception, match="unCLIPCheckpointLoader gives one only for a checkpoint"):
        execute(_graph("plain.safetensors"), ctx)



def test_without_an_image_the_unet_takes_zeros_as_comfyui_gives_them(env):
    ctx, _ = env  # so A1111-style generation (no image) runs on a Stable unCLIP checkpoint
    pipe = ctx.load_pipeline("unclip_tiny.safetensors")
    net = pipe.family.network(pipe.model)
    g = torch.Generator().manual_seed(8)
    x, context = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 5, 64, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        plain = net(x, t, context, None)
        zeros = net(x, t, context, torch.zeros(1, 2 * D_EMB))
        other = net(x, t, context, torch.ones(1, 2 * D_EMB))
    torch.testing.assert_close(plain, zeros)
    assert not torch.allclose(plain, other)
