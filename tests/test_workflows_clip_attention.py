"""CLIPAttentionMultiply (ComfyUI's comfy_extras.nodes_attention_multiply): the encoding equals the
one of text encoders whose self_attn q/k/v/out projection weights and biases were multiplied by
hand, for HF-named CLIPs (the tiny checkpoint) and OpenCLIP-named ones (fused in_proj), and the
shared encoders are left as they were."""
import copy

import pytest
import torch
from workflow_fixtures import Loader, make_ctx, make_models

from opensd.models.clip import OpenCLIPEmbedder
from opensd.models.config import TextEncoderConfig
from opensd.workflows import loras
from opensd.workflows.clip_patches import attention_hooks, scaled_tensors
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.nodes_unet_attention import clip_attention_multiply
from opensd.workflows.types import ClipRef

FACTORS = (0.5, 2.0, 1.5, 0.7)
TEXT = "a lighthouse in fog"


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("clipattn")
    folders = make_models(tmp / "models")
    return make_ctx(folders, Loader(folders), tmp).load_pipeline("tiny.safetensors")


def _encode(clip: ClipRef) -> torch.Tensor:
    return clip_text_encode(None, TEXT, clip)[0][0][0]


def _scaled_by_hand(modules, factors) -> None:
    """ComfyUI's patches: every *self_attn.{q,k,v,out}_proj.{weight,bias} times its factor."""
    q, k, v, out = factors
    with torch.no_grad():
        for module in modules:
            for name, p in module.named_parameters():
                for proj, f in (("q_proj", q), ("k_proj", k), ("v_proj", v), ("out_proj", out)):
                    if f".self_attn.{proj}." in name:
                        p.mul_(f)


def test_hf_clip_equals_weights_scaled_by_hand_and_leaves_the_encoder_alone(pipe):
    clip = ClipRef(pipe, "tiny")
    modules = pipe.family.text_modules(pipe.model)
    weights = {n: p.clone() for m in modules for n, p in m.named_parameters()}
    plain = _encode(clip)
    (patched,) = clip_attention_multiply(None, clip, *FACTORS)
    got = _encode(patched)
    loras.release_all()
    assert all(torch.equal(p, weights[n]) for m in modules for n, p in m.named_parameters())
    assert torch.equal(_encode(clip), plain)  # no hook left behind

    _scaled_by_hand(modules, FACTORS)
    try:
        want = _encode(clip)
    finally:
        with torch.no_grad():
            for m in modules:
                for n, p in m.named_parameters():
                    p.copy_(weights[n])
    assert not torch.allclose(want, plain, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_stacked_nodes_multiply_and_ones_change_nothing(pipe):
    clip = ClipRef(pipe, "tiny")
    assert clip_attention_multiply(None, clip, 1.0, 1.0, 1.0, 1.0)[0] is clip
    (once,) = clip_attention_multiply(None, clip, *FACTORS)
    (twice,) = clip_attention_multiply(None, once, 2.0, 0.5, 1.0, 3.0)
    assert twice.attention == pytest.approx((1.0, 1.0, 1.5, 2.1))
    (direct,) = clip_attention_multiply(None, clip, 1.0, 1.0, 1.5, 2.1)
    torch.testing.assert_close(_encode(twice), _encode(direct))
    loras.release_all()


def test_openclip_fused_projection_scales_its_thirds_apart():
    torch.manual_seed(0)
    cfg = TextEncoderConfig(naming="openclip", vocab_size=100, width=32, layers=2, heads=2, max_length=8,
                            act="gelu", pad_token=0)
    enc = OpenCLIPEmbedder(cfg).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    ref = copy.deepcopy(enc)
    q, k, v, out = FACTORS
    w = cfg.width
    with torch.no_grad():
        rows = torch.tensor([q] * w + [k] * w + [v] * w)
        for block in ref.model.transformer.resblocks:
            block.attn.in_proj_weight.mul_(rows[:, None])
            block.attn.in_proj_bias.mul_(rows)
            block.attn.out_proj.weight.mul_(out)
            block.attn.out_proj.bias.mul_(out)
    ids = torch.randint(1, 100, (2, 8))
    with torch.no_grad():
        plain = enc(ids).hidden
        handles = attention_hooks([enc], FACTORS)
        got = enc(ids).hidden
        for h in handles:
            h.remove()
        want = ref(ids).hidden
        assert torch.equal(enc(ids).hidden, plain)
    assert not torch.allclose(want, plain, atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    saved = scaled_tensors(enc.state_dict(), FACTORS)  # CheckpointSave's baking
    for name, t in ref.state_dict().items():
        torch.testing.assert_close(saved[name], t, rtol=0, atol=0)


def test_checkpoint_save_bakes_the_factors_in(tmp_path):
    from safetensors.torch import load_file
    from workflow_fixtures import Loader, make_ctx, make_models

    from opensd.workflows import execute
    folders = make_models(tmp_path / "models")
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    ck = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}}
    graph = {"4": ck, "c": {"class_type": "CLIPAttentionMultiply",
                            "inputs": {"clip": ["4", 1], "q": 0.5, "k": 2.0, "v": 1.5, "out": 0.7}},
             "s": {"class_type": "CheckpointSave", "inputs": {"model": ["4", 0], "clip": ["c", 0], "vae": ["4", 2],
                                                              "filename_prefix": "checkpoints/mult"}},
             "p": {"class_type": "CheckpointSave", "inputs": {"model": ["4", 0], "clip": ["4", 1], "vae": ["4", 2],
                                                              "filename_prefix": "checkpoints/plain"}}}
    execute(graph, ctx)
    (mult,), (plain,) = ([load_file(str(f)) for f in (ctx.outputs_dir / "checkpoints").glob(f"{n}_*.safetensors")]
                         for n in ("mult", "plain"))
    factors = {"q_proj": 0.5, "k_proj": 2.0, "v_proj": 1.5, "out_proj": 0.7}
    scaled = 0
    for name, t in plain.items():
        proj = name.rsplit(".", 2)[-2]
        if ".self_attn." in name and proj in factors:
            torch.testing.assert_close(mult[name], (t.float() * factors[proj]).to(t.dtype))
            scaled += 1
        else:
            assert torch.equal(mult[name], t), name
    assert scaled == 2 * 4 * 2  # 2 layers x 4 projections x weight and bias
