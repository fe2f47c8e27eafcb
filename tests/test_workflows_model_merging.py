"""ComfyUI's model merging nodes on two tiny checkpoints: the weights a merged branch runs with
against ComfyUI's add_patches arithmetic computed here from each model's own weights (LoRAs before
a merge scaled with it, after it on top, nested merges), the base weights back after the run, whole
samplings at ratio 0 and 1 equal to the plain models, CheckpointSave of a merge, and refusals."""
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open
from server_live import write_lora
from workflow_fixtures import Loader, default_graph, make_ctx, make_models

from opensd.errors import InvalidArgument
from opensd.library.synthetic import write_random_checkpoint
from opensd.workflows import execute
from opensd.workflows import ksampler as K
from opensd.workflows import nodes_model_merging as M
from opensd.workflows.loras import activate, release_all
from opensd.workflows.nodes_core import clip_text_encode
from opensd.workflows.types import ClipRef, LoraEntry, ModelRef


@pytest.fixture
def env(tmp_path):
    folders = make_models(tmp_path / "models")
    write_random_checkpoint(tmp_path / "models" / "checkpoints" / "other.safetensors", seed=7)
    lora = tmp_path / "models" / "loras" / "style.safetensors"
    write_lora(lora)
    ctx = make_ctx(folders, Loader(folders), tmp_path)
    a, b = ctx.load_pipeline("tiny.safetensors"), ctx.load_pipeline("other.safetensors")
    yield ctx, a, b, lora
    release_all()


def unet(pipe):
    return {k: v.detach().clone() for k, v in pipe.model.unet.named_parameters()}


def te(pipe):
    return {f"0.{k}": v.detach().clone() for k, v in pipe.model.text_encoders[0].named_parameters()}


def weights(ref, part="unet"):
    activate(ref, part)
    return unet(ref.pipe) if part == "unet" else te(ref.pipe)


def close(got, want):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-6)


def test_merges_are_comfyuis_add_patches_arithmetic(env):
    _, a, b, lora = env
    A, B = unet(a), unet(b)
    ma, mb = ModelRef(a, "tiny"), ModelRef(b, "other")
    close(weights(M.model_merge_simple(None, ma, mb, 0.3)[0]), {k: A[k] * 0.3 + B[k] * 0.7 for k in A})
    close(weights(M.model_merge_add(None, ma, mb)[0]), {k: A[k] + B[k] for k in A})
    close(weights(M.model_merge_subtract(None, ma, mb, 2.0)[0]), {k: (A[k] - B[k]) * 2.0 for k in A})
    # a LoRA before the merge is scaled with its model, one after it goes on top
    with_lora = ModelRef(a, "tiny", (LoraEntry(lora, 1.0, 0.0),))
    L = {k: v - A[k] for k, v in weights(with_lora).items()}
    assert any(d.abs().max() > 0 for d in L.values())
    close(weights(M.model_merge_simple(None, with_lora, mb, 0.5)[0]), {k: (A[k] + L[k]) * 0.5 + B[k] * 0.5 for k in A})
    (later,) = M.model_merge_simple(None, ma, mb, 0.5)
    close(weights(ModelRef(a, "m", (LoraEntry(lora, 1.0, 0.0),), merge=later.merge)),
          {k: A[k] * 0.5 + B[k] * 0.5 + L[k] for k in A})
    # nested: (A merged with B) merged with A
    (inner,) = M.model_merge_add(None, ma, mb)
    close(weights(M.model_merge_simple(None, inner, ma, 0.25)[0]), {k: (A[k] + B[k]) * 0.25 + A[k] * 0.75 for k in A})
    # a branch without a merge gets the base back; so does the pipeline after the run
    close(weights(ma), A)
    weights(M.model_merge_add(None, ma, mb)[0])
    release_all()
    close(unet(a), A)


def test_clip_merges_the_text_encoders(env):
    _, a, b, _ = env
    A, B = te(a), te(b)
    ca, cb = ClipRef(a, "tiny"), ClipRef(b, "other")
    close(weights(M.clip_merge_simple(None, ca, cb, 0.6)[0], "te"), {k: A[k] * 0.6 + B[k] * 0.4 for k in A})
    close(weights(M.clip_merge_subtract(None, ca, cb, 1.5)[0], "te"), {k: (A[k] - B[k]) * 1.5 for k in A})
    (added,) = M.clip_merge_add(None, ca, cb)
    encoded = clip_text_encode(None, "a lighthouse", added)[0][0][0]
    assert not torch.allclose(encoded, clip_text_encode(None, "a lighthouse", ca)[0][0][0])
    release_all()
    close(te(a), A)


def test_a_merged_graph_at_ratio_1_and_0_samples_as_each_model(env):
    ctx, _, _, _ = env

    def graph(ratio):
        g = default_graph()
        g["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other.safetensors"}}
        g["11"] = {"class_type": "ModelMergeSimple",
                   "inputs": {"model1": ["4", 0], "model2": ["10", 0], "ratio": ratio}}
        g["3"]["inputs"]["model"] = ["11", 0]
        g["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": f"r{ratio}"}}
        del g["9"]
        return g

    def latent(prefix):
        with safe_open(str(ctx.outputs_dir / f"{prefix}_00001_.latent"), "pt") as f:
            return f.get_tensor("latent_tensor")
    execute(graph(1.0), ctx)
    execute(graph(0.0), ctx)
    plain = default_graph()
    plain["8"] = {"class_type": "SaveLatent", "inputs": {"samples": ["3", 0], "filename_prefix": "a"}}
    del plain["9"]
    execute(plain, ctx)
    plain["10"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "other.safetensors"}}
    plain["3"]["inputs"]["model"] = ["10", 0]
    plain["8"]["inputs"]["filename_prefix"] = "b"
    execute(plain, ctx)
    assert torch.equal(latent("r1.0"), latent("a")) and torch.equal(latent("r0.0"), latent("b"))
    assert not torch.equal(latent("a"), latent("b"))


def test_checkpoint_save_writes_the_merged_weights(env):
    ctx, a, b, _ = env
    A, B = unet(a), unet(b)
    (m,) = M.model_merge_simple(None, ModelRef(a, "tiny"), ModelRef(b, "other"), 0.5)
    from opensd.workflows.nodes_checkpoint_save import checkpoint_save
    from opensd.workflows.types import NodeCall, VaeRef
    checkpoint_save(NodeCall(ctx, "9", {}, lambda kind, data: None), m, ClipRef(a, "tiny"), VaeRef(a, "tiny"), "merged")
    with safe_open(str(ctx.outputs_dir / "merged_00001_.safetensors"), "pt") as f:
        key = "model.diffusion_model.out.2.weight"
        torch.testing.assert_close(f.get_tensor(key), (A["out.2.weight"] + B["out.2.weight"]) * 0.5)


def test_models_that_do_not_fit_are_one_line(env, tmp_path):
    from opensd.library.synthetic import TINY
    wide = replace(TINY, unet=replace(TINY.unet, model_channels=TINY.unet.model_channels * 2))
    write_random_checkpoint(tmp_path / "models" / "checkpoints" / "wide.safetensors", wide)
    ctx, a, _, _ = env
    c = ctx.load_pipeline("wide.safetensors")
    (m,) = M.model_merge_simple(None, ModelRef(a, "tiny"), ModelRef(c, "wide"), 0.5)
    with pytest.raises(InvalidArgument, match=r"^model2: wide does not fit tiny \(.* is \(.*\), not \(.*\)\)$"):
        K.sample(m, *[clip_text_encode(None, t, ClipRef(a, "tiny"))[0] for t in ("x", "y")],
                 {"samples": torch.zeros(1, 4, 8, 8)}, seed=1, steps=1, cfg=1.0, sampler_name="euler",
                 scheduler="normal")


def _block_ratio(name: str, ratios: dict) -> float:
    """ComfyUI's ModelMergeBlocks choice written out: the longest matching input name, else the first."""
    matches = [p for p in ratios if name.startswith(p)]
    return ratios[max(matches, key=len)] if matches else next(iter(ratios.values()))


def test_block_merges_pick_each_weights_ratio_by_its_longest_prefix(env):
    _, a, b, _ = env
    A, B = unet(a), unet(b)
    ma, mb = ModelRef(a, "tiny"), ModelRef(b, "other")
    ratios = {"input": 0.2, "middle": 0.6, "out": 0.9}
    close(weights(M.model_merge_blocks(None, ma, mb, **ratios)[0]),
          {k: A[k] * _block_ratio(k, ratios) + B[k] * (1 - _block_ratio(k, ratios)) for k in A})
    assert _block_ratio("time_embed.0.weight", ratios) == 0.2 and _block_ratio("out.2.bias", ratios) == 0.9
    # ModelMergeSD1's inputs: "input_blocks.1." must not take "input_blocks.10."'s ratio, and the
    # longest prefix wins ("input_blocks.1" vs "input_blocks.11" in SDXL's dotless names)
    from opensd.workflows import loras
    from opensd.workflows.types import NODES
    names = [n for n in NODES["ModelMergeSD1"].required if n not in ("model1", "model2")]
    sd1 = {n: round(0.01 * i, 2) for i, n in enumerate(names)}
    close(weights(NODES["ModelMergeSD1"].fn(None, ma, mb, **dict(reversed(list(sd1.items()))))[0]),
          {k: A[k] * _block_ratio(k, sd1) + B[k] * (1 - _block_ratio(k, sd1)) for k in A})
    sdxl = {"input_blocks.1": 0.3, "input_blocks.11": 0.7}
    assert _block_ratio("input_blocks.11.0.weight", sdxl) == 0.7
    assert loras._strengths(M.BlockMergeEntry(ma, mb, 1.0, 0.0, tuple(sdxl.items())),
                              "input_blocks.11.0.weight") == (0.7, pytest.approx(0.3))
