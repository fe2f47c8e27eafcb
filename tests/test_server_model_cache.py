"""The model cache: LRU over loaded pipelines within a budget in bytes of parameters."""
from __future__ import annotations

import torch
from server_live import models_dir

from opensd.library.models_dir import ModelFolders
from opensd.server.model_cache import ModelCache, pipeline_bytes


class FakePipe:
    def __init__(self, path):
        self.path = path
        self.model = torch.nn.Linear(100, 100)  # 10100 fp32 parameters = 40400 bytes


def test_lru_within_budget(tmp_path):
    root = models_dir(tmp_path)
    (root / "Stable-diffusion" / "b.safetensors").write_bytes(b"x")
    loads = []

    def loader(path, **kw):
        loads.append(path.name)
        return FakePipe(path)

    one = pipeline_bytes(FakePipe(None))
    cache = ModelCache(ModelFolders(root), budget_bytes=int(one * 2.5), loader=loader)
    a, b, t = (cache.resolve(n) for n in ("opensd-emoji.safetensors", "b", "tiny.safetensors [0123456789]"))
    assert t.name == "tiny.safetensors"  # an A1111 title resolves to its file
    cache.get(a), cache.get(b), cache.get(a)          # a is now the most recent
    cache.get(t)                                      # over budget: b (least recent) goes
    assert [p.name for p, _ in cache.loaded()] == ["opensd-emoji.safetensors", "tiny.safetensors"]
    assert cache.get(a).path == a and loads == ["opensd-emoji.safetensors", "b.safetensors", "tiny.safetensors"]
    cache.get(b)
    assert loads[-1] == "b.safetensors" and len(cache.loaded()) == 2
    small = ModelCache(ModelFolders(root), budget_bytes=1, loader=loader)
    small.get(a)
    assert len(small.loaded()) == 1                   # the one in use stays even over budget


def test_a_model_too_big_for_the_free_ram_unloads_the_held_ones_and_loads(tmp_path):
    """The RAM check (pipeline/ram_fit.py) counts what the cache itself holds as used: switching
    between two big models must not be refused while the first one is what fills the memory."""
    from opensd.errors import OutOfMemoryForModel
    root = models_dir(tmp_path)
    (root / "Stable-diffusion" / "b.safetensors").write_bytes(b"x")
    loads = []

    def loader(path, **kw):
        loads.append(path.name)
        if path.name == "b.safetensors" and len(cache.loaded()) > 0:  # "fits" only once a is gone
            raise OutOfMemoryForModel(path, "this model's weights take 12.0 GiB as stored, more than ...")
        return FakePipe(path)

    cache = ModelCache(ModelFolders(root), budget_bytes=10 ** 12, loader=loader)
    a, b = cache.resolve("opensd-emoji.safetensors"), cache.resolve("b")
    cache.get(a)
    assert cache.get(b).path == b and [p.name for p, _ in cache.loaded()] == ["b.safetensors"]
    assert loads == ["opensd-emoji.safetensors", "b.safetensors", "b.safetensors"]
    # with nothing else to unload, the refusal reaches the caller as it was
    with_a_kept = ModelCache(ModelFolders(root), budget_bytes=10 ** 12, loader=loader)
    cache = with_a_kept
    cache.get(a)
    try:
        cache.get(b, keep=((a, None),))
    except OutOfMemoryForModel as e:
        assert "12.0 GiB" in str(e)
    else:
        raise AssertionError("a model that does not fit beside a kept one must be refused")
    assert [p.name for p, _ in cache.loaded()] == ["opensd-emoji.safetensors"]
