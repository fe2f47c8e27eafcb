"""LoRA extraction: a tuned model made as base + an exact rank-r LoRA gives back a rank-r LoRA that
reproduces the tuned weights through our loader and through diffusers' load_lora_weights (so the
kohya key names are ones the ecosystem reads); truncation error follows the singular values; conv
layers get their own rank; SDXL's two text encoders; clear errors."""
import copy

import pytest
import torch
from reference import assert_close_scaled
from safetensors import safe_open
from test_lora import TE_MODULES, UNET_MODULES, _outputs, _reference
from test_loader import make_diffusers_folder

from opensd.adapters.lora import LoraSet, LoraSpec
from opensd.adapters.lora_keys import lora_modules
from opensd.errors import InvalidArgument
from opensd.library.lora_extract import extract_lora, layer_plan, layer_rank, low_rank, save_lora
from opensd.library.synthetic import TINY, random_state_dict
from opensd.models import config as C
from opensd.models.stable_diffusion import StableDiffusion
from opensd.pipeline.loader import load_model

EXACT = dict(clamp_quantile=None, dtype=torch.float32, min_diff=0.0)


def tiny(seed=0, cfg=TINY):
    model = StableDiffusion(cfg)
    model.load_state_dict(random_state_dict(cfg, seed), strict=False)
    return model


@torch.no_grad()
def add_lora(model, pick, rank=3, seed=1):
    """A copy of `model` with an exact rank-`rank` change (random up @ down) in every module `pick`
    chooses (3x3 convs: a 3x3 down and a 1x1 up, as LoCon); returns (copy, names changed)."""
    tuned = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    changed = []
    for m in lora_modules(tuned):
        if not pick(m):
            continue
        w = m.module.weight
        down = torch.randn(rank, w[0].numel(), generator=g) * 0.3
        up = torch.randn(w.shape[0], rank, generator=g) * 0.3
        w.add_((up @ down).reshape(w.shape))  # FusedQKVPart.weight is a view: this writes the fused rows
        changed.append(m.kohya)
    return tuned, changed


@torch.no_grad()
def add_bias(model, pick, seed=2):
    """Changes the bias of every module `pick` chooses that has one (in place); returns their names."""
    g = torch.Generator().manual_seed(seed)
    changed = []
    for m in lora_modules(model):
        if pick(m) and getattr(m.module, "bias", None) is not None:
            m.module.bias.add_(torch.randn(m.module.bias.shape, generator=g) * 0.1)  # a view for fused q/k/v
            changed.append(m.kohya)
    return changed


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same_weights(model, tuned, atol=1e-4):
    ours, want = _weights(model), _weights(tuned)
    worst = max((ours[k] - want[k]).abs().max().item() for k in want)
    assert worst <= atol, worst


def _apply(base, path):
    model = copy.deepcopy(base)
    (report,) = LoraSet(model).apply([LoraSpec(path)])
    assert report.unmatched == []
    return model, report


def _attn_conv_te(m):
    return m.peft.endswith(("attn1.to_q", "attn2.to_k", "ff.net.2", "proj_in", "resnets.0.conv1", "conv_shortcut",
                            "self_attn.q_proj", "self_attn.v_proj", "mlp.fc1"))


def test_exact_rank_r_lora_is_recovered_through_our_loader(tmp_path):
    base = tiny()
    tuned, changed = add_lora(base, _attn_conv_te)
    ext = extract_lora(base, tuned, rank=3, conv_rank=3, **EXACT)
    assert ext.layers == len(changed) and ext.skipped  # unchanged layers left out
    assert {k.rsplit(".", 2)[0] for k in ext.tensors if k.endswith("lora_down.weight")} == set(changed)
    path = save_lora(ext, tmp_path / "x.safetensors")
    model, report = _apply(base, path)
    assert report.patched == len(changed)
    _assert_same_weights(model, tuned)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        conv = "lora_unet_down_blocks_0_resnets_0_conv1"
        assert f.get_tensor(f"{conv}.lora_down.weight").shape == (3, 32, 3, 3)
        assert f.get_tensor(f"{conv}.lora_up.weight").shape == (32, 3, 1, 1)
        assert f.get_tensor(f"{conv}.alpha").item() == 3.0  # alpha = rank: scale 1
    assert meta["ss_network_dim"] == meta["ss_network_alpha"] == "3"
    assert meta["ss_network_module"] == "networks.lora" and "conv_dim" in meta["ss_network_args"]


def test_truncation_error_falls_with_rank_as_the_singular_values_say():
    g = torch.Generator().manual_seed(0)
    delta = torch.randn(48, 8, generator=g) @ torch.randn(8, 40, generator=g)  # rank 8
    s = torch.linalg.svdvals(delta)
    errors = []
    for r in (1, 2, 4, 6, 8):
        up, down = low_rank(delta, r, clamp_quantile=None)
        assert up.shape == (48, r) and down.shape == (r, 40)
        err = torch.linalg.norm(delta - up @ down).item()
        assert err == pytest.approx(torch.linalg.norm(s[r:]).item(), rel=1e-3, abs=1e-3)  # Eckart-Young
        errors.append(err)
    assert errors == sorted(errors, reverse=True) and errors[-1] < 1e-3
    # singular values go into up (kohya, ComfyUI): down's rows are orthonormal
    up, down = low_rank(delta, 4, clamp_quantile=None)
    assert torch.allclose(down @ down.T, torch.eye(4), atol=1e-5)
    # clamping caps outliers of both factors at the same bound
    cu, cd = low_rank(delta, 4, clamp_quantile=0.9)
    bound = max(cu.abs().max(), cd.abs().max())
    assert bound < max(up.abs().max(), down.abs().max())


def test_rank_truncation_through_models():
    base = tiny()
    tuned, _ = add_lora(base, lambda m: m.peft.endswith("attn1.to_q"), rank=6)
    key = next(m.kohya for m in lora_modules(base) if m.peft.endswith("attn1.to_q"))
    errors = []
    for r in (1, 3, 6):
        ext = extract_lora(base, tuned, rank=r, **EXACT)
        t = ext.tensors
        assert t[f"{key}.lora_down.weight"].shape[0] == r
        mod = next(m.module for m in lora_modules(tuned) if m.kohya == key)
        base_mod = next(m.module for m in lora_modules(base) if m.kohya == key)
        approx = base_mod.weight + t[f"{key}.lora_up.weight"] @ t[f"{key}.lora_down.weight"]
        errors.append(torch.linalg.norm(approx - mod.weight).item())
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-4


def test_conv_rank_and_layer_sets():
    with torch.device("meta"):
        model = StableDiffusion(C.sd1())
    mods = {m.kohya: m for m in lora_modules(model)}
    conv3 = mods["lora_unet_down_blocks_0_resnets_0_conv1"]
    attn = mods["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"]
    shortcut = mods["lora_unet_up_blocks_3_resnets_0_conv_shortcut"]
    te = mods["lora_te_text_model_encoder_layers_0_mlp_fc1"]
    conv_in, time = mods["lora_unet_conv_in"], mods["lora_unet_time_embedding_linear_1"]
    assert [layer_rank(m, 32, None) for m in (conv3, attn, shortcut, te, conv_in, time)] == \
        [None, 32, None, 32, None, None]  # kohya without conv_dim: attention blocks and text encoder
    assert [layer_rank(m, 32, 8) for m in (conv3, attn, shortcut, te, conv_in, time)] == [8, 32, 32, 32, None, None]
    assert [layer_rank(m, 32, 8, "all") for m in (conv3, conv_in, time)] == [8, 8, 32]


@pytest.mark.parametrize("cfg,conv,counts", [
    (C.sd1(), None, {"unet": 192, "te": 72}), (C.sd1(), 8, {"unet": 278, "te": 72}),
    (C.sd2(), None, {"unet": 192, "te": 138}), (C.sdxl(), None, {"unet": 722, "te1": 72, "te2": 192}),
], ids=["sd1", "sd1-conv", "sd2", "sdxl"])
def test_full_size_layer_counts_are_kohyas(cfg, conv, counts):
    """The modules sd-scripts' LoRA network creates (its "create LoRA for U-Net: 192 modules" etc.)."""
    with torch.device("meta"):
        model = StableDiffusion(cfg)
    found = {}
    for m, _ in layer_plan(model, ("unet", "te"), 32, conv, "kohya"):
        found[m.kohya.split("_")[1]] = found.get(m.kohya.split("_")[1], 0) + 1
    assert found == counts


def test_unchanged_and_mismatched_models_are_refused_clearly(tmp_path):
    base = tiny()
    ext = extract_lora(base, copy.deepcopy(base), rank=4)
    assert ext.layers == 0
    with pytest.raises(InvalidArgument, match="no LoRA to extract"):
        save_lora(ext, tmp_path / "none.safetensors")
    assert not (tmp_path / "none.safetensors").exists()
    with torch.device("meta"):
        xl = StableDiffusion(C.sdxl())
    with pytest.raises(InvalidArgument, match="^models: the tuned model is sdxl .* but the base is small"):
        extract_lora(base, xl, rank=4)
    wider = C.ModelConfig(**{**TINY.__dict__, "unet": C.UNetConfig(**{**TINY.unet.__dict__, "model_channels": 64})})
    with pytest.raises(InvalidArgument, match=r"layers differ, e.g. lora_unet_\w+ is \(64, .* in the tuned model, \(32, "):
        extract_lora(base, tiny(cfg=wider), rank=4)
    for bad, match in ((dict(rank=0), "^rank:"), (dict(rank=4, conv_rank=-1), "^conv_rank:"),
                       (dict(rank=4, clamp_quantile=1.5), "^clamp_quantile:"), (dict(rank=4, lora_type="x"), "^lora_type")):
        with pytest.raises(InvalidArgument, match=match):
            extract_lora(base, base, **bad)
    with pytest.raises(InvalidArgument, match="supports SD1, SD2 and SDXL"):
        extract_lora(base, torch.nn.Linear(2, 2), rank=4)


def test_full_diff_and_difference_models(tmp_path):
    """lora_type full_diff stores whole changes (.diff); base=None takes a model holding the
    differences itself (ComfyUI's ModelMergeSubtract output)."""
    base = tiny()
    tuned, changed = add_lora(base, _attn_conv_te)
    diff = copy.deepcopy(tuned)
    with torch.no_grad():
        for p, b in zip(diff.parameters(), base.parameters()):
            p.sub_(b)
    for kind in ("standard", "full_diff"):
        ext = extract_lora(None, diff, rank=3, conv_rank=3, lora_type=kind, **EXACT)
        assert ext.layers == len(changed)
        if kind == "full_diff":
            assert all(k.endswith(".diff") for k in ext.tensors)
        path = save_lora(ext, tmp_path / f"{kind}.safetensors")
        model, _ = _apply(base, path)
        _assert_same_weights(model, tuned)


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd1")
    parts = make_diffusers_folder(root / "model", "sd1")
    return root, parts


def test_diffusers_load_lora_weights_reads_the_extracted_file(sd1):
    """Our model + exact rank-4 changes on the modules test_lora proves diffusers maps; diffusers'
    UNet and text encoder with the extracted file loaded give the tuned model's outputs."""
    root, parts = sd1
    base = load_model(root / "model").model
    wanted = {f"unet.{n}" for n in UNET_MODULES} | {f"text_encoder.{n}" for n in TE_MODULES}
    tuned, changed = add_lora(base, lambda m: m.peft in wanted, rank=4, seed=3)
    assert len(changed) == len(wanted)
    path = save_lora(extract_lora(base, tuned, rank=4, conv_rank=4, **EXACT), root / "extracted.safetensors")
    ref_unet, ref_te = _outputs(*_reference(parts, path), False)
    ours_unet, ours_te = _outputs(tuned.unet, tuned.text_encoders[0], True)
    base_unet, base_te = _outputs(base.unet, base.text_encoders[0], True)
    assert (ours_unet - base_unet).abs().max() > 1e-2 and (ours_te - base_te).abs().max() > 1e-2  # visible
    assert_close_scaled(ref_unet, ours_unet)
    assert_close_scaled(ref_te, ours_te)


def test_sdxl_two_text_encoders(tmp_path):
    """lora_te1_ (CLIP-L) and lora_te2_ (bigG, fused q/k/v in our layout) plus SGM-named UNet layers."""
    make_diffusers_folder(tmp_path / "xl", "sdxl")
    base = load_model(tmp_path / "xl").model
    tuned, changed = add_lora(base, lambda m: m.component == "te" and ".layers.0." in m.peft
                              or m.peft.endswith("attn2.to_k"), rank=2)
    biased = add_bias(tuned, lambda m: m.kohya.startswith("lora_te2_") and m.peft.endswith(("k_proj", "v_proj")))
    assert len(biased) == 2 * 2  # fused in_proj_bias rows of bigG's layers
    ext = extract_lora(base, tuned, rank=2, bias_diff=True, **EXACT)
    assert ext.metadata["ss_base_model_version"] == "sdxl_base_v1-0"
    names = {k.rsplit(".", 2)[0] for k in ext.tensors if k.endswith("lora_down.weight")}
    assert names == set(changed)
    assert any(n.startswith("lora_te1_") for n in names) and any(n.startswith("lora_te2_") for n in names)
    assert "lora_te2_text_model_encoder_layers_0_self_attn_k_proj" in names  # a part of the fused in_proj
    assert any(n.startswith("lora_unet_input_blocks_") for n in names)
    model, _ = _apply(base, save_lora(ext, tmp_path / "xl.safetensors"))
    _assert_same_weights(model, tuned)
    # from files: the base as its diffusers folder, the tuned model as one original-layout file
    from opensd.checkpoints.files import save_safetensors
    from opensd.library.lora_extract import extract_lora_to_file
    save_safetensors({k: v.contiguous() for k, v in tuned.state_dict().items()}, tmp_path / "tuned.safetensors")
    out, again = extract_lora_to_file(tmp_path / "files.safetensors", tmp_path / "xl", tmp_path / "tuned.safetensors",
                                      rank=2, bias_diff=True, **EXACT)
    assert again.tensors.keys() == ext.tensors.keys()
    assert all(torch.allclose((again.tensors[k] - ext.tensors[k]).abs().max(), torch.tensor(0.0), atol=1e-4)
               for k in ext.tensors if k.endswith("diff_b"))
    model, _ = _apply(base, out)
    _assert_same_weights(model, tuned)


def test_cli_extracts_from_files(tmp_path, capsys):
    """`opensd models lora-extract` (and the top-level spelling): files in, a file our loader reads
    out with the base model's hash recorded; an existing output or a bad rank is one error line."""
    from opensd.checkpoints.files import save_safetensors
    from opensd.cli import main
    from opensd.library.hashes import file_sha256

    base = tiny()
    tuned, changed = add_lora(base, _attn_conv_te, rank=2)
    a, b = tmp_path / "base.safetensors", tmp_path / "tuned.safetensors"
    for model, path in ((base, a), (tuned, b)):
        save_safetensors({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    out = tmp_path / "x.safetensors"
    args = ["--base", str(a), "--tuned", str(b), "--rank", "2", "--conv-rank", "2", "--precision", "fp32",
            "--clamp-quantile", "1", "-o", str(out)]
    assert main(["models", "lora-extract", *args]) == 0
    assert f"{len(changed)} layers extracted" in capsys.readouterr().err
    model, _ = _apply(base, out)
    _assert_same_weights(model, tuned)
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["ss_new_sd_model_hash"] == file_sha256(a)
    assert main(["lora-extract", *args]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["lora-extract", *args[:-2], "--rank", "0", "-o", str(tmp_path / "y.safetensors")]) == 2
    assert "rank: 0 must be" in capsys.readouterr().err


def test_bias_diffs_round_trip_through_our_loader_and_baking(tmp_path):
    """bias_diff writes .diff_b; our loader adds it (on its own or beside up/down), live and baked."""
    from opensd.adapters.lora import bake_into_state_dict

    base = tiny()
    tuned, _ = add_lora(base, _attn_conv_te)
    biased = add_bias(tuned, lambda m: m.peft.endswith(("to_out.0", "self_attn.q_proj", "ff.net.2", "proj_out")))
    assert len(biased) >= 4
    ext = extract_lora(base, tuned, rank=3, conv_rank=3, bias_diff=True, **EXACT)
    assert {k.rsplit(".", 1)[0] for k in ext.tensors if k.endswith(".diff_b")} == set(biased)
    path = save_lora(ext, tmp_path / "b.safetensors")
    model, _ = _apply(base, path)
    _assert_same_weights(model, tuned)
    sd = {k: v.detach().clone() for k, v in base.state_dict().items()}
    bake_into_state_dict(sd, base.config, [LoraSpec(path)])
    want = tuned.state_dict()
    assert max((sd[k] - want[k]).abs().max().item() for k in want) < 1e-4
