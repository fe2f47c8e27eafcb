"""LoRA application proven against diffusers + PEFT on tiny random models (kohya and PEFT files)."""
import copy
import json
import logging

import pytest
import torch
from diffusers import StableDiffusionPipeline
from diffusers.utils import scale_lora_layers
from reference import assert_close_scaled
from test_loader import make_diffusers_folder

from opensd.adapters.lora import LoraSet, LoraSpec, parse_lora_arg
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError, InvalidArgument
from opensd.pipeline.loader import load_model

UNET_MODULES = [
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_v",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_out.0",
    "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj",
    "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.2",
    "down_blocks.0.attentions.0.proj_in",
    "up_blocks.1.attentions.1.proj_out",
    "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
    "down_blocks.0.resnets.0.conv1",  # LoCon: 3x3 down, 1x1 up
    "up_blocks.0.resnets.1.conv_shortcut",
]
TE_MODULES = [
    "text_model.encoder.layers.0.self_attn.q_proj",
    "text_model.encoder.layers.1.self_attn.v_proj",
    "text_model.encoder.layers.1.self_attn.out_proj",
    "text_model.encoder.layers.0.mlp.fc1",
]
IDS = torch.tensor([[49406, 320, 1125, 49407] + [49407] * 73])


def _pair(module, rank, g):
    w = module.weight
    if w.ndim == 4:
        down = torch.randn(rank, w.shape[1], *w.shape[2:], generator=g) * 0.2
        up = torch.randn(w.shape[0], rank, 1, 1, generator=g) * 0.2
    else:
        down = torch.randn(rank, w.shape[1], generator=g) * 0.2
        up = torch.randn(w.shape[0], rank, generator=g) * 0.2
    return down, up


def _te_module(te, name):
    return te.get_submodule(name) if hasattr(te, "text_model") else te.get_submodule(name.removeprefix("text_model."))


def write_kohya(path, parts, seed=0, rank=4, alphas=(2.0,)):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, names, root in (("lora_unet_", UNET_MODULES, parts["unet"]),
                                ("lora_te_", TE_MODULES, parts["text_encoder"])):
        for i, name in enumerate(names):
            mod = _te_module(root, name) if prefix == "lora_te_" else root.get_submodule(name)
            down, up = _pair(mod, rank, g)
            key = prefix + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
            sd[f"{key}.alpha"] = torch.tensor(alphas[i % len(alphas)])
    save_safetensors(sd, path)
    return path


def write_peft(path, parts, seed=1, rank=4, metadata=None):
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, names, root in (("unet.", UNET_MODULES, parts["unet"]),
                                ("text_encoder.", TE_MODULES, parts["text_encoder"])):
        for name in names:
            mod = _te_module(root, name) if prefix == "text_encoder." else root.get_submodule(name)
            down, up = _pair(mod, rank, g)
            sd[f"{prefix}{name}.lora_A.weight"], sd[f"{prefix}{name}.lora_B.weight"] = down, up
    meta = {"format": "pt"}
    if metadata:
        meta["lora_adapter_metadata"] = json.dumps(metadata)
    save_safetensors(sd, path, metadata=meta)
    return path


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    parts = make_diffusers_folder(root / "model", "sd1")
    return root, parts


def _reference(parts, lora_path, unet_scale=1.0, te_scale=1.0):
    unet, te = copy.deepcopy(parts["unet"]), copy.deepcopy(parts["text_encoder"])
    sd, alphas, meta = StableDiffusionPipeline.lora_state_dict(str(lora_path), return_lora_metadata=True)
    StableDiffusionPipeline.load_lora_into_unet(sd, alphas, unet=unet, metadata=meta)
    StableDiffusionPipeline.load_lora_into_text_encoder(sd, alphas, text_encoder=te, metadata=meta)
    scale_lora_layers(unet, unet_scale)
    scale_lora_layers(te, te_scale)
    return unet, te


def _outputs(unet, te, ours: bool):
    g = torch.Generator().manual_seed(0)
    x, t, ctx = torch.randn(2, 4, 8, 8, generator=g), torch.tensor([900, 20]), torch.randn(2, 77, 64, generator=g)
    with torch.no_grad():
        if ours:
            return unet(x, t, ctx), te(IDS).hidden
        return unet(x, t, ctx).sample, te(IDS).last_hidden_state


@pytest.mark.parametrize("fmt", ["kohya", "peft", "peft-metadata"])
def test_lora_matches_diffusers_peft(sd1, fmt):
    root, parts = sd1
    path = root / f"{fmt}.safetensors"
    if fmt == "kohya":
        # one alpha for all: diffusers 0.42 drops per-module kohya alphas on attention processors
        # (its alpha_pattern keys keep ".processor.to_q_lora.down.weight"); per-module alphas are
        # covered through the PEFT metadata case and test_kohya_alpha_is_per_module.
        write_kohya(path, parts)
    else:
        meta = None
        if fmt == "peft-metadata":
            meta = {"unet.r": 4, "unet.lora_alpha": 2, "unet.target_modules": UNET_MODULES,
                    "unet.alpha_pattern": {"proj_in": 6}, "text_encoder.r": 4, "text_encoder.lora_alpha": 8,
                    "text_encoder.target_modules": [n.removeprefix("text_model.") for n in TE_MODULES]}
        write_peft(path, parts, metadata=meta)
    model = load_model(root / "model").model
    base_unet, base_te = _outputs(model.unet, model.text_encoders[0], True)
    lset = LoraSet(model)
    (report,) = lset.apply([LoraSpec(path, unet=0.7, te=1.3)])
    assert report.patched == len(UNET_MODULES) + len(TE_MODULES) and report.unmatched == []
    ours_unet, ours_te = _outputs(model.unet, model.text_encoders[0], True)
    ref_unet, ref_te = _outputs(*_reference(parts, path, 0.7, 1.3), False)
    assert_close_scaled(ours_unet, ref_unet)
    assert_close_scaled(ours_te, ref_te)
    # and the LoRA really changed both (the comparison is not trivially base vs base)
    assert (ours_unet - base_unet).abs().max() > 1e-2 * ref_unet.abs().max()
    assert (ours_te - base_te).abs().max() > 1e-2 * ref_te.abs().max()


def test_remove_restores_bit_identical_weights_and_switching_equals_fresh(sd1):
    root, parts = sd1
    a = write_kohya(root / "a.safetensors", parts, seed=3)
    b = write_peft(root / "b.safetensors", parts, seed=4)
    model = load_model(root / "model").model
    base = {k: v.clone() for k, v in model.state_dict().items()}
    lset = LoraSet(model)
    lset.apply([LoraSpec(a, 1.0), LoraSpec(b, 0.5, 2.0)])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, base[k])]
    assert len(changed) == len(UNET_MODULES) + len(TE_MODULES)
    lset.apply([LoraSpec(b, 0.8)])
    only_b = {k: v.clone() for k, v in model.state_dict().items()}
    lset.restore()
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())
    fresh = load_model(root / "model").model
    LoraSet(fresh).apply([LoraSpec(b, 0.8)])
    assert all(torch.equal(v, only_b[k]) for k, v in fresh.state_dict().items())


def test_unmatched_keys_are_reported_not_dropped(sd1, caplog):
    root, parts = sd1
    path = write_kohya(root / "extra.safetensors", parts)
    from opensd.checkpoints.files import read_state_dict
    sd = read_state_dict(path)
    sd["lora_unet_nonexistent_block.lora_down.weight"] = torch.zeros(4, 8)
    sd["lora_unet_nonexistent_block.lora_up.weight"] = torch.zeros(8, 4)
    sd["lora_unet_loha_thing.hada_w1_a"] = torch.zeros(4, 4)  # half a LoHa
    tucker = "lora_unet_down_blocks_0_resnets_0_conv2"  # a Tucker LoCon: not applied, reported
    sd[f"{tucker}.lora_down.weight"] = torch.zeros(4, 32, 1, 1)
    sd[f"{tucker}.lora_mid.weight"] = torch.zeros(4, 4, 3, 3)
    sd[f"{tucker}.lora_up.weight"] = torch.zeros(32, 4, 1, 1)
    sd["lora_unet_conv_in.lora_down.weight"] = torch.zeros(4, 9, 3, 3)  # from an inpainting model
    sd["lora_unet_conv_in.lora_up.weight"] = torch.zeros(32, 4, 1, 1)
    save_safetensors(sd, path)
    model = load_model(root / "model").model
    with caplog.at_level(logging.WARNING):
        (report,) = LoraSet(model).apply([LoraSpec(path)])
    assert "lora_unet_nonexistent_block" in report.unmatched
    assert "lora_unet_loha_thing (incomplete loha weights)" in report.unmatched
    assert f"{tucker}.lora_mid.weight" in report.unmatched
    assert f"{tucker} (uses an unsupported lora variant)" in report.unmatched
    assert any(u.startswith("lora_unet_conv_in:") and u.endswith("(shape does not fit)") for u in report.unmatched)
    assert report.patched == len(UNET_MODULES) + len(TE_MODULES)
    assert "lora_unet_nonexistent_block" in caplog.text


def test_lora_for_another_family_is_refused(sd1):
    root, parts = sd1
    model = load_model(root / "model").model
    g = torch.Generator().manual_seed(0)
    # an SDXL-style LoRA: attn2 expects a 2048-wide context
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k"
    sd = {f"{name}.lora_down.weight": torch.randn(4, 2048, generator=g),
          f"{name}.lora_up.weight": torch.randn(32, 4, generator=g),
          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": torch.randn(4, 1280, generator=g),
          "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_up.weight": torch.randn(5120, 4, generator=g)}
    path = root / "xl.safetensors"
    save_safetensors(sd, path)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError, match="SDXL") as e:
        LoraSet(model).apply([LoraSpec(write_kohya(root / "ok.safetensors", parts)), LoraSpec(path)])
    assert "does not fit" in str(e.value)
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items())  # nothing half-applied
    only_foreign = root / "foreign.safetensors"
    save_safetensors({"lora_te2_x.lora_down.weight": torch.zeros(4, 8),
                      "lora_te2_x.lora_up.weight": torch.zeros(8, 4)}, only_foreign)
    with pytest.raises(CheckpointError, match="none of its 1 module names"):
        LoraSet(model).apply([LoraSpec(only_foreign)])


def test_dora_is_refused_clearly(sd1):
    root, parts = sd1
    path = write_kohya(root / "dora.safetensors", parts)
    from opensd.checkpoints.files import read_state_dict
    sd = read_state_dict(path)
    sd["lora_te_text_model_encoder_layers_0_mlp_fc1.dora_scale"] = torch.ones(1, 64)
    save_safetensors(sd, path)
    with pytest.raises(CheckpointError, match="DoRA"):
        LoraSet(load_model(root / "model").model).apply([LoraSpec(path)])


def test_cli_lora_argument_forms(tmp_path):
    resolve = lambda n: tmp_path / n
    assert parse_lora_arg("x", resolve) == LoraSpec(tmp_path / "x", 1.0, None)
    assert parse_lora_arg("x:0.5", resolve) == LoraSpec(tmp_path / "x", 0.5, None)
    assert parse_lora_arg("x:0.5:0.25", resolve) == LoraSpec(tmp_path / "x", 0.5, 0.25)
    assert parse_lora_arg("C:/l/x.safetensors:0.5", resolve).path == tmp_path / "C:/l/x.safetensors"
    # ComfyUI's LoraLoader range: <lora:x:99999999> made every value of the image NaN (a 500 blaming the model)
    assert parse_lora_arg("x:-100:100", resolve) == LoraSpec(tmp_path / "x", -100.0, 100.0)
    for text, what in (("x:99999999", "unet strength: 99999999.0"), ("x:1:-100.5", "te strength: -100.5")):
        with pytest.raises(InvalidArgument, match=f"^lora {what} is outside -100..100$"):
            parse_lora_arg(text, resolve)


def test_kohya_alpha_is_per_module(sd1):
    root, parts = sd1
    path = write_kohya(root / "alphas.safetensors", parts, alphas=(1.0, 2.0, 3.0))
    model = load_model(root / "model").model
    base = {k: v.clone() for k, v in model.state_dict().items()}
    LoraSet(model).apply([LoraSpec(path, unet=0.5)])
    from opensd.checkpoints.files import read_state_dict
    sd = read_state_dict(path)
    key = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_k"  # index 1: alpha 2
    delta = sd[f"{key}.lora_up.weight"] @ sd[f"{key}.lora_down.weight"] * (2.0 / 4) * 0.5
    ours = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_k.weight"
    assert torch.allclose(model.state_dict()[ours], base[ours] + delta, atol=1e-6)


def test_sdxl_kohya_lora_with_te1_te2_matches_diffusers(tmp_path):
    """SDXL: SGM-named UNet modules, lora_te1_ (CLIP-L) and lora_te2_ (bigG, whose q/k/v are fused
    in our OpenCLIP layout) against diffusers + PEFT on the separate q/k/v projections."""
    from diffusers import StableDiffusionXLPipeline

    from opensd.adapters.lora_keys import lora_modules

    parts = make_diffusers_folder(tmp_path / "xl", "sdxl")
    model = load_model(tmp_path / "xl").model
    assert model.config.family == "sdxl"
    g = torch.Generator().manual_seed(7)
    sd, diffusers_named = {}, {}
    wanted = ("attn1.to_q", "attn2.to_k", "ff.net.2", "proj_in", "resnets.0.conv1", "self_attn.q_proj",
              "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "mlp.fc1")
    for m in lora_modules(model):
        if not m.peft.endswith(wanted) or ".layers.1." in m.peft:
            continue
        w = m.module.weight
        down = torch.randn(4, *w.shape[1:], generator=g) * 0.2
        sd[f"{m.kohya}.lora_down.weight"] = down
        sd[f"{m.kohya}.lora_up.weight"] = torch.randn(w.shape[0], 4, *([1] * (w.ndim - 2)), generator=g) * 0.2
        sd[f"{m.kohya}.alpha"] = torch.tensor(2.0)
        # diffusers' SGM block renaming assumes the full-size SDXL layout, so it gets the same
        # tensors under the diffusers-path kohya spelling (which we accept as an alias)
        name = m.aliases[0] if m.component == "unet" else m.kohya
        for part in ("lora_down.weight", "lora_up.weight", "alpha"):
            diffusers_named[f"{name}.{part}"] = sd[f"{m.kohya}.{part}"]
    assert any(k.startswith("lora_unet_input_blocks_") for k in sd)
    assert any(k.startswith("lora_te1_") for k in sd) and any(k.startswith("lora_te2_") for k in sd)
    path, ref_path = tmp_path / "xl_lora.safetensors", tmp_path / "xl_lora_diffusers_paths.safetensors"
    save_safetensors(sd, path)
    save_safetensors(diffusers_named, ref_path)
    (report,) = LoraSet(model).apply([LoraSpec(path)])
    assert report.unmatched == [] and report.patched == len(sd) // 3

    te1, te2 = copy.deepcopy(parts["text_encoder"]), copy.deepcopy(parts["text_encoder_2"])
    state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(ref_path))
    StableDiffusionXLPipeline.load_lora_into_text_encoder(state, alphas, text_encoder=te1, prefix="text_encoder")
    StableDiffusionXLPipeline.load_lora_into_text_encoder(state, alphas, text_encoder=te2, prefix="text_encoder_2")
    with torch.no_grad():
        for ours, ref in zip(model.text_encoders, (te1, te2)):
            expected = ref(IDS, output_hidden_states=True).hidden_states[-1]
            assert not ours.cfg.final_norm  # SDXL: the hidden state is the raw layer output
            assert_close_scaled(ours(IDS, skip=1).hidden, expected)
    unet = copy.deepcopy(parts["unet"])
    StableDiffusionXLPipeline.load_lora_into_unet(state, alphas, unet=unet)
    for ref in (te1, te2, unet):  # the reference really carries the LoRA
        assert sum("lora_A" in n for n, _ in ref.named_parameters()) >= 5
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(1, 4, 8, 8, generator=gen), torch.tensor([500])
    ctx, y = torch.randn(1, 77, 96, generator=gen), torch.randn(1, 32 + 6 * 256, generator=gen)
    with torch.no_grad():
        ref = unet(x, t, ctx, added_cond_kwargs={"text_embeds": y[:, :32], "time_ids": torch.zeros(1, 6)}).sample
        ours = model.unet(x, t, ctx, torch.cat([y[:, :32], _time_embed(unet, torch.zeros(1, 6))], 1))
    assert_close_scaled(ours, ref)


def _time_embed(unet, ids):
    return unet.add_time_proj(ids.flatten()).reshape(ids.shape[0], -1)


def test_lycoris_loha_and_lokr_updates(sd1):
    """LoHa: (w1a @ w1b) * (w2a @ w2b) * alpha / rank; LoKr: kron(w1, w2a @ w2b) * alpha / rank."""
    root, _ = sd1
    g = torch.Generator().manual_seed(2)
    r = lambda *s: torch.randn(*s, generator=g) * 0.3
    q = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"  # Linear 32 -> 32
    conv = "lora_unet_down_blocks_0_resnets_0_conv1"  # Conv2d 32 -> 32, 3x3
    fc = "lora_te_text_model_encoder_layers_0_mlp_fc1"  # Linear 64 -> 256
    sd = {f"{q}.hada_w1_a": r(32, 2), f"{q}.hada_w1_b": r(2, 32), f"{q}.hada_w2_a": r(32, 2),
          f"{q}.hada_w2_b": r(2, 32), f"{q}.alpha": torch.tensor(1.0),
          f"{conv}.hada_w1_a": r(32, 2), f"{conv}.hada_w1_b": r(2, 288), f"{conv}.hada_w2_a": r(32, 2),
          f"{conv}.hada_w2_b": r(2, 288),
          f"{fc}.lokr_w1": r(4, 8), f"{fc}.lokr_w2_a": r(64, 2), f"{fc}.lokr_w2_b": r(2, 8),
          f"{fc}.alpha": torch.tensor(4.0)}
    path = root / "lycoris.safetensors"
    save_safetensors(sd, path)
    model = load_model(root / "model").model
    base = {k: v.clone() for k, v in model.state_dict().items()}
    (report,) = LoraSet(model).apply([LoraSpec(path, unet=0.5, te=2.0)])
    assert report.patched == 3 and report.unmatched == []
    now = model.state_dict()
    U, T = "model.diffusion_model.", "cond_stage_model.transformer.text_model.encoder.layers.0."
    want_q = (sd[f"{q}.hada_w1_a"] @ sd[f"{q}.hada_w1_b"]) * (sd[f"{q}.hada_w2_a"] @ sd[f"{q}.hada_w2_b"]) * 0.5
    key = U + "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight"
    assert torch.allclose(now[key], base[key] + want_q * 0.5, atol=1e-6)
    want_conv = ((sd[f"{conv}.hada_w1_a"] @ sd[f"{conv}.hada_w1_b"]) *
                 (sd[f"{conv}.hada_w2_a"] @ sd[f"{conv}.hada_w2_b"])).reshape(32, 32, 3, 3)  # no alpha: 1
    key = U + "input_blocks.1.0.in_layers.2.weight"
    assert torch.allclose(now[key], base[key] + want_conv * 0.5, atol=1e-6)
    w2 = sd[f"{fc}.lokr_w2_a"] @ sd[f"{fc}.lokr_w2_b"]
    want_fc = torch.stack([torch.cat([sd[f"{fc}.lokr_w1"][i, j] * w2 for j in range(8)], 1)
                           for i in range(4)]).reshape(256, 64) * (4.0 / 2)
    key = T + "mlp.fc1.weight"
    assert torch.allclose(now[key], base[key] + want_fc * 2.0, atol=1e-5)
