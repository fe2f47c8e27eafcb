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
