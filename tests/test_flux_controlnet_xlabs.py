"""XLabs-AI's Flux ControlNets (flux-canny/-depth/-hed-controlnet-v3) and TheMistoAI's MistoLine Flux:
a tiny state dict with the released files' key layout (written here from x-flux's and ComfyUI's
ControlNetFlux) is detected and loaded; its residuals equal a straightforward re-implementation of
ComfyUI's arithmetic (hint * 2 - 1 through the conv stack, packed 2x2, pos_embed_input onto the image
tokens, one output linear per double block, residual i mod n added after the model's double block i,
times the strength); strength 0 is no ControlNet; ComfyUI's ControlNetLoader + ControlNetApplyAdvanced
run it without a VAE; the full-size key list loads on meta; broken files get clear errors."""
from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dit_fixtures import FLUX_AXES, FLUX_HEAD
from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.checkpoints.flux_controlnet_files import compatible_flux_controlnet
from opensd.checkpoints.xlabs_controlnet_files import read_xlabs_controlnet
from opensd.errors import CheckpointError, InvalidArgument
from opensd.models.config_dit import FluxConfig
from opensd.models.flux import Flux, image_ids, pack
from opensd.models.flux_controlnet import FluxControlNet
from opensd.models.rope import rope_angles
from opensd.models.unet import timestep_embedding

# (in channels, kernel, stride) of each hint convolution, 16 out channels, SiLU between
XLABS_HINT = [(3, 3, 1), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1)]
MISTOLINE_HINT = [(3, 3, 1), (16, 1, 1), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2), (16, 3, 1), (16, 3, 2),
                  (16, 1, 1), (16, 3, 1)]


def xlabs_shapes(d=3072, head=128, txt=4096, vec=768, double=2, guidance=True, mistoline=False, single=0):
    """The released files' keys and shapes (flux-*-controlnet-v3: d 3072, heads of 128, T5-XXL's 4096,
    CLIP-L's 768, 2 double blocks, Flux dev's guidance embedder), scaled by the arguments."""
    def linear(name, out, inp):
        return {f"{name}.weight": (out, inp), f"{name}.bias": (out,)}
    s = {**linear("img_in", d, 64), **linear("txt_in", d, txt)}
    for emb, inp in (("time_in", 256), ("vector_in", vec)) + ((("guidance_in", 256),) if guidance else ()):
        s |= linear(f"{emb}.in_layer", d, inp) | linear(f"{emb}.out_layer", d, d)
    for i in range(double):
        for st in ("img", "txt"):
            b = f"double_blocks.{i}.{st}"
            s |= linear(f"{b}_mod.lin", 6 * d, d) | linear(f"{b}_attn.qkv", 3 * d, d) | linear(f"{b}_attn.proj", d, d)
            s |= {f"{b}_attn.norm.query_norm.scale": (head,), f"{b}_attn.norm.key_norm.scale": (head,)}
            s |= linear(f"{b}_mlp.0", 4 * d, d) | linear(f"{b}_mlp.2", d, 4 * d)
        s |= linear(f"controlnet_blocks.{i}.linear" if mistoline else f"controlnet_blocks.{i}", d, d)
    for i in range(single):
        b = f"single_blocks.{i}"
        s |= linear(f"{b}.linear1", 3 * d + 4 * d, d) | linear(f"{b}.linear2", d, d + 4 * d)
        s |= linear(f"{b}.modulation.lin", 3 * d, d)
        s |= {f"{b}.norm.query_norm.scale": (head,), f"{b}.norm.key_norm.scale": (head,)}
        s |= linear(f"single_controlnet_blocks.{i}.linear", d, d)
    s |= linear("pos_embed_input", d, 64)
    hint = "input_cond_block.encoder" if mistoline else "input_hint_block"
    for j, (c_in, k, _) in enumerate(MISTOLINE_HINT if mistoline else XLABS_HINT):
        s |= {f"{hint}.{2 * j}.weight": (16, c_in, k, k), f"{hint}.{2 * j}.bias": (16,)}
    return s


TINY = dict(d=32, head=FLUX_HEAD, txt=128, vec=32)


def tiny_xlabs(seed=3, **kw) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.1 for k, shape in xlabs_shapes(**TINY | kw).items()}


BASE = FluxConfig(in_channels=64, out_channels=64, vec_in_dim=32, context_in_dim=128, hidden_size=32, num_heads=2,
                  depth=3, depth_single_blocks=2, axes_dim=FLUX_AXES)


def tiny_base(seed=0) -> Flux:
    torch.manual_seed(seed)
    net = Flux(BASE).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    return net


def _save(sd, path):
    save_safetensors({k: v.contiguous() for k, v in sd.items()}, path)
    return path


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, 8, 8, generator=g)
    hint = torch.rand(1, 3, 64, 64, generator=g)
    return x, hint, torch.randn(1, 5, 128, generator=g), torch.randn(1, 32, generator=g)


def tiled(i, n, blocks):
    return i % n


def runs(i, n, blocks):  # diffusers' rule for InstantX's: each residual serves ceil(blocks / n) in a row
    return i // -(-blocks // n)


def reference(sd, base: Flux, x, hint, t, txt, y, g, strength, mistoline=False, rule=tiled):
    """ComfyUI's arithmetic written out: the ControlNet's residuals from its state dict, then the
    model's blocks with residual `rule`(i) (i mod n) after double block i (and single block i)."""
    hint_keys = "input_cond_block.encoder" if mistoline else "input_hint_block"
    h = hint * 2 - 1
    for j, (_, k, stride) in enumerate(MISTOLINE_HINT if mistoline else XLABS_HINT):
        if j:
            h = F.silu(h)
        h = F.conv2d(h, sd[f"{hint_keys}.{2 * j}.weight"], sd[f"{hint_keys}.{2 * j}.bias"], stride, k // 2)
    b, c, hh, ww = h.shape  # "b c (h ph) (w pw) -> b (h w) (c ph pw)"
    cond = h.reshape(b, c, hh // 2, 2, ww // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, -1, 4 * c)
    cn = Flux(replace(BASE, depth=2, depth_single_blocks=sum(k.endswith("linear1.weight") for k in sd)))
    cn.load_state_dict({k: v for k, v in sd.items() if k in cn.state_dict()}, strict=False)
    lin = (lambda k, v: F.silu(F.linear(v, sd[f"{k}.linear.weight"], sd[f"{k}.linear.bias"]))) if mistoline else \
        (lambda k, v: F.linear(v, sd[f"{k}.weight"], sd[f"{k}.bias"]))

    def vector(net):
        emb = lambda m, v: m.out_layer(F.silu(m.in_layer(v)))  # noqa: E731
        time, guidance = timestep_embedding(t * 1000, 256), timestep_embedding(g * 1000, 256)
        return emb(net.time_in, time) + emb(net.guidance_in, guidance) + emb(net.vector_in, y)

    img_ids, txt_ids = image_ids(4, 4), torch.zeros(txt.shape[1], 3)
    pe = rope_angles(torch.cat((txt_ids, img_ids)), BASE.axes_dim, BASE.theta)
    img = cn.img_in(pack(x)) + F.linear(cond, sd["pos_embed_input.weight"], sd["pos_embed_input.bias"])
    vec, tx = vector(cn), cn.txt_in(txt)
    double, single = [], []
    for i, block in enumerate(cn.double_blocks):
        img, tx = block(img, tx, vec, pe)
        double.append(lin(f"controlnet_blocks.{i}", img))
    seq = torch.cat((tx, img), 1)
    for i, block in enumerate(cn.single_blocks):
        seq = block(seq, vec, pe)
        single.append(lin(f"single_controlnet_blocks.{i}", seq[:, tx.shape[1]:]))
    # the model
    img, vec, tx = base.img_in(pack(x)), vector(base), base.txt_in(txt)
    for i, block in enumerate(base.double_blocks):
        img, tx = block(img, tx, vec, pe)
        img = img + strength * double[rule(i, len(double), len(base.double_blocks))]
    seq, n = torch.cat((tx, img), 1), tx.shape[1]
    for i, block in enumerate(base.single_blocks):
        seq = block(seq, vec, pe)
        if single:
            r = single[rule(i, len(single), len(base.single_blocks))]
            seq = torch.cat((seq[:, :n], seq[:, n:] + strength * r), 1)
    out = base.final_layer(seq[:, n:], vec)
    return out.view(1, 4, 4, 16, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, 16, 8, 8)


def ours(path, base: Flux, x, hint, t, txt, y, g, strength):
    loaded = load_controlnet(path, SimpleNamespace(flux=BASE), device="cpu", dtype=torch.float32)
    control = loaded.residuals(x, hint, t, txt, y, None, [strength] * loaded.n_residuals, {}, float(g[0]))
    return base(x, t, txt, y, g, control=control.parts)


@pytest.mark.parametrize("kind", ["xlabs", "mistoline"])
def test_residuals_applied_block_by_block_as_comfyui(tmp_path, kind):
    """3 double blocks and 2 residuals: blocks 0, 1, 2 get residuals 0, 1, 0 (not diffusers' runs 0, 0, 1)."""
    mistoline = kind == "mistoline"
    sd = tiny_xlabs(mistoline=mistoline, single=1 if mistoline else 0)
    path = _save(sd, tmp_path / "cn.safetensors")
    base = tiny_base()
    x, hint, txt, y = _inputs()
    t, g = torch.tensor([0.6]), torch.tensor([3.5])
    with torch.no_grad():
        got = ours(path, base, x, hint, t, txt, y, g, 0.7)
        want = reference(sd, base, x, hint, t, txt, y, g, 0.7, mistoline)
        plain = base(x, t, txt, y, g)
        zero = ours(path, base, x, hint, t, txt, y, g, 0.0)
        in_runs = reference(sd, base, x, hint, t, txt, y, g, 0.7, mistoline, rule=runs)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert (got - plain).abs().max() > 0.01 * plain.abs().max()
    assert torch.equal(zero, plain)
    assert (in_runs - want).abs().max() > 1e-3 * want.abs().max()  # the rule matters here


def test_detected_loaded_and_listed(tmp_path):
    from opensd.library.model_catalog import _controlnet
    sd = tiny_xlabs()
    path = _save(sd, tmp_path / "flux-canny-controlnet-v3.safetensors")
    loaded = load_controlnet(path, SimpleNamespace(flux=BASE), device="cpu", dtype=torch.float32)
    cfg = loaded.net.config
    assert loaded.is_flux and cfg.hint == "xlabs" and loaded.pipe is None and loaded.n_residuals == 2
    assert (cfg.flux.depth, cfg.flux.depth_single_blocks, cfg.flux.hidden_size, cfg.base_blocks) == (2, 0, 32, (3, 2))
    assert torch.equal(loaded.net.state_dict()["input_hint_block.14.weight"], sd["input_hint_block.14.weight"])
    shapes = {k: {"shape": list(v.shape)} for k, v in sd.items()}
    assert _controlnet(shapes, {}, path) == ("flux", "Flux.1 ControlNet (XLabs, pixel hint; 2 double blocks)")
    shapes = {k: {"shape": list(s)} for k, s in xlabs_shapes(**TINY, mistoline=True, single=1).items()}
    assert _controlnet(shapes, {}, path) == ("flux", "Flux.1 ControlNet (MistoLine, pixel hint; 2 double, 1 single "
                                                     "blocks)")


def test_full_size_key_list_loads_on_meta():
    """flux-canny/-depth/-hed-controlnet-v3: 86 tensors, 2 double blocks, on Flux.1 dev."""
    from opensd.models.config_dit import FLUX_DEV
    shapes = xlabs_shapes()
    assert len(shapes) == 86
    sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    sd_ours, cfg = read_xlabs_controlnet("<meta>", sd)
    cfg = compatible_flux_controlnet(cfg, FLUX_DEV)
    assert (cfg.flux.hidden_size, cfg.flux.num_heads, cfg.flux.depth, cfg.flux.guidance_embed) == (3072, 24, 2, True)
    assert cfg.base_blocks == (19, 38)
    with torch.device("meta"):
        net = FluxControlNet(cfg)
    net.load_state_dict(sd_ours, strict=True, assign=True)
    assert sum(t.numel() for t in sd.values()) == sum(p.numel() for p in net.parameters())


def test_broken_files_get_clear_errors(tmp_path):
    meta = SimpleNamespace(flux=BASE)

    def load(sd, name="bad.safetensors"):
        return load_controlnet(_save(sd, tmp_path / name), meta, device="cpu", dtype=torch.float32)

    sd = tiny_xlabs()
    with pytest.raises(CheckpointError, match="(?s)do not fit the detected layout.*input_hint_block.14.weight"):
        load({k: v for k, v in sd.items() if k != "input_hint_block.14.weight"})
    with pytest.raises(CheckpointError, match="XLabs' layout without its hint block"):
        load({k: v for k, v in sd.items() if not k.startswith("input_hint_block.")})
    with pytest.raises(CheckpointError, match="2 double and 0 single blocks but 1 and 0 output linears"):
        load({k: v for k, v in sd.items() if not k.startswith("controlnet_blocks.1.")})
    with pytest.raises(CheckpointError, match="incomplete XLabs Flux ControlNet: no txt_in.weight"):
        load({k: v for k, v in sd.items() if not k.startswith("txt_in.")})
    with pytest.raises(CheckpointError, match="text width 64"):
        load(tiny_xlabs(txt=64))
    loaded = load(sd, "good.safetensors")
    x, hint, txt, y = _inputs()
    with pytest.raises(InvalidArgument, match="at the output size 64x64, got 32x32"):
        loaded.residuals(x, hint[..., :32, :32], torch.tensor([0.5]), txt, y)
