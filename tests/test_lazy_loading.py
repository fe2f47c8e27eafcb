"""Loading takes a file's tensors one at a time: a medium random Flux network in diffusers' layout
(whose q, k, v the original fuses) stored in bf16 and loaded in fp32 allocates little more than
the fp32 network itself (no fused copies beside it, no dict of converted tensors beside the
source), and one in the original layout loaded in its own dtype allocates nothing (the model
views the memory-mapped file). Allocations are counted by a dispatch mode that follows every CPU
storage an op creates until it is freed."""
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from opensd.checkpoints import detect_dit as DD
from opensd.checkpoints.files import save_safetensors
from opensd.checkpoints.keymap_flux import flux_to_diffusers
from opensd.models.config_dit import FluxConfig
from opensd.models.flux import Flux
from opensd.pipeline import parts
from opensd.pipeline.offload import module_bytes

CFG = FluxConfig(in_channels=64, out_channels=64, vec_in_dim=64, context_in_dim=64, hidden_size=512, num_heads=8,
                 depth=2, depth_single_blocks=4, axes_dim=(16, 24, 24))
META = {DD.META_HEAD_DIM: "64", DD.META_AXES: "16,24,24"}


class PeakAllocated(TorchDispatchMode):
    """Bytes of CPU storages created by ops (not views of their inputs) and still alive; the peak."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _free(self, key: int, n: int) -> None:
        self.live -= n
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type == "cpu"}
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "cpu":
                continue
            storage = t.untyped_storage()
            key, n = storage.data_ptr(), storage.nbytes()
            if n and key not in inputs and key not in self._seen:
                self._seen.add(key)
                self.live += n
                self.peak = max(self.peak, self.live)
                weakref.finalize(storage, self._free, key, n)
        return out


def _network_file(path, layout: str):
    g = torch.Generator().manual_seed(0)
    with torch.device("meta"):
        net = Flux(CFG)
    sd = {k: (0.02 * torch.randn(v.shape, generator=g)).bfloat16() for k, v in net.state_dict().items()}
    save_safetensors(flux_to_diffusers(sd, CFG) if layout == "diffusers" else sd, path, META)
    return max(v.numel() for v in sd.values()), sum(v.numel() for v in sd.values())


def _load(path, precision):
    with PeakAllocated() as peak:
        pipe = parts.load_unet(path, device="cpu", precision=precision)
    return pipe, peak.peak


def test_a_fused_diffusers_file_loads_without_a_second_copy(tmp_path):
    largest, total = _network_file(tmp_path / "flux.safetensors", "diffusers")
    pipe, peak = _load(tmp_path / "flux.safetensors", "fp32")
    model = module_bytes(pipe.family.network(pipe.model))
    assert total * 2 < model < total * 4 * 0.55  # its Linears kept in bf16 (pipeline/weights.py), the rest fp32
    # the network, plus at most one fused tensor in flight (bf16 parts, their bf16 fusion)
    assert peak <= model + 2 * largest * 2, (peak, model)


def test_a_file_in_the_run_dtype_is_used_where_it_lies(tmp_path):
    largest, total = _network_file(tmp_path / "flux.safetensors", "original")
    pipe, peak = _load(tmp_path / "flux.safetensors", "bf16")
    assert next(pipe.family.network(pipe.model).parameters()).dtype == torch.bfloat16
    assert peak < largest * 2  # a few small buffers, no weight copied
