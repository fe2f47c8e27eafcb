"""LoRAs on Linear weights kept as their files store them (GGUF blocks, float8, scaled float8): the
layer keeps each LoRA's own weights (factors; a diff as the file gives it) beside the stored weight
and adds their change to the unpacked weight at each call. A network so patched gives the output of
its dequantised float twin with the same LoRAs merged in (each kind our reader takes: LoRA, LoHa,
LoKr, full diff, bias diff, a part of a fused q/k/v); taking them off, or strength 0, gives the
untouched stored weights' output bit for bit; and on float8 the LoRA's change survives, where adding
it into the float8 weight (the way it was done before) rounds most of it away."""
from __future__ import annotations

import gguf
import pytest
import torch

from opensd.adapters.lora import LoraSet, LoraSpec, lookup_table
from opensd.checkpoints.files import save_safetensors
from opensd.models.stored_weights import StoredLinear
from opensd.pipeline import parts
from test_scaled_fp8 import linear_weights, write_scaled
from test_stored_weights import network, rel, run, write_gguf

Q = gguf.GGMLQuantizationType
F8 = torch.float8_e4m3fn
KINDS = ("lora", "loha", "lokr", "diff", "lora+bias")


def store(path, family: str, storage: str) -> tuple[dict, dict]:
    """The tiny `family` network written to `path` with its Linear weights stored as `storage`;
    returns the weights the file holds (dequantised) and the metadata."""
    net, metadata = network(family)
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    if storage in ("Q8_0", "Q4_K"):
        return write_gguf(path, sd, Q[storage], metadata, family), metadata
    if storage == "scaled":
        return write_scaled(path, sd, linear_weights(net), "marker", metadata), metadata
    fp8 = {k: v.to(F8) if v.ndim == 2 else v for k, v in sd.items()}
    save_safetensors(fp8, path, metadata)
    return {k: v.float() for k, v in fp8.items()}, metadata


def load_pair(tmp_path, family: str, storage: str):
    """(the stored network, its dequantised float twin), both loaded as UNETLoader loads them."""
    held, metadata = store(tmp_path / ("net.gguf" if storage.startswith("Q") else "net.safetensors"), family, storage)
    save_safetensors(held, tmp_path / "dequantised.safetensors", metadata)
    ours = parts.load_unet(next(tmp_path.glob("net.*")), device="cpu", precision="fp32")
    plain = parts.load_unet(tmp_path / "dequantised.safetensors", device="cpu", precision="fp32")
    return ours, plain


def write_lora(path, pipe, kinds=KINDS, size: float = 0.02, seed: int = 1, dtype=torch.float32) -> list[str]:
    """A LoRA file with one module of each of `kinds` in turn on every network Linear (kohya names),
    plus, on Flux, diffusers' to_k (rows of the fused q/k/v); each change about `size` of the weight
    in norm, saved in `dtype`. Returns the modules' names."""
    g = torch.Generator().manual_seed(seed)
    table = lookup_table(pipe.model)
    out = {}
    targets = sorted({m.kohya: m for m in table.values() if m.kohya.startswith("lora_unet_")}.items())
    if pipe.config.family == "flux":
        targets.append(("transformer.transformer_blocks.0.attn.to_k", table["transformer.transformer_blocks.0.attn.to_k"]))
    for i, (name, mod) in enumerate(targets):
        weight = mod.module.weight.detach()
        rows, cols = weight.shape
        kind = kinds[i % len(kinds)] if name.startswith("lora_") else "peft"
        if kind == "lokr" and (rows % 4 or cols % 4):
            kind = "lora"
        r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
        if kind in ("lora", "lora+bias"):
            factors = {"lora_down.weight": r(4, cols), "lora_up.weight": r(rows, 4)}
            full = factors["lora_up.weight"] @ factors["lora_down.weight"]
        elif kind == "peft":
            factors = {"lora_A.weight": r(4, cols), "lora_B.weight": r(rows, 4)}
            full = factors["lora_B.weight"] @ factors["lora_A.weight"]
        elif kind == "loha":
            factors = {"hada_w1_a": r(rows, 2), "hada_w1_b": r(2, cols), "hada_w2_a": r(rows, 2), "hada_w2_b": r(2, cols)}
            full = (factors["hada_w1_a"] @ factors["hada_w1_b"]) * (factors["hada_w2_a"] @ factors["hada_w2_b"])
        elif kind == "lokr":
            factors = {"lokr_w1": r(4, 4), "lokr_w2_a": r(rows // 4, 2), "lokr_w2_b": r(2, cols // 4)}
            full = torch.kron(factors["lokr_w1"], factors["lokr_w2_a"] @ factors["lokr_w2_b"])
        else:
            factors = {"diff": r(rows, cols)}
            full = factors["diff"]
        # the first factor (a diff: the diff) scaled so that the change is `size` of the weight
        first = next(iter(factors))
        factors[first] = factors[first] * (size * weight.norm() / full.norm())
        if kind == "lora+bias" and getattr(mod.module, "bias", None) is not None:
            factors["diff_b"] = 0.01 * r(rows)
        out.update({f"{name}.{k}": v for k, v in factors.items()})
    save_safetensors({k: v.to(dtype) for k, v in out.items()}, path)
    return [name for name, _ in targets]


def layers(pipe) -> list[StoredLinear]:
    return [m for m in pipe.family.network(pipe.model).modules() if isinstance(m, StoredLinear)]


def buffers(pipe) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in pipe.family.network(pipe.model).named_buffers()}


CASES = [("flux", "Q8_0"), ("flux", "Q4_K"), ("flux", "fp8"), ("flux", "scaled"),
         ("sd3", "Q8_0"), ("sd3", "fp8"), ("z_image", "Q4_K"), ("z_image", "scaled")]


@pytest.mark.parametrize("family,storage", CASES)
def test_a_lora_on_stored_weights_equals_it_merged_into_the_dequantised_network(tmp_path, family, storage):
    ours, plain = load_pair(tmp_path, family, storage)
    modules = write_lora(tmp_path / "lora.safetensors", plain, size=0.1)
    table = lookup_table(ours.model)
    on_stored = [n for n in modules if isinstance(getattr(table[n].module, "linear", table[n].module), StoredLinear)]
    spec = [LoraSpec(tmp_path / "lora.safetensors", 0.8)]
    base, stored_before = run(ours, family), buffers(ours)
    plain_base = run(plain, family)
    mine, theirs = LoraSet(ours.model), LoraSet(plain.model)
    for loras in (mine, theirs):
        report = loras.apply(spec)[0]
        assert report.patched == len(modules) and report.unmatched == []
    want, got = run(plain, family), run(ours, family)
    assert rel(want, plain_base) > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)  # the dequantisation's difference only
    assert rel(got - base, want - plain_base) < 1e-3  # the LoRA's change is the merged one
    patched = [m for m in layers(ours) if m.patches]
    assert len(on_stored) > 0.8 * len(modules)
    assert sum(len(m.patches) for m in patched) == len(on_stored)  # one per module (a bias: changed in place)
    for layer in patched:  # kept as the file gives them: factors, a full tensor only for a diff
        for p in layer.patches:
            kept = [t for t in (p.source.up, p.source.down, p.source.diff, *p.source.factors.values()) if t is not None]
            assert p.source.diff is not None or sum(t.numel() for t in kept) < p.shape.numel()
    assert all(torch.equal(b, stored_before[n]) for n, b in buffers(ours).items())  # stored weights untouched
    mine.apply([])
    assert torch.equal(run(ours, family), base) and not any(m.patches for m in layers(ours))
    mine.apply([LoraSpec(tmp_path / "lora.safetensors", 0.0)])
    assert torch.equal(run(ours, family), base) and not any(m.patches for m in layers(ours))
    mine.apply(spec)  # and on again after a switch: the same output
    assert torch.equal(run(ours, family), got)
    mine.restore()
    assert torch.equal(run(ours, family), base)


def test_two_loras_on_one_stored_weight_add_up_as_merged(tmp_path):
    ours, plain = load_pair(tmp_path, "flux", "Q8_0")
    write_lora(tmp_path / "a.safetensors", plain, seed=1)
    write_lora(tmp_path / "b.safetensors", plain, kinds=("loha", "lora", "diff", "lokr", "lora+bias"), seed=2,
               dtype=torch.bfloat16)  # as most LoRA files are
    specs = [LoraSpec(tmp_path / "a.safetensors", 0.7), LoraSpec(tmp_path / "b.safetensors", -1.3)]
    for loras in (LoraSet(ours.model), LoraSet(plain.model)):
        loras.apply(specs)
    torch.testing.assert_close(run(ours, "flux"), run(plain, "flux"), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("storage", ["fp8", "scaled"])
def test_a_lora_on_float8_keeps_the_change_rounding_into_float8_loses(tmp_path, storage):
    """A LoRA changing each weight by 1% of its norm: the change it makes to the output is the
    float reference's, where the same LoRA added into the float8 weights (rounded back to float8, as
    it was done before) leaves most of its change out."""
    ours, plain = load_pair(tmp_path, "flux", storage)
    write_lora(tmp_path / "lora.safetensors", plain, kinds=("lora",), size=0.01)
    spec = [LoraSpec(tmp_path / "lora.safetensors")]
    base, plain_base = run(ours, "flux"), run(plain, "flux")
    LoraSet(ours.model).apply(spec)
    LoraSet(plain.model).apply(spec)
    want = run(plain, "flux") - plain_base
    got = run(ours, "flux") - base
    rounded = {}
    for layer in layers(ours):  # the former way: base + LoRA put back in float8 at the layer's scale
        merged = layer.patched(torch.float32)
        scale = 1.0 if layer.scale is None else layer.scale.reshape(-1, 1)
        rounded[layer] = (merged / scale).to(F8).float() * scale
    for layer, weight in rounded.items():  # a float32 weight, no scale: "unpacked" as it is
        layer.weight, layer.scale, layer.patches = weight, None, ()
    former = run(ours, "flux") - base
    assert rel(got, want) < 1e-4
    assert rel(former, want) > 0.8  # measured: 0.998 (float8), 0.895 (scaled float8)
    print(f"{storage}: LoRA effect vs float reference: on-the-fly {rel(got, want):.2e}, "
          f"rounded into float8 {rel(former, want):.3f}")


def test_a_clip_lora_on_a_float8_text_encoder(tmp_path):
    """The text-encoder part of a Flux LoRA (kohya's lora_te1_) finds CLIP-L's Linears when they are
    kept in float8 and rides on them as on the network's."""
    from dit_fixtures import flux_parts, load_tiny
    from opensd.models.stored_weights import store_linears
    pipe = load_tiny(tmp_path / "flux", "flux", flux_parts("dev", seed=3))
    clip = pipe.model.encoder("clip_l").transformer
    store_linears(clip, F8)
    q = clip.text_model.encoder.layers[0].self_attn.q_proj
    assert isinstance(q, StoredLinear)
    g = torch.Generator().manual_seed(0)
    down, up = torch.randn(2, q.in_features, generator=g), 0.01 * torch.randn(q.out_features, 2, generator=g)
    name = "lora_te1_text_model_encoder_layers_0_self_attn_q_proj"
    save_safetensors({f"{name}.lora_down.weight": down, f"{name}.lora_up.weight": up}, tmp_path / "te.safetensors")
    tokens = torch.arange(1, 9)[None]
    with torch.no_grad():
        base = clip(tokens).hidden
        pipe.set_loras([LoraSpec(tmp_path / "te.safetensors", 1.0, 0.5)])
        pipe.apply_loras("")
        assert pipe.lora_reports[0].patched == 1 and pipe.lora_reports[0].unmatched == []
        assert torch.equal(q.patched(torch.float32), q.weight.float() + 0.5 * (up @ down))
        assert rel(clip(tokens).hidden, base) > 1e-4
        pipe.set_loras([])
        pipe.apply_loras("")
        assert torch.equal(clip(tokens).hidden, base) and not q.patches


def test_a_patch_follows_its_layer_to_another_device_once():
    """A memory mode may run the layer on another device than the one it was patched on: the LoRA's
    factors move there once and stay (here "meta" stands in for a GPU)."""
    from opensd.adapters.lora_files import LoraWeights
    from opensd.models.stored_weights import WeightPatch
    w = LoraWeights(down=torch.ones(2, 8), up=torch.ones(6, 2), alpha=1.0)
    patch = WeightPatch(w, torch.Size((6, 8)), 0.5, None, torch.device("cpu"))
    torch.testing.assert_close(patch.change(torch.device("cpu")), torch.full((6, 8), 0.5))  # alpha / rank = 1/2
    assert patch.source is w
    moved = patch.change(torch.device("meta"))
    assert moved.device.type == "meta" and moved.shape == (6, 8)
    assert patch.source.up.device.type == "meta" and patch.device == torch.device("meta")
    kept = patch.source
    patch.change(torch.device("meta"))
    assert patch.source is kept  # not moved again
