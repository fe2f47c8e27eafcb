"""A bf16 DiT model computed in fp32 (a CPU without native bf16) keeps its network's and text
encoder's Linear weights in bf16, upcast per call: the outputs are exactly those of the fp32 load of
the same weights (bf16 -> fp32 is exact), the weights take about half the memory, and the precision
line says so. A model whose files exceed the available RAM plus swap is refused with its sizes."""
from __future__ import annotations

import pytest
import torch

from opensd.errors import CheckpointError
from opensd.models.stored_weights import StoredLinear
from opensd.pipeline import peak_memory
from opensd.pipeline.loader import load_model
from opensd.pipeline.offload import module_bytes
from opensd.pipeline.pipeline import load
from z_image_fixtures import write_z_image_folder, write_z_image_split_files, z_image_parts

PROMPT = "A photograph of an astronaut riding a horse on the moon"


class _Weights:
    """A stand-in model whose state dict is the given one (for write_z_image_split_files)."""

    def __init__(self, sd):
        self.sd = sd

    def state_dict(self):
        return self.sd


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """(bf16 files, the same weights upcast to fp32 in files) of one tiny Z-Image, ComfyUI's layout."""
    root = tmp_path_factory.mktemp("half")
    parts = z_image_parts(seed=11)
    model = load(write_z_image_folder(root / "folder", parts), precision="fp32", device="cpu").model
    bf16 = {k: v.bfloat16() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    half = write_z_image_split_files(root / "bf16", _Weights(bf16), parts["tokenizer"])
    full = write_z_image_split_files(root / "fp32", _Weights({k: v.float() if v.is_floating_point() else v
                                                              for k, v in bf16.items()}), parts["tokenizer"])
    return half, full


def _linears(module) -> list:
    return [m for m in module.modules() if isinstance(m, (torch.nn.Linear, StoredLinear))]


def test_bf16_linears_stay_bf16_and_compute_what_fp32_does(split):
    half, full = split
    ours, plain = load(half["unet"], precision="fp32", device="cpu"), load(full["unet"], precision="fp32",
                                                                          device="cpu")
    for part in (lambda p: p.model.network, lambda p: p.model.encoder("qwen3_4b")):
        kept = _linears(part(ours))
        assert kept and all(isinstance(m, StoredLinear) and m.weight.dtype == torch.bfloat16 for m in kept)
        assert not any(isinstance(m, StoredLinear) for m in _linears(part(plain)))
        saved = sum(m.weight.numel() * 2 for m in kept)  # 4 bytes a weight -> 2
        assert module_bytes(part(ours)) == module_bytes(part(plain)) - saved
    assert module_bytes(ours.model.network) < 0.55 * module_bytes(plain.model.network)  # Linears: nearly all
    assert all(p.dtype == torch.float32 for p in ours.model.parameters())  # norms, biases, VAE: upcast
    assert "Linear weights kept in bf16" in ours.precision.line(ours.device)
    assert "kept" not in plain.precision.line(plain.device)
    for param in plain.model.parameters():  # in fresh, aligned memory (see the test below)
        param.data = param.data.clone()
    g = torch.Generator().manual_seed(5)
    x, ctx, t = torch.randn(2, 16, 8, 6, generator=g), torch.randn(2, 9, 32, generator=g), torch.tensor([0.2, 0.7])
    with torch.no_grad():
        assert torch.equal(ours.model.network(x, t, ctx), plain.model.network(x, t, ctx))
    assert torch.equal(ours.conditioner().encode(PROMPT).context, plain.conditioner().encode(PROMPT).context)
    a, b = (p.txt2img(PROMPT, width=64, height=64, steps=2, seed=3)[0] for p in (ours, plain))
    assert list(a.getdata()) == list(b.getdata())


def test_bf16_computed_in_bf16_is_not_wrapped(split):
    half, _ = split
    pipe = load(half["unet"], precision="bf16", device="cpu")
    assert not any(isinstance(m, StoredLinear) for m in pipe.model.modules())
    assert pipe.precision.kept is None


def test_a_model_larger_than_ram_and_swap_is_refused_with_its_sizes(split, monkeypatch):
    half, _ = split
    stored = sum(p.stat().st_size for p in half.values())
    monkeypatch.setattr(peak_memory, "free_memory", lambda: (stored // 4, stored // 4))
    with pytest.raises(CheckpointError, match=r"weights take .* GiB as stored, more than this machine's .* GiB "
                                              r"of available RAM and .* GiB of free swap; use a smaller file"):
        load(half["unet"], precision="fp32", device="cpu")
    monkeypatch.setattr(peak_memory, "free_memory", lambda: (stored // 2, stored // 2 + 1))
    load(half["unet"], precision="fp32", device="cpu")  # fits with the swap: loads
    monkeypatch.setattr(peak_memory, "free_memory", lambda: (0, 0))
    load_model(half["unet"], device="cpu", runs_on="cuda")  # staged in RAM for a GPU: not checked


def test_meminfo_is_read_as_available_ram_and_free_swap(monkeypatch, tmp_path):
    info = tmp_path / "meminfo"
    info.write_text("MemTotal:  16000000 kB\nMemFree: 1000 kB\nMemAvailable:  8000000 kB\nSwapTotal: 4 kB\n"
                    "SwapFree:  2000000 kB\n")
    real = peak_memory.Path
    monkeypatch.setattr(peak_memory, "Path", lambda p: info if p == "/proc/meminfo" else real(p))
    assert peak_memory.free_memory() == (8000000 * 1024, 2000000 * 1024)
    assert peak_memory.system_ram() == (16000000 * 1024, 8000000 * 1024)


def test_a_workflow_merges_bf16_kept_weights_in_place(split, tmp_path):
    """ComfyUI's ModelMergeSimple on two such models merges the bf16-kept Linears too (in fp32,
    stored in bf16), where float8/GGUF-stored ones are refused."""
    from opensd.workflows import nodes_model_merging as M
    from opensd.workflows.loras import activate, release_all
    from opensd.workflows.types import ModelRef
    half, _ = split
    parts = z_image_parts(seed=12)
    other = load(write_z_image_folder(tmp_path / "folder", parts), precision="fp32", device="cpu").model
    files = write_z_image_split_files(tmp_path / "other", _Weights(
        {k: v.bfloat16() if v.is_floating_point() else v for k, v in other.state_dict().items()}), parts["tokenizer"])
    a, b = load(half["unet"], precision="fp32", device="cpu"), load(files["unet"], precision="fp32", device="cpu")
    wa, wb = (p.model.network.layers[0].attention.qkv.weight.clone() for p in (a, b))
    try:
        activate(M.model_merge_simple(None, ModelRef(a, "a"), ModelRef(b, "b"), 0.3)[0])
        got = a.model.network.layers[0].attention.qkv.weight
        assert got.dtype == torch.bfloat16
        assert torch.equal(got, (wa.float() * 0.3 + wb.float() * 0.7).bfloat16())
    finally:
        release_all()
    assert torch.equal(a.model.network.layers[0].attention.qkv.weight, wa)  # the base weights back


@pytest.mark.parametrize("family", ["flux", "sd3", "z_image"])
@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_16bit_networks_of_each_dit_family_equal_their_fp32_load(tmp_path, family, half):
    from opensd.checkpoints.files import save_safetensors
    from opensd.pipeline import parts
    from test_stored_weights import network, run, stored
    net, metadata = network(family)
    sd = {k: v.to(half).contiguous() for k, v in net.state_dict().items()}
    save_safetensors(sd, tmp_path / "half.safetensors", metadata)
    save_safetensors({k: v.float() for k, v in sd.items()}, tmp_path / "fp32.safetensors", metadata)
    ours = parts.load_unet(tmp_path / "half.safetensors", device="cpu", precision="fp32")
    plain = parts.load_unet(tmp_path / "fp32.safetensors", device="cpu", precision="fp32")
    assert set(stored(ours).values()) == {str(half).removeprefix("torch.")} and not stored(plain)
    unaligned = run(plain, family)
    torch.testing.assert_close(run(ours, family), unaligned, rtol=1e-6, atol=1e-6)
    # A file's fp32 tensors lie where the file puts them (not 64-byte aligned), which can change a
    # matrix product's summation order; the same weights in fresh memory give our output bit for bit.
    for param in plain.model.parameters():
        param.data = param.data.clone()
    assert torch.equal(run(ours, family), run(plain, family))


def test_loras_and_float8_storage_apply_to_bf16_kept_linears(tmp_path):
    """A LoRA patches a bf16-kept weight (the sum rounded to bf16) and restores it exactly; UNETLoader's
    float8 weight_dtype (store_linears) turns the bf16-kept Linears into float8 ones too."""
    from opensd.adapters.lora import LoraSet, LoraSpec
    from opensd.checkpoints.files import save_safetensors
    from opensd.models.stored_weights import store_linears
    from opensd.pipeline import parts
    from test_stored_weights import network, rel, run, stored, write_qkv_lora
    net, metadata = network("flux")
    save_safetensors({k: v.bfloat16().contiguous() for k, v in net.state_dict().items()},
                     tmp_path / "bf16.safetensors", metadata)
    write_qkv_lora(tmp_path / "lora.safetensors")
    pipe = parts.load_unet(tmp_path / "bf16.safetensors", device="cpu", precision="fp32")
    base = run(pipe, "flux")
    loras = LoraSet(pipe.model)
    assert loras.apply([LoraSpec(tmp_path / "lora.safetensors")])[0].patched == 1
    assert rel(run(pipe, "flux"), base) > 0.01
    qkv = pipe.model.network.double_blocks[0].img_attn.qkv
    assert qkv.weight.dtype == torch.bfloat16 and not qkv.patches  # a 16-bit weight is patched in place
    loras.restore()
    assert torch.equal(run(pipe, "flux"), base)
    store_linears(pipe.family.network(pipe.model), torch.float8_e4m3fn)
    assert set(stored(pipe).values()) == {"float8_e4m3fn"}
    assert rel(run(pipe, "flux"), base) < 0.1  # e4m3 keeps 3 mantissa bits
