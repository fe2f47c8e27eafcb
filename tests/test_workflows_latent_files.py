"""ComfyUI's SaveLatent / LoadLatent: the .latent file as ComfyUI writes it (read back here with the
safetensors library itself), ComfyUI's numbering inside the output folder, loading from the input
folder only, the first format's scaling, and files that are no safetensors never unpickled."""
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from opensd.distributed.comfy_wire import to_wire
from opensd.errors import InvalidArgument
from opensd.library.models_dir import ModelFolders
from opensd.workflows import ExecutionContext, GraphError, NodeError, execute, object_info, validate_prompt
from opensd.workflows import nodes_latent_files as LF
from opensd.workflows.types import NodeCall


@pytest.fixture
def ctx(tmp_path):
    (tmp_path / "in").mkdir()
    return ExecutionContext(ModelFolders(None, include_builtin=False), None, tmp_path / "out", tmp_path / "in",
                            temp_dir=tmp_path / "temp", extra_pnginfo={"workflow": {"nodes": [1, 2]}})


def _save_graph(prefix="latents/ComfyUI"):
    return {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 48, "batch_size": 2}},
            "3": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": prefix}}}


def test_save_latent_writes_comfyuis_file_numbered_in_the_output_folder(ctx):
    graph = _save_graph()
    out = execute(graph, ctx)
    assert out["3"] == {"latents": [{"filename": "ComfyUI_00001_.latent", "subfolder": "latents", "type": "output"}]}
    path = ctx.outputs_dir / "latents" / "ComfyUI_00001_.latent"
    with safe_open(str(path), "pt") as f:
        assert sorted(f.keys()) == ["latent_format_version_0", "latent_tensor"]
        assert torch.equal(f.get_tensor("latent_tensor"), torch.zeros(2, 4, 6, 8))
        assert f.get_tensor("latent_format_version_0").shape == (0,)
        meta = f.metadata()
    assert json.loads(meta["prompt"]) == graph and json.loads(meta["workflow"]) == {"nodes": [1, 2]}
    graph["1"]["inputs"]["batch_size"] = 1  # a new run: the next number
    assert execute(graph, ctx)["3"]["latents"][0]["filename"] == "ComfyUI_00002_.latent"


@pytest.mark.parametrize("prefix", ["../escape", "/abs/x", "latents/"])
def test_save_latent_stays_inside_the_output_folder(ctx, prefix):
    with pytest.raises(GraphError):
        validate_prompt(_save_graph(prefix), ctx)


def test_load_latent_reads_the_input_folder_and_scales_the_first_format(ctx):
    x = torch.randn(1, 4, 3, 5, generator=torch.Generator().manual_seed(0))
    save_file({"latent_tensor": x, "latent_format_version_0": torch.tensor([])}, str(ctx.inputs_dir / "a.latent"))
    save_file({"latent_tensor": x}, str(ctx.inputs_dir / "old.latent"))  # ComfyUI's first format
    (ctx.inputs_dir / "sub").mkdir()
    save_file({"latent_tensor": x}, str(ctx.inputs_dir / "sub" / "deep.latent"))
    (ctx.inputs_dir / "note.txt").write_text("x")
    choices = object_info(ctx, "LoadLatent")["LoadLatent"]["input"]["required"]["latent"][0]
    assert choices == ["a.latent", "old.latent"]  # the top level's .latent files, as ComfyUI lists them
    call = NodeCall(ctx, "1", {}, lambda kind, data: None)
    assert torch.equal(LF.load_latent(call, "a.latent")[0]["samples"], x)
    torch.testing.assert_close(LF.load_latent(call, "old.latent")[0]["samples"], x / 0.18215)
    graph = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "a.latent"}},
             "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "again"}}}
    execute(graph, ctx)
    with safe_open(str(ctx.outputs_dir / "again_00001_.latent"), "pt") as f:
        assert torch.equal(f.get_tensor("latent_tensor"), x)


def test_load_latent_refuses_what_it_must_not_read(ctx, tmp_path):
    call = NodeCall(ctx, "1", {}, lambda kind, data: None)
    marker = tmp_path / "unpickled"

    class Trap:
        def __reduce__(self):
            return (open, (str(marker), "w"))
    (ctx.inputs_dir / "trap.latent").write_bytes(pickle.dumps({"latent_tensor": Trap()}))
    with pytest.raises(InvalidArgument, match=r"^latent: trap.latent is not a safetensors .latent file"):
        LF.load_latent(call, "trap.latent")
    assert not marker.exists()
    save_file({"other": torch.zeros(1)}, str(ctx.inputs_dir / "empty.latent"))
    with pytest.raises(InvalidArgument, match="^latent: empty.latent holds no 'latent_tensor' tensor$"):
        LF.load_latent(call, "empty.latent")
    good = ctx.inputs_dir / "a.latent"
    save_file({"latent_tensor": torch.zeros(1, 4, 2, 2)}, str(good))
    (ctx.inputs_dir / "cut.latent").write_bytes(good.read_bytes()[:-8])
    with pytest.raises(InvalidArgument) as e:
        LF.load_latent(call, "cut.latent")
    assert str(e.value).startswith("latent: cut.latent: ") and str(ctx.inputs_dir) not in str(e.value)
    (tmp_path / "outside.latent").write_bytes(good.read_bytes())
    for name in ("../outside.latent", "missing.latent"):
        with pytest.raises(GraphError) as g:
            validate_prompt({"1": {"class_type": "LoadLatent", "inputs": {"latent": name}},
                             "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0],
                                                                          "filename_prefix": "x"}}}, ctx)
        assert f"Invalid latent file: {name}" in json.dumps(g.value.payload)
    with pytest.raises(NodeError, match="holds no 'latent_tensor'"):
        execute({"1": {"class_type": "LoadLatent", "inputs": {"latent": "empty.latent"}},
                 "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "x"}}}, ctx)


def test_a_ray_worker_gets_the_latent_files_as_bytes(ctx):
    (ctx.inputs_dir / "a.latent").write_bytes(b"latent bytes")
    graph = {"1": {"class_type": "LoadLatent", "inputs": {"latent": "a.latent"}}}
    assert to_wire(ctx.inputs_dir, {"prompt": graph})["inputs"] == {"a.latent": b"latent bytes"}
