"""DiffSynth's Qwen-Image blockwise ControlNets (ComfyUI's ModelPatchLoader + QwenImageDiffsynthControlnet is
the reference: diffusers has none) on tiny random weights: inside the base network each block's image
tokens gain exactly strength * block_i(RMS(img) + RMS(cond)) -> input_proj -> GELU -> output_proj,
checked against diffusers' QwenImageTransformer2DModel with that arithmetic hooked onto its blocks;
ComfyUI's graph equals our txt2img with the same file as a ControlSpec, strength 0 leaves the image
bit-identical; the Inpaint file's keep channel is 1 - the node's mask (all ones without one), as
ComfyUI's patch makes it; other models refuse the file."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from opensd.adapters.controlnet import ControlSpec, load_controlnet
from opensd.checkpoints.files import save_safetensors
from opensd.errors import CheckpointError
from opensd.models.config_dit import QwenImageConfig
from opensd.models.qwen_image import QwenImage
from opensd.models.qwen_image_blockwise import Blockwise, BlockwiseConfig, QwenImageBlockwiseControlNet
from opensd.workflows import NodeError
from qwen_image_fixtures import QI_AXES, QI_DIM, QI_HEADS, qwen_image_transformer
from reference import assert_close_scaled, randomize_
from test_qwen_image_controlnet_faces import ctx, env  # noqa: F401
from test_qwen_image_faces import PROMPT, SEED, SIZE, STEPS, _graph, _pixels, _run

NAME, STRENGTH, SHIFT = "qwen_image_canny_diffsynth_controlnet.safetensors", 0.8, 3.1


def _blockwise(layers=2, extra=0, seed=3) -> QwenImageBlockwiseControlNet:
    net = QwenImageBlockwiseControlNet(BlockwiseConfig(n_layers=layers, dim=QI_DIM, extra_channels=extra))
    return randomize_(net, seed=seed, std=0.1).eval()


def _rms(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


@pytest.mark.parametrize("layers", [1, 2])
def test_each_block_gains_the_reference_arithmetic(layers):
    """Two main blocks; a one-block file acts after the first only."""
    ref = qwen_image_transformer(layers=2)
    base = QwenImage(QwenImageConfig(in_channels=64, out_channels=16, num_layers=2, attention_head_dim=QI_DIM // QI_HEADS,
                                     num_attention_heads=QI_HEADS, joint_attention_dim=24, axes_dims_rope=QI_AXES))
    base.load_state_dict(ref.state_dict(), strict=True)
    net = _blockwise(layers)
    g = torch.Generator().manual_seed(1)
    x, latent = torch.randn(2, 16, 6, 8, generator=g), torch.randn(1, 16, 6, 8, generator=g)
    ctx_, t = torch.randn(2, 5, 24, generator=g), torch.tensor([0.7, 0.3])
    gate = torch.tensor([STRENGTH, 0.0])  # the second row without the ControlNet
    pack = lambda z: z.view(len(z), 16, 3, 2, 4, 2).permute(0, 2, 4, 1, 3, 5).reshape(len(z), 12, 64)  # noqa: E731
    cond = F.linear(pack(latent), net.img_in.weight, net.img_in.bias)

    def hook(i):
        b = net.controlnet_blocks[i]

        def add(module, args, out):
            txt, img = out
            y = F.linear(_rms(img, b.x_rms.weight) + _rms(cond, b.y_rms.weight), b.input_proj.weight, b.input_proj.bias)
            y = F.linear(F.gelu(y), b.output_proj.weight, b.output_proj.bias)
            return txt, img + gate[:, None, None] * y
        return add

    handles = [ref.transformer_blocks[i].register_forward_hook(hook(i)) for i in range(layers)]
    with torch.no_grad():
        want = ref(pack(x), ctx_, None, t, [(1, 3, 4)] * 2, return_dict=False)[0]
        for h in handles:
            h.remove()
        plain = ref(pack(x), ctx_, None, t, [(1, 3, 4)] * 2, return_dict=False)[0]
        tokens = net.img_in(pack(latent))
        got = pack(base(x, t, ctx_, None, control=[Blockwise(net, tokens, gate)]))
        ours_plain = pack(base(x, t, ctx_, None))
    assert_close_scaled(got, want, rel=1e-5)
    assert (got[0] - plain[0]).abs().max() > 1e-3
    assert torch.equal(got[1], ours_plain[1])  # gate 0: the row untouched


@pytest.fixture(scope="module")
def files(env, ctx):  # noqa: F811
    models = env[0]
    (models / "model_patches").mkdir(exist_ok=True)
    for name, net in ((NAME, _blockwise()), ("inpaint.safetensors", _blockwise(extra=4, seed=4))):
        save_safetensors({k: v.contiguous() for k, v in net.state_dict().items()}, models / "model_patches" / name)
    return models / "model_patches"


def _patched(strength=STRENGTH, name=NAME, **more) -> dict:
    g = _graph(cfg=1.0, shift=SHIFT)
    g["40"] = {"class_type": "ModelPatchLoader", "inputs": {"name": name}}
    g["41"] = {"class_type": "LoadImage", "inputs": {"image": "hint.png"}}
    g["42"] = {"class_type": "QwenImageDiffsynthControlnet", "inputs": {
        "model": ["66", 0], "model_patch": ["40", 0], "vae": ["39", 0], "strength": strength, "image": ["41", 0],
        **more}}
    g["3"]["inputs"]["model"] = ["42", 0]
    return g


def _want(pipe, path, hint, weight=STRENGTH):
    spec = ControlSpec(load_controlnet(path, pipe), Image.open(hint), weight=weight)
    return _pixels(pipe.txt2img(PROMPT, "", steps=STEPS, seed=SEED, width=SIZE, height=SIZE, cfg=1.0, sampler="euler",
                                scheduler="simple", shift=SHIFT, controls=[spec])[0])


@pytest.mark.parametrize("name", [NAME, "inpaint.safetensors"])
def test_comfyui_graph_equals_our_txt2img(env, ctx, files, monkeypatch, name):  # noqa: F811
    from opensd.models.config_dit import QwenImageModelConfig
    _, pipe, _, hint = env
    monkeypatch.setattr(QwenImageModelConfig, "cfg_renorm", 0)
    got = _run(ctx, _patched(name=name))
    assert np.abs(got - _want(pipe, files / name, hint)).max() <= 1
    assert np.abs(got - _run(ctx, _graph(cfg=1.0, shift=SHIFT))).max() > 8


def test_strength_zero_is_bit_identical(ctx, files):  # noqa: F811
    assert np.array_equal(_run(ctx, _patched(strength=0.0)), _run(ctx, _graph(cfg=1.0, shift=SHIFT)))


def _masked(name, mask_file) -> dict:
    g = _patched(name=name, mask=["43", 0])
    g["43"] = {"class_type": "LoadImageMask", "inputs": {"image": mask_file, "channel": "red"}}
    return g


def test_the_inpaint_files_mask(ctx, files):  # noqa: F811
    """1 - the mask is the keep channel: an all-black mask (nothing to repaint) is the file without one;
    a mask given with the Canny file is ignored, as ComfyUI ignores it."""
    Image.new("RGB", (SIZE, SIZE), 0).save(ctx.inputs_dir / "none.png")
    half = np.zeros((SIZE, SIZE, 3), np.uint8)
    half[:, SIZE // 2:] = 255
    Image.fromarray(half).save(ctx.inputs_dir / "half.png")
    plain = _run(ctx, _patched(name="inpaint.safetensors"))
    assert np.array_equal(_run(ctx, _masked("inpaint.safetensors", "none.png")), plain)
    assert np.abs(_run(ctx, _masked("inpaint.safetensors", "half.png")) - plain).max() > 2  # 4 of 68 inputs
    assert np.array_equal(_run(ctx, _masked(NAME, "half.png")), _run(ctx, _patched()))


def test_the_keep_channel_is_comfyuis():
    from opensd.adapters.qwen_image_controlnet import blockwise_latent
    from opensd.adapters.z_image_controlnet import inpaint_hint
    g = torch.Generator().manual_seed(2)
    latent, mask = torch.randn(1, 16, 4, 6, generator=g), torch.rand(1, 1, 32, 48, generator=g)
    hint = inpaint_hint(torch.rand(1, 3, 32, 48, generator=g), torch.full((1, 3, 32, 48), 0.5), mask)
    got = blockwise_latent(_blockwise(extra=4), latent, hint)
    want = F.interpolate(1.0 - mask, size=(4, 6), mode="bilinear")  # DiffSynthCnetPatch.encode_latent_cond
    assert torch.equal(got[:, :16], latent) and torch.allclose(got[:, 16:], want, atol=1e-6)
    assert torch.equal(blockwise_latent(_blockwise(extra=4), latent, None)[:, 16:], torch.ones(1, 1, 4, 6))


def test_other_files_are_refused(ctx, files):  # noqa: F811
    save_safetensors({"foo.weight": torch.zeros(2)}, files / "other.safetensors")
    with pytest.raises(NodeError, match="not a Z-Image Fun ControlNet .* or a Qwen-Image blockwise ControlNet"):
        _run(ctx, _patched(name="other.safetensors"))
    # hostile file: the telltale names over a 1-D img_in was a bare 'not enough values to unpack'
    damaged = {k: v.contiguous() for k, v in _blockwise().state_dict().items()} | {"img_in.weight": torch.zeros(7)}
    save_safetensors(damaged, files / "flat.safetensors")
    with pytest.raises(NodeError, match=r"node 40 \(ModelPatchLoader\): .*flat.safetensors: a damaged Qwen-Image "
                                        r"blockwise ControlNet: img_in.weight is \(7,\), not a matrix"):
        _run(ctx, _patched(name="flat.safetensors"))


def test_refused_on_another_family(tmp_path):
    from dit_fixtures import write_diffusers_folder
    from opensd.pipeline.pipeline import load
    from test_sd3_controlnet import sd3_parts
    save_safetensors({k: v.contiguous() for k, v in _blockwise().state_dict().items()}, tmp_path / "b.safetensors")
    sd3 = load(write_diffusers_folder(tmp_path / "model", "sd3", sd3_parts()), precision="fp32", device="cpu")
    with pytest.raises(CheckpointError, match="Qwen-Image ControlNet \\(DiffSynth's blockwise\\); the loaded model is not"):
        load_controlnet(tmp_path / "b.safetensors", sd3)
