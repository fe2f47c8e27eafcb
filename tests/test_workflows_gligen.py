"""GLIGEN (Li et al. 2023) as ComfyUI runs it (comfy/gligen.py, nodes.py GLIGENLoader /
GLIGENTextBoxApply): the Fourier box embedding, the position net and the gated self-attention
checked against the paper's formulas written out here with the same tiny random weights; the fuser
placed between a transformer block's self- and cross-attention, the n-th fuser in the n-th
transformer the UNet runs; a GLIGEN file in ComfyUI's key layout loaded and run in a whole graph
(with zero gates it changes nothing, up to rounding)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from test_clip import load_into_hf
from test_workflows_object_info import check_object_info
from transformers import CLIPTextConfig, CLIPTextModel
from workflow_fixtures import Loader, make_ctx

from opensd.checkpoints.detect import LDM_HF
from opensd.checkpoints.files import read_state_dict, save_safetensors
from opensd.checkpoints.gligen_files import load_gligen
from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.library.synthetic import TINY, write_random_checkpoint
from opensd.models.gligen import GatedSelfAttention, Gligen, PositionNet, fourier_embed
from opensd.models.unet import BasicTransformerBlock, SpatialTransformer
from opensd.workflows import execute
from opensd.workflows.gligen_patch import GligenRef, grounded
from opensd.workflows.nodes_gligen import gligen_text_box_apply
from opensd.workflows.types import ClipRef

# SD 1.x's layout at toy size, its transformers 64 and 128 wide (GLIGEN's 64-wide heads fit)
TINY_SD = replace(TINY, unet=replace(TINY.unet, model_channels=64))


def _randomize(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return module


def test_fourier_embedding_is_sin_then_cos_per_frequency():
    box = torch.tensor([[0.1, 0.2, 0.6, 0.9]])
    got = fourier_embed(box)
    assert got.shape == (1, 64)
    for k in range(8):
        f = 100 ** (k / 8)
        torch.testing.assert_close(got[0, 8 * k:8 * k + 4], torch.sin(f * box[0]))
        torch.testing.assert_close(got[0, 8 * k + 4:8 * k + 8], torch.cos(f * box[0]))


def test_position_net_is_the_mlp_with_null_features_for_padding():
    net = _randomize(PositionNet(16, 24), 1)
    g = torch.Generator().manual_seed(2)
    boxes, phrases = torch.rand(2, 3, 4, generator=g), torch.randn(2, 3, 16, generator=g)
    masks = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    got = net(boxes, masks, phrases)
    lin = [net.linears[i] for i in (0, 2, 4)]
    for b in range(2):
        for n in range(3):
            real = masks[b, n] == 1
            e = phrases[b, n] if real else net.null_positive_feature
            p = fourier_embed(boxes[b, n]) if real else net.null_position_feature
            h = torch.cat([e, p])
            for i, layer in enumerate(lin):
                h = layer.weight @ h + layer.bias
                h = F.silu(h) if i < 2 else h
            torch.testing.assert_close(got[b, n], h, atol=1e-5, rtol=1e-5)


def _attention(x: torch.Tensor, attn, heads: int) -> torch.Tensor:
    """softmax(Q K^T / sqrt(d)) V per head, then the output projection."""
    q, k, v = x @ attn.to_q.weight.T, x @ attn.to_k.weight.T, x @ attn.to_v.weight.T
    d = q.shape[-1] // heads
    split = lambda t: t.reshape(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    w = torch.softmax(split(q) @ split(k).transpose(-1, -2) / math.sqrt(d), dim=-1)
    out = (w @ split(v)).transpose(1, 2).reshape(q.shape)
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


def _gated_by_hand(m: GatedSelfAttention, v: torch.Tensor, h: torch.Tensor, heads: int) -> torch.Tensor:
    ln = lambda t, norm: F.layer_norm(t, t.shape[-1:], norm.weight, norm.bias)  # noqa: E731
    tokens = torch.cat([v, h @ m.linear.weight.T + m.linear.bias], dim=1)
    v = v + torch.tanh(m.alpha_attn) * _attention(ln(tokens, m.norm1), m.attn, heads)[:, :v.shape[1]]
    a, gate = (ln(v, m.norm2) @ m.ff.net[0].proj.weight.T + m.ff.net[0].proj.bias).chunk(2, dim=-1)
    return v + torch.tanh(m.alpha_dense) * ((a * F.gelu(gate)) @ m.ff.net[2].weight.T + m.ff.net[2].bias)


def test_gated_self_attention_is_the_papers_formula():
    m = _randomize(GatedSelfAttention(64, 24, 2, 32), 3)
    g = torch.Generator().manual_seed(4)
    v, h = torch.randn(2, 10, 64, generator=g), torch.randn(2, 30, 24, generator=g)
    torch.testing.assert_close(m(v, h), _gated_by_hand(m, v, h, 2), atol=1e-5, rtol=1e-5)


def _gligen_for(network, key_dim: int, seed: int) -> tuple[Gligen, dict[str, torch.Tensor]]:
    """A random GLIGEN fitting `network`, and its tensors named as the released files name them."""
    fusers, sd = [], {}
    names = [n for n, m in network.named_modules() if isinstance(m, SpatialTransformer)]
    for i, name in enumerate(names):
        width = dict(network.named_modules())[name].proj_in.weight.shape[0]
        fuser = _randomize(GatedSelfAttention(width, key_dim, width // 64, 64), seed + i)
        fusers.append(fuser)
        sd |= {f"{name}.transformer_blocks.0.fuser.{k}": v for k, v in fuser.state_dict().items()}
    net = _randomize(PositionNet(key_dim, key_dim), seed + 99)
    sd |= {f"position_net.{k}": v for k, v in net.state_dict().items()}
    return Gligen(fusers, net, key_dim), sd


def test_the_fuser_runs_between_self_and_cross_attention():
    block = _randomize(BasicTransformerBlock(64, 2, 32, 24), 5)
    fuser = _randomize(GatedSelfAttention(64, 24, 1, 64), 6)
    g = torch.Generator().manual_seed(7)
    x, ctx, objs = torch.randn(1, 9, 64, generator=g), torch.randn(1, 5, 24, generator=g), torch.randn(1, 30, 24,
                                                                                                        generator=g)
    block.between = lambda t: fuser(t, objs)
    got = block(x, ctx)
    del block.between
    y = x + block.attn1(block.norm1(x))
    y = _gated_by_hand(fuser, y, objs, 1)
    y = y + block.attn2(block.norm2(y), ctx)
    torch.testing.assert_close(got, y + block.ff(block.norm3(y)), atol=1e-5, rtol=1e-5)
    assert block.between is None


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gligen")
    models = tmp / "models"
    (models / "checkpoints").mkdir(parents=True)
    write_random_checkpoint(models / "checkpoints" / "sd_tiny.safetensors", TINY_SD)
    folders = ModelFolders(models, include_builtin=False)
    ctx = make_ctx(folders, Loader(folders), tmp)
    pipe = ctx.load_pipeline("sd_tiny.safetensors")
    network = pipe.family.network(pipe.model)
    gligen, sd = _gligen_for(network, 64, 10)
    (models / "gligen").mkdir()
    save_safetensors(sd, models / "gligen" / "gligen_tiny.safetensors")
    shut = {k: (torch.zeros(()) if k.endswith(("alpha_attn", "alpha_dense")) else v) for k, v in sd.items()}
    save_safetensors(shut, models / "gligen" / "gligen_closed.safetensors")
    save_safetensors({"foo.weight": torch.zeros(2)}, models / "gligen" / "not_gligen.safetensors")
    return ctx, pipe, network, gligen


def test_the_file_loads_in_the_order_the_unet_runs_its_transformers(env):
    ctx, pipe, network, gligen = env
    loaded = load_gligen(ctx.folders.resolve("gligen", "gligen_tiny.safetensors"))
    assert len(loaded.module_list) == 7 and loaded.key_dim == 64
    for a, b in zip(loaded.state_dict().values(), gligen.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="is not a GLIGEN model"):
        load_gligen(ctx.folders.resolve("gligen", "not_gligen.safetensors"))


def test_grounding_calls_the_nth_fuser_in_the_nth_transformer(env):
    _, pipe, network, gligen = env
    order = []
    hooks = [f.register_forward_hook(lambda m, i, o, n=n: order.append((n, i[0].shape[-1])))
             for n, f in enumerate(gligen.module_list)]
    widths = [m.proj_in.weight.shape[0] for m in network.modules() if isinstance(m, SpatialTransformer)]
    phrase = torch.randn(1, 64, generator=torch.Generator().manual_seed(11))
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([500.0]), torch.randn(1, 77, 64)
    try:
        with torch.no_grad(), grounded(network, gligen, [(phrase, 4, 4, 2, 2)], x.shape):
            network(x, t, ctx)
        with torch.no_grad():
            network(x, t, ctx)  # after the call: no fuser runs
    finally:
        for h in hooks:
            h.remove()
    assert order == list(enumerate(widths))
    small = Gligen(list(gligen.module_list)[:3], gligen.position_net, 64)
    with pytest.raises(InvalidArgument, match="it grounds 3 transformers, but this model has 7"):
        with grounded(network, small, [], x.shape):
            pass


def test_boxes_become_latent_cells_and_the_phrase_is_the_pooled_text(env):
    ctx, pipe, _, gligen = env
    clip, ref = ClipRef(pipe, "sd_tiny"), GligenRef(gligen, "g")
    base = [[torch.zeros(1, 77, 64), {"pooled_output": None}]]
    (one,) = gligen_text_box_apply(None, base, clip, ref, "a red ball", 64, 32, 16, 8)
    (two,) = gligen_text_box_apply(None, one, clip, ref, "a cat", 24, 40, 0, 0)
    kind, model, boxes = two[0][1]["gligen"]
    assert kind == "position" and model is ref and [b[1:] for b in boxes] == [(4, 8, 1, 2), (5, 3, 0, 0)]
    cfg = pipe.config.text_encoders[0]  # transformers' pooler output of the same weights
    hf = CLIPTextModel(CLIPTextConfig(hidden_size=cfg.width, intermediate_size=4 * cfg.width,
                                       num_hidden_layers=cfg.layers, num_attention_heads=cfg.heads,
                                       hidden_act="quick_gelu", eos_token_id=49407, bos_token_id=49406))
    load_into_hf(hf, {k.removeprefix(LDM_HF): v.float() for k, v in
                       read_state_dict(ctx.folders.resolve("checkpoints", "sd_tiny.safetensors")).items()
                       if k.startswith(LDM_HF)})
    ids = pipe.tokenizer(["a red ball"], max_length=77, pad_token=cfg.pad_token)
    with torch.no_grad():
        pooled = hf.eval()(input_ids=ids).pooler_output
    torch.testing.assert_close(boxes[0][0], pooled)
    assert "gligen" not in base[0][1] and len(one[0][1]["gligen"][2]) == 1
    objs = gligen.objects(boxes, 2, 8, 8)  # corners in 0..1 of the latent: (x, y, x + w, y + h) / size
    want = gligen.position_net(torch.tensor([[2 / 8, 1 / 8, 10 / 8, 5 / 8], [0, 0, 3 / 8, 5 / 8]] + [[0.0] * 4] * 28)
                               [None].expand(2, 30, 4), torch.tensor([1.0, 1.0] + [0.0] * 28)[None].expand(2, 30),
                               torch.cat([boxes[0][0], boxes[1][0], torch.zeros(28, 64)])[None].expand(2, 30, 64))
    torch.testing.assert_close(objs, want)
    many = [[torch.zeros(1, 77, 64), {"gligen": ("position", ref, [boxes[0]] * 30)}]]
    with pytest.raises(InvalidArgument, match="at most 30 boxes"):
        gligen_text_box_apply(None, many, clip, ref, "x", 8, 8, 0, 0)
    with pytest.raises(InvalidArgument, match="expected a GLIGEN"):
        gligen_text_box_apply(None, base, clip, gligen, "x", 8, 8, 0, 0)


def _graph(gligen_name: str | None):
    n = lambda cls, **kw: {"class_type": cls, "inputs": kw}  # noqa: E731
    g = {"ck": n("CheckpointLoaderSimple", ckpt_name="sd_tiny.safetensors"),
         "pos": n("CLIPTextEncode", text="a garden", clip=["ck", 1]),
         "neg": n("CLIPTextEncode", text="", clip=["ck", 1]),
         "lat": n("EmptyLatentImage", width=64, height=64, batch_size=1),
         "ks": n("KSampler", model=["ck", 0], seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal",
                 positive=["pos", 0], negative=["neg", 0], latent_image=["lat", 0], denoise=1.0),
         "out": n("SaveLatent", samples=["ks", 0], filename_prefix=f"latents/{gligen_name}")}
    if gligen_name:
        g["gl"] = n("GLIGENLoader", gligen_name=gligen_name)
        g["box"] = n("GLIGENTextBoxApply", conditioning_to=["pos", 0], clip=["ck", 1], gligen_textbox_model=["gl", 0],
                     text="a red ball", width=32, height=24, x=8, y=16)
        g["ks"]["inputs"]["positive"] = ["box", 0]
    return g


def _latent(ctx, prefix: str) -> torch.Tensor:
    (path,) = sorted((ctx.outputs_dir / "latents").glob(f"{prefix}_*.latent"))
    return load_file(str(path))["latent_tensor"]


def test_a_graph_grounds_the_prompt_and_closed_gates_change_nothing(env):
    ctx = env[0]
    for name in (None, "gligen_tiny.safetensors", "gligen_closed.safetensors"):
        execute(_graph(name), ctx)
    plain, grounded_, closed = (_latent(ctx, str(p)) for p in (None, "gligen_tiny.safetensors",
                                                               "gligen_closed.safetensors"))
    scale = plain.abs().max()  # the grounded positive runs in a call of its own: rounding differs, no more
    assert (closed - plain).abs().max() < 1e-5 * scale
    assert (grounded_ - plain).abs().max() > 0.1 * scale


def test_object_info_matches_comfyui():
    def pos(default, least):
        return ["INT", {"default": default, "min": least, "max": 16384, "step": 8}]
    check_object_info("GLIGENTextBoxApply", (
        {"conditioning_to": ["CONDITIONING"], "clip": ["CLIP"], "gligen_textbox_model": ["GLIGEN"],
         "text": ["STRING", {"multiline": True, "dynamicPrompts": True}], "width": pos(64, 8), "height": pos(64, 8),
         "x": pos(0, 0), "y": pos(0, 0)},
        ["CONDITIONING"], "conditioning/gligen", "GLIGENTextBoxApply", "nodes", {}))
    check_object_info("GLIGENLoader", ({"gligen_name": [[]]}, ["GLIGEN"], "loaders", "GLIGENLoader", "nodes", {}))
