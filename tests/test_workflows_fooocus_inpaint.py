"""Fooocus inpaint (comfyui-inpaint-nodes' INPAINT_LoadFooocusInpaint / INPAINT_ApplyFooocusInpaint)
on the tiny model, with a head and a patch written in Fooocus' formats (torch.save pickles):

* every UNet call while sampling equals a reference network built by hand: the base weights plus
  the dequantised differences (q / 255 * (max - min) + min), and the head's feature (a replicate-
  padded 3x3 conv of [max-pooled rounded mask, scaled latent]) added to the first input block's output;
* a graph using the nodes leaves the loaded model's weights as they were, and the next prompt
  without them samples the base model;
* pickles that ask for code are refused, and files or latents that do not fit get one-line errors.
"""
import copy
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from workflow_fixtures import Loader, make_ctx, make_models, sampling_env

from opensd.errors import CheckpointError, InvalidArgument
from opensd.workflows import execute
from opensd.workflows import ksampler as K
from opensd.workflows.loras import release_all
from opensd.workflows.nodes_core import vae_encode_for_inpaint
from opensd.workflows.nodes_fooocus_inpaint import (apply_fooocus_inpaint, load_fooocus_inpaint,
                                                    vae_encode_inpaint_conditioning)
from opensd.workflows.types import VaeRef

PATCHED = ("input_blocks.0.0.weight", "input_blocks.0.0.bias", "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
           "out.2.weight")


def write_files(folder, network, seed=0):
    """A head and a patch for `network` in Fooocus' layout: {"head": (C, 5, 3, 3)} and
    {"diffusion_model.<key>": (uint8 q, min, max)} (per-row bounds for one weight, scalars for the
    rest), plus a key the model lacks and one of another shape (both skipped, as ComfyUI's loader
    skips them). Returns (head, patch dict)."""
    g = torch.Generator().manual_seed(seed)
    folder.mkdir(parents=True, exist_ok=True)
    head = torch.randn(network.config.model_channels, 5, 3, 3, generator=g) * 0.1
    torch.save({"head": head}, folder / "fooocus_inpaint_head.pth")
    params = dict(network.named_parameters())
    patch = {}
    for i, name in enumerate(PATCHED):
        shape = params[name].shape
        q = torch.randint(0, 256, shape, generator=g, dtype=torch.uint8)
        bounds = (shape[0],) + (1,) * (len(shape) - 1) if i == 2 else ()
        lo = -0.02 - 0.01 * torch.rand(bounds, generator=g)
        patch[f"diffusion_model.{name}"] = (q, lo.half(), (lo + 0.05).half())
    patch["diffusion_model.not_in_this_model.weight"] = (torch.zeros(3, dtype=torch.uint8), torch.tensor(0.0),
                                                         torch.tensor(1.0))
    patch["diffusion_model.out.2.bias"] = (torch.full((7,), 255, dtype=torch.uint8), torch.tensor(0.0),
                                           torch.tensor(1.0))  # another shape than the model's: skipped
    torch.save(patch, folder / "inpaint_v26.fooocus.patch")
    return head, patch


def reference_network(network, patch, head, latent, fmt):
    """The base network with the differences added and the head's feature on input block 0's output."""
    ref = copy.deepcopy(network)
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for key, (q, lo, hi) in patch.items():
            name = key.removeprefix("diffusion_model.")
            if name in params and params[name].shape == q.shape:
                params[name] += q.float() / 255.0 * (hi.float() - lo.float()) + lo.float()
    conv = torch.nn.Conv2d(5, head.shape[0], 3, padding=1, padding_mode="replicate", bias=False)
    conv.weight.data.copy_(head)
    mask = F.max_pool2d(latent["noise_mask"].round(), 8).round()
    with torch.no_grad():
        feature = conv(torch.cat([mask, fmt.scaled(latent["samples"])], dim=1))
    ref.input_blocks[0].register_forward_hook(lambda m, args, out: out + feature)
    return ref


def picture(seed=0):
    g = torch.Generator().manual_seed(seed)
    pixels = torch.rand(1, 64, 64, 3, generator=g)
    mask = torch.zeros(1, 64, 64)
    mask[:, 12:40, 20:50] = 1.0
    return pixels, mask


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("fooocus")
    call, model, pos, neg = sampling_env(tmp)
    network = model.pipe.family.network(model.pipe.model)
    head, patch = write_files(tmp / "models" / "inpaint", network)
    return call, model, pos, neg, head, patch


def test_each_unet_call_equals_the_hand_built_reference(env):
    call, model, pos, neg, head, patch = env
    pipe = model.pipe
    network = pipe.family.network(pipe.model)
    base = {k: v.clone() for k, v in network.state_dict().items()}
    pixels, mask = picture()
    latent = vae_encode_for_inpaint(call, pixels, VaeRef(pipe, "tiny"), mask, 0)[0]
    (loaded,) = load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "inpaint_v26.fooocus.patch")
    (patched,) = apply_fooocus_inpaint(call, model, loaded, latent)
    assert patched.name == model.name and not model.weight_patches and not model.network_patches
    ref = reference_network(network, patch, head, latent, K.latent_format(model))
    seen = []
    hook = network.register_forward_hook(lambda m, args, kw, out: seen.append((args, kw, out.clone())),
                                          with_kwargs=True)
    try:
        K.sample(patched, pos, neg, latent, seed=3, steps=2, cfg=5.0, sampler_name="euler", scheduler="normal")
    finally:
        hook.remove()
        release_all()
    assert len(seen) == 2
    with torch.no_grad():
        for args, kw, out in seen:
            want = ref(*args, **kw)
            torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
            assert (out - network(*args, **kw)).abs().max() > 1e-3  # the patch changed something
    for k, v in network.state_dict().items():
        assert torch.equal(v, base[k]), k  # released: the base weights are back


def test_the_head_alone_is_what_the_first_block_gets(env):
    """The feature lands on input block 0's output (its skip too), for every row of the batch."""
    call, model, pos, neg, head, patch = env
    pipe = model.pipe
    network = pipe.family.network(pipe.model)
    pixels, mask = picture(1)
    latent = vae_encode_for_inpaint(call, pixels, VaeRef(pipe, "tiny"), mask, 0)[0]
    (loaded,) = load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "inpaint_v26.fooocus.patch")
    (patched,) = apply_fooocus_inpaint(call, model, loaded, latent)
    seen = []  # (input of block 0, input of block 1) per call
    hooks = [network.input_blocks[0].register_forward_pre_hook(lambda m, args: seen.append([args[0].clone()])),
             network.input_blocks[1].register_forward_pre_hook(lambda m, args: seen[-1].append(args[0].clone()))]
    try:
        K.sample(patched, pos, neg, {"samples": latent["samples"].repeat(2, 1, 1, 1)}, seed=3, steps=1, cfg=5.0,
                 sampler_name="euler", scheduler="normal")
    finally:
        for h in hooks:
            h.remove()
        release_all()
    conv = torch.nn.Conv2d(5, head.shape[0], 3, padding=1, padding_mode="replicate", bias=False)
    conv.weight.data.copy_(head)
    feature = conv(torch.cat([F.max_pool2d(mask[:, None], 8),
                              K.latent_format(model).scaled(latent["samples"])], dim=1)).detach()
    params = dict(network.named_parameters())
    q, lo, hi = (t.float() for t in patch["diffusion_model.input_blocks.0.0.weight"])
    qb, lob, hib = (t.float() for t in patch["diffusion_model.input_blocks.0.0.bias"])
    w = params["input_blocks.0.0.weight"].detach() + q / 255 * (hi - lo) + lo
    b = params["input_blocks.0.0.bias"].detach() + qb / 255 * (hib - lob) + lob
    assert len(seen) == 2  # two images of the batch, each its own call (positive and negative rows)
    for x, h in seen:
        assert len(x) == 2
        torch.testing.assert_close(h, F.conv2d(x, w, b, padding=1) + feature, rtol=1e-5, atol=1e-5)


def test_a_batch_of_inpaint_latents_gives_each_image_its_own_feature(env):
    call, model, pos, neg, head, patch = env
    pipe = model.pipe
    network = pipe.family.network(pipe.model)
    latents = []
    for seed in (2, 3):
        pixels, mask = picture(seed)
        latents.append(vae_encode_for_inpaint(call, pixels, VaeRef(pipe, "tiny"), mask, 0)[0])
    latents[1]["noise_mask"] = 1.0 - latents[1]["noise_mask"]
    latent = {k: torch.cat([lat[k] for lat in latents]) for k in ("samples", "noise_mask")}
    (loaded,) = load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "inpaint_v26.fooocus.patch")
    (patched,) = apply_fooocus_inpaint(call, model, loaded, latent)
    (one,) = apply_fooocus_inpaint(call, model, loaded, latents[1])
    added = []  # what the first block's output gains, per call
    for m in (patched, one):
        hook = network.input_blocks[1].register_forward_pre_hook(lambda mod, args: added.append(args[0].clone()))
        try:
            K.sample(m, pos, neg, {"samples": latent["samples"]}, seed=3, steps=1, cfg=5.0, sampler_name="euler",
                     scheduler="normal")
        finally:
            hook.remove()
            release_all()
    # image 1 of the batch gets latents[1]'s feature, as the one-image patch gives every image
    torch.testing.assert_close(added[1], added[3], rtol=1e-5, atol=1e-5)
    assert (added[0] - added[2]).abs().max() > 1e-3


def _png(path, pixels, mask):
    rgba = np.concatenate([pixels[0].numpy(), 1.0 - mask[0, ..., None].numpy()], axis=-1)
    Image.fromarray((rgba * 255).round().astype(np.uint8), "RGBA").save(path)


def _graph(fooocus: bool) -> dict:
    g = {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "1": {"class_type": "LoadImage", "inputs": {"image": "door.png"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "a red door"}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["4", 1], "text": "fog"}},
        "12": {"class_type": "INPAINT_VAEEncodeInpaintConditioning", "inputs": {
            "positive": ["6", 0], "negative": ["7", 0], "vae": ["4", 2], "pixels": ["1", 0], "mask": ["1", 1]}},
        "13": {"class_type": "INPAINT_LoadFooocusInpaint", "inputs": {
            "head": "fooocus_inpaint_head.pth", "patch": "inpaint_v26.fooocus.patch"}},
        "14": {"class_type": "INPAINT_ApplyFooocusInpaint", "inputs": {
            "model": ["4", 0], "patch": ["13", 0], "latent": ["12", 2]}},
        "3": {"class_type": "KSampler", "inputs": {
            "model": ["14", 0] if fooocus else ["4", 0], "positive": ["12", 0], "negative": ["12", 1],
            "latent_image": ["12", 3], "seed": 5, "steps": 2, "cfg": 5.0, "sampler_name": "euler",
            "scheduler": "normal", "denoise": 1.0}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "f", "images": ["8", 0]}},
    }
    if not fooocus:
        del g["13"], g["14"]
    return g


def test_a_graph_leaves_the_model_as_it_was(tmp_path):
    folders = make_models(tmp_path / "models")
    loader = Loader(folders)
    ctx = make_ctx(folders, loader, tmp_path)
    pipe = ctx.load_pipeline("tiny.safetensors")
    network = pipe.family.network(pipe.model)
    write_files(tmp_path / "models" / "inpaint", network)
    (tmp_path / "input").mkdir()
    _png(tmp_path / "input" / "door.png", *picture())
    base = {k: v.clone() for k, v in network.state_dict().items()}

    def image(graph):
        out = execute(graph, ctx)
        return np.asarray(Image.open(tmp_path / "output" / out["9"]["images"][0]["filename"]))

    plain = image(_graph(False))
    fooocus = image(_graph(True))
    assert np.abs(plain.astype(int) - fooocus.astype(int)).max() > 0
    for k, v in network.state_dict().items():
        assert torch.equal(v, base[k]), k
    assert np.array_equal(image(_graph(False)), plain)
    names = {m.name for m in folders.list("inpaint")}
    assert names == {"fooocus_inpaint_head.pth", "inpaint_v26.fooocus.patch"}


class _Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


@pytest.mark.parametrize("which", ["head", "patch"])
def test_a_pickle_that_asks_for_code_is_refused(env, tmp_path, which):
    call, *_ = env
    folder = call.ctx.folders.root / "inpaint"
    marker = tmp_path / "ran"
    evil = {"head": _Marker(marker)} if which == "head" else {"diffusion_model.x": (_Marker(marker),)}
    torch.save(evil, folder / f"evil_{which}.pth")
    names = {"head": "fooocus_inpaint_head.pth", "patch": "inpaint_v26.fooocus.patch", which: f"evil_{which}.pth"}
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_fooocus_inpaint(call, names["head"], names["patch"])
    assert not marker.exists()


def test_what_does_not_fit_is_refused_in_one_line(env, tmp_path):
    call, model, pos, neg, head, patch = env
    pipe = model.pipe
    folder = call.ctx.folders.root / "inpaint"
    with pytest.raises(CheckpointError, match="is a Fooocus inpaint patch, not the head"):
        load_fooocus_inpaint(call, "inpaint_v26.fooocus.patch", "inpaint_v26.fooocus.patch")
    with pytest.raises(CheckpointError, match="is the Fooocus inpaint head, not the patch"):
        load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "fooocus_inpaint_head.pth")
    torch.save({"diffusion_model.out.2.weight": (torch.zeros(2, dtype=torch.float32), torch.tensor(0.), torch.tensor(1.))},
               folder / "float.patch")
    with pytest.raises(CheckpointError, match="not uint8"):
        load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "float.patch")

    (loaded,) = load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "inpaint_v26.fooocus.patch")
    pixels, mask = picture()
    latent = vae_encode_for_inpaint(call, pixels, VaeRef(pipe, "tiny"), mask, 0)[0]
    with pytest.raises(InvalidArgument, match="no noise mask"):
        apply_fooocus_inpaint(call, model, loaded, {"samples": latent["samples"]})
    torch.save({"head": torch.zeros(320, 5, 3, 3)}, folder / "sdxl_head.pth")
    (sdxl,) = load_fooocus_inpaint(call, "sdxl_head.pth", "inpaint_v26.fooocus.patch")
    with pytest.raises(InvalidArgument, match="first block 32"):
        apply_fooocus_inpaint(call, model, sdxl, latent)
    torch.save({"diffusion_model.out.2.weight": (torch.zeros(7, dtype=torch.uint8), torch.tensor(0.), torch.tensor(1.))},
               folder / "other.patch")
    (other,) = load_fooocus_inpaint(call, "fooocus_inpaint_head.pth", "other.patch")
    with pytest.raises(InvalidArgument, match="none of the 1 weights of other.patch fits"):
        apply_fooocus_inpaint(call, model, other, latent)
    # a latent of another size than the one sampled
    (patched,) = apply_fooocus_inpaint(call, model, loaded, latent)
    with pytest.raises(InvalidArgument, match="Fooocus inpaint latent is 64x64"):
        K.sample(patched, pos, neg, {"samples": torch.zeros(1, 4, 16, 16)}, seed=1, steps=1, cfg=5.0,
                 sampler_name="euler", scheduler="normal")
    release_all()


def test_inpaint_conditioning_gives_the_greyed_latent_and_rounded_mask(env):
    call, model, pos, neg, *_ = env
    vae = VaeRef(model.pipe, "tiny")
    pixels, mask = picture()
    mask = mask * 0.7
    pos2, neg2, inpaint, samples = vae_encode_inpaint_conditioning(call, pos, neg, vae, pixels, mask)
    assert torch.equal(inpaint["samples"], pos2[0][1]["concat_latent_image"])
    assert torch.equal(inpaint["noise_mask"], samples["noise_mask"].round())
    assert inpaint["noise_mask"].max() == 1.0 and samples["noise_mask"].max() < 1.0
