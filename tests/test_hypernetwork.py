"""A1111 hypernetworks on the tiny UNet: files in A1111's format read through the restricted
unpickler, the k/v inputs transformed exactly as the MLP written out by hand computes, strength 0
and removal leave the model as it was, bad files refused with clear errors."""
import os

import pytest
import torch
from hypernet_fixtures import reference, write_hypernet

from opensd.adapters.hypernetwork import (hypernetworks_applied, parse_hypernet_arg, prompt_hypernet_tags,
                                          read_hypernetwork, tag_strength)
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError, InvalidArgument
from opensd.library.synthetic import TINY, random_state_dict
from opensd.models.module_patches import removed_after
from opensd.models.stable_diffusion import StableDiffusion
from opensd.models.unet import CrossAttention, reuse_context_kv

# the tiny UNet's attention input widths: self-attention 32 and 64, cross-attention's context 64
DIMS = (64, 32, 768)


@pytest.fixture(scope="module")
def unet():
    model = StableDiffusion(TINY)
    model.load_state_dict(random_state_dict(TINY, seed=1))
    return model.unet.eval()


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(2, 4, 8, 8, generator=g), torch.tensor([400.0, 600.0]), torch.randn(2, 5, 64, generator=g)


def _kv_calls(unet, run):
    """(projection, its input before any hook, its output) of every to_k / to_v call in run()."""
    seen, handles = [], []
    for attn in (m for m in unet.modules() if isinstance(m, CrossAttention)):
        for proj, part in ((attn.to_k, 0), (attn.to_v, 1)):
            handles.append(proj.register_forward_pre_hook(lambda m, a: seen.append([m, a[0].clone()]), prepend=True))
            handles.append(proj.register_forward_hook(lambda m, a, out: seen[-1].append(out.clone())))
    with removed_after(handles), torch.no_grad():
        run()
    return seen


def _part(unet, proj) -> int:
    """0 for a to_k (the file's first MLP of the pair), 1 for a to_v."""
    return 0 if any(proj is a.to_k for a in unet.modules() if isinstance(a, CrossAttention)) else 1


CASES = [
    dict(act="linear"),
    dict(act="relu"),
    dict(act="leakyrelu", layer_norm=True),
    dict(act="swish", activate_output=True),
    dict(act="tanh", layer_structure=(1, 1.5, 2, 1), use_dropout=True, last_layer_dropout=True),
    dict(act="sigmoid", layer_structure=(1, 2, 2, 1), use_dropout=True, layer_norm=True, activate_output=True),
    dict(act="elu", dropout_structure=(0, 0.1, 0)),
    dict(act="mish"), dict(act="softsign"), dict(act="gelu", layer_norm=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_k_and_v_inputs_go_through_the_mlp_written_out(unet, tmp_path, case):
    ref = write_hypernet(tmp_path / "h.pt", DIMS, seed=3, **case)
    hn = read_hypernetwork(tmp_path / "h.pt")
    assert sorted(hn.layers) == sorted(DIMS) and hn.settings["sd_checkpoint_name"] == "v1-5"
    x, t, ctx = _inputs()
    with hypernetworks_applied(unet, [(hn, 0.7)]):
        calls = _kv_calls(unet, lambda: unet(x, t, ctx))
    assert len({int(p.in_features) for p, _, _ in calls}) == 2  # both widths met, self- and cross-attention
    for proj, inp, out in calls:
        (pair, steps) = ref[proj.in_features]
        part = _part(unet, proj)
        want = torch.nn.functional.linear(reference(inp, pair[part], steps, case["act"], 0.7), proj.weight)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out, proj(inp), atol=1e-3)


def test_strength_zero_is_no_hypernetwork_and_nothing_stays_behind(unet, tmp_path):
    write_hypernet(tmp_path / "h.pt", DIMS, act="relu", seed=4)
    hn = read_hypernetwork(tmp_path / "h.pt")
    x, t, ctx = _inputs(1)
    state = {k: v.clone() for k, v in unet.state_dict().items()}
    with torch.no_grad():
        plain = unet(x, t, ctx)
        with hypernetworks_applied(unet, [(hn, 0.0)]):
            zero = unet(x, t, ctx)
        with hypernetworks_applied(unet, [(hn, 1.0)]):
            changed = unet(x, t, ctx)
        after = unet(x, t, ctx)
    assert torch.equal(zero, plain) and torch.equal(after, plain)
    assert not torch.allclose(changed, plain, atol=1e-4)
    assert all(torch.equal(v, state[k]) for k, v in unet.state_dict().items())
    assert not any(m._forward_pre_hooks for m in unet.modules())


def test_removed_even_when_the_block_fails(unet, tmp_path):
    write_hypernet(tmp_path / "h.pt", DIMS, seed=4)
    hn = read_hypernetwork(tmp_path / "h.pt")
    with pytest.raises(RuntimeError, match="boom"):
        with hypernetworks_applied(unet, [(hn, 1.0)]):
            raise RuntimeError("boom")
    assert not any(m._forward_pre_hooks for m in unet.modules())


def test_two_hypernetworks_chain_in_order_and_the_kv_cache_sees_them(unet, tmp_path):
    r1 = write_hypernet(tmp_path / "a.pt", DIMS, act="tanh", seed=5)
    r2 = write_hypernet(tmp_path / "b.pt", DIMS, act="relu", layer_norm=True, seed=6)
    a, b = read_hypernetwork(tmp_path / "a.pt"), read_hypernetwork(tmp_path / "b.pt")
    x, t, ctx = _inputs(2)
    attn = unet.input_blocks[1][1].transformer_blocks[0].attn2
    with reuse_context_kv(unet), torch.no_grad():
        plain = unet(x, t, ctx)  # fills the kv cache without hypernetworks
        with hypernetworks_applied(unet, [(a, 0.5), (b, 1.2)]):
            calls = _kv_calls(unet, lambda: unet(x, t, ctx))
            hooked = unet(x, t, ctx)
        assert torch.equal(unet(x, t, ctx), plain)
    assert not torch.allclose(hooked, plain, atol=1e-4)
    k_in = [inp for proj, inp, _ in calls if proj is attn.to_k][0]
    (pa, sa), (pb, sb) = r1[64], r2[64]
    want = reference(reference(k_in, pa[0], sa, "tanh", 0.5), pb[0], sb, "relu", 1.2)
    out = [o for proj, _, o in calls if proj is attn.to_k][0]
    torch.testing.assert_close(out, torch.nn.functional.linear(want, attn.to_k.weight), rtol=1e-5, atol=1e-5)


def test_first_hypernetworks_two_layer_names_and_the_safetensors_layout(unet, tmp_path):
    g = torch.Generator().manual_seed(0)
    old = {dim: tuple({"linear1.weight": torch.randn(2 * dim, dim, generator=g) * 0.1,
                       "linear1.bias": torch.zeros(2 * dim),
                       "linear2.weight": torch.randn(dim, 2 * dim, generator=g) * 0.1,
                       "linear2.bias": torch.zeros(dim)} for _ in range(2)) for dim in (64, 32)}
    torch.save(old, tmp_path / "old.pt")
    hn = read_hypernetwork(tmp_path / "old.pt")
    x = torch.randn(3, 64, generator=g)
    sd = old[64][1]
    want = x + F_linear(F_linear(x, sd["linear1.weight"], sd["linear1.bias"]), sd["linear2.weight"], sd["linear2.bias"])
    torch.testing.assert_close(hn.layers[64][1](x), want)
    # the same weights as safetensors: "<width>.<0|1>.<layer key>", settings as JSON metadata
    tensors = {f"{d}.{p}.{k.replace('linear1', 'linear.0').replace('linear2', 'linear.1')}": v
               for d, pair in old.items() for p, part in enumerate(pair) for k, v in part.items()}
    save_safetensors(tensors, tmp_path / "same.safetensors", metadata={"layer_structure": "[1, 2, 1]"})
    st = read_hypernetwork(tmp_path / "same.safetensors")
    torch.testing.assert_close(st.layers[64][1](x), want)


def F_linear(x, w, b):
    return torch.nn.functional.linear(x, w, b)


class _Payload:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.makedirs, (self.target,))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path):
    target = str(tmp_path / "pwned")
    ref = write_hypernet(tmp_path / "ok.pt", (64,))
    data = {64: ref[64][0], "layer_structure": [1, 2, 1], "activation_func": "relu", "x": _Payload(target)}
    torch.save(data, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="refusing to load"):
        read_hypernetwork(tmp_path / "evil.pt")
    assert not os.path.exists(target)


def test_bad_files_and_values_are_clear_errors(unet, tmp_path):
    write_hypernet(tmp_path / "bad_act.pt", (64,), act="frobnicate")
    with pytest.raises(CheckpointError, match="unsupported activation_func 'frobnicate'"):
        read_hypernetwork(tmp_path / "bad_act.pt")
    ref = write_hypernet(tmp_path / "ok.pt", (64,), act="relu")
    torch.save({64: ref[64][0], "layer_structure": [1, 3, 1], "activation_func": "relu"}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="do not fit its settings"):
        read_hypernetwork(tmp_path / "shape.pt")
    torch.save({"layer_structure": [2, 1]}, tmp_path / "ls.pt")
    with pytest.raises(CheckpointError, match="starts and ends with 1"):
        read_hypernetwork(tmp_path / "ls.pt")
    save_safetensors({"model.diffusion_model.x.weight": torch.zeros(2)}, tmp_path / "lora.safetensors")
    with pytest.raises(CheckpointError, match="not '<width>"):
        read_hypernetwork(tmp_path / "lora.safetensors")
    torch.save({"state_dict": {"a": torch.zeros(1)}}, tmp_path / "ckpt.pt")
    with pytest.raises(CheckpointError, match="not a hypernetwork"):
        read_hypernetwork(tmp_path / "ckpt.pt")
    write_hypernet(tmp_path / "sd2.pt", (1024,))
    with pytest.raises(InvalidArgument, match="no layers for this model's attention widths"):
        with hypernetworks_applied(unet, [(read_hypernetwork(tmp_path / "sd2.pt"), 1.0)]):
            pass
    hn = read_hypernetwork(tmp_path / "ok.pt")
    for bad in (float("nan"), 1e9, "1"):
        with pytest.raises(InvalidArgument, match="strength"):
            with hypernetworks_applied(unet, [(hn, bad)]):
                pass


def test_prompt_tags_and_command_line_form():
    tags = prompt_hypernet_tags("a cat <hypernet:anime:0.6> <lora:x:1> <hypernet:sub/b>")
    assert [(t.name, tag_strength(t)) for t in tags] == [("anime", 0.6), ("sub/b", 1.0)]
    with pytest.raises(InvalidArgument, match="not a number"):
        tag_strength(prompt_hypernet_tags("<hypernet:a:strong>")[0])
    assert parse_hypernet_arg("anime") == ("anime", 1.0)
    assert parse_hypernet_arg("anime:0.5") == ("anime", 0.5)
    assert parse_hypernet_arg("C:/h/anime.pt:-1") == ("C:/h/anime.pt", -1.0)
    assert parse_hypernet_arg("C:/h/anime.pt") == ("C:/h/anime.pt", 1.0)


def test_a_half_precision_network_gets_float32_mlps_cast_back(tmp_path):
    model = StableDiffusion(TINY)
    model.load_state_dict(random_state_dict(TINY, seed=1))
    unet = model.unet.to(torch.bfloat16).eval()
    ref = write_hypernet(tmp_path / "h.pt", DIMS, act="tanh", layer_norm=True, seed=7)
    hn = read_hypernetwork(tmp_path / "h.pt")
    x, t, ctx = _inputs(3)
    with hypernetworks_applied(unet, [(hn, 0.9)]):
        calls = _kv_calls(unet, lambda: unet(x.bfloat16(), t, ctx.bfloat16()))
    for proj, inp, out in calls[:4]:
        pair, steps = ref[proj.in_features]
        part = _part(unet, proj)
        want = torch.nn.functional.linear(reference(inp, pair[part], steps, "tanh", 0.9).bfloat16(), proj.weight)
        assert out.dtype == torch.bfloat16 and torch.equal(out, want)
