"""ComfyUI's LoraSave: ModelMergeSubtract / CLIPMergeSubtract of a LoRA'd branch and its base give
a LoRA file (numbered, inside the output folder) that our loader reads back as the LoRA's change."""
import copy
from types import SimpleNamespace

import pytest
import torch
from server_live import write_lora
from workflow_fixtures import Loader, make_ctx, make_models

from opensd.adapters.lora import LoraSet, LoraSpec
from opensd.adapters.lora_files import read_lora
from opensd.errors import InvalidArgument
from opensd.workflows import GraphError, execute, validate_prompt
from opensd.workflows import nodes_lora_extract as LE
from opensd.workflows.loras import release_all
from opensd.workflows.nodes_model_merging import model_merge_subtract
from opensd.workflows.types import ModelRef, NodeCall


@pytest.fixture
def ctx(tmp_path):
    folders = make_models(tmp_path / "models")
    write_lora(tmp_path / "models" / "loras" / "style.safetensors")
    return make_ctx(folders, Loader(folders), tmp_path)


def _graph(prefix="loras/ComfyUI_extracted_lora", lora_type="standard", rank=4):
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny.safetensors"}},
        "5": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "style.safetensors",
                                                     "strength_model": 1.0, "strength_clip": 1.0}},
        "6": {"class_type": "ModelMergeSubtract", "inputs": {"model1": ["5", 0], "model2": ["4", 0], "multiplier": 1.0}},
        "7": {"class_type": "CLIPMergeSubtract", "inputs": {"clip1": ["5", 1], "clip2": ["4", 1], "multiplier": 1.0}},
        "9": {"class_type": "LoraSave", "inputs": {"filename_prefix": prefix, "rank": rank, "lora_type": lora_type,
                                                   "bias_diff": True, "model_diff": ["6", 0],
                                                   "text_encoder_diff": ["7", 0]}}}


@pytest.mark.parametrize("lora_type", ["standard", "full_diff"])
def test_lora_save_writes_a_file_our_loader_reads(ctx, tmp_path, lora_type):
    execute(_graph(lora_type=lora_type), ctx)
    path = ctx.outputs_dir / "loras" / "ComfyUI_extracted_lora_00001_.safetensors"
    extracted, style = read_lora(path), read_lora(tmp_path / "models" / "loras" / "style.safetensors")
    assert extracted.modules.keys() == style.modules.keys()  # the changed layers, under kohya names
    assert any(k.startswith("lora_te_") for k in extracted.modules)
    pipe = ctx.load_pipeline("tiny.safetensors")
    ref, ours = copy.deepcopy(pipe.model), copy.deepcopy(pipe.model)
    LoraSet(ref).apply([LoraSpec(tmp_path / "models" / "loras" / "style.safetensors")])
    LoraSet(ours).apply([LoraSpec(path)])
    want, got, base = ref.state_dict(), ours.state_dict(), pipe.model.state_dict()
    for key in want:
        change = (want[key] - base[key]).float()
        if change.abs().max() == 0:
            assert torch.equal(got[key], base[key]), key
            continue
        err = (got[key] - want[key]).float().norm() / change.norm()
        # full_diff: exact up to fp16 storage; standard: rank 4 of a rank-4 change, less ComfyUI's
        # 0.99-quantile clamping of outliers (on these 32-wide layers it cuts the largest few values
        # of up, where the singular values are; exactness without clamping: test_lora_extract)
        assert err < (2e-3 if lora_type == "full_diff" else 0.4), (key, err.item())
    execute(_graph(rank=2), ctx)  # another run: the next number
    assert (ctx.outputs_dir / "loras" / "ComfyUI_extracted_lora_00002_.safetensors").is_file()


def test_lora_save_refusals(ctx):
    for prefix in ("../x", "/abs"):
        with pytest.raises(GraphError):
            validate_prompt(_graph(prefix), ctx)
    graph = _graph()
    graph["9"]["inputs"]["lora_type"] = "lokr"
    with pytest.raises(GraphError):
        validate_prompt(graph, ctx)
    call = NodeCall(ctx, "9", {}, lambda kind, data: None)
    assert LE.lora_save(call, "x", 4, "standard", True) == {"result": ()}  # no inputs: nothing written
    assert not ctx.outputs_dir.exists() or not any(ctx.outputs_dir.rglob("*.safetensors"))
    pipe = ctx.load_pipeline("tiny.safetensors")
    model = ModelRef(pipe, "tiny")
    (same,) = model_merge_subtract(call, model, model, 1.0)
    with pytest.raises(InvalidArgument, match="^model_diff: no layer differs"):
        LE.lora_save(call, "x", 4, "standard", True, model_diff=same)
    release_all()
    flux = ModelRef(SimpleNamespace(model=SimpleNamespace(config=SimpleNamespace(family="flux"))), "flux")
    with pytest.raises(InvalidArgument, match="^model_diff: LoraSave supports SD1, SD2 and SDXL models; flux is flux"):
        LE.lora_save(call, "x", 4, "standard", True, model_diff=flux)
    assert not any(ctx.outputs_dir.rglob("*.safetensors"))
