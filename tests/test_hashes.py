"""A1111-compatible model hashes and their persistent cache."""
import builtins
import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from safetensors.numpy import save_file

from opensd.library import hashes
from opensd.library.hashes import (
    HashCache,
    calculate_addnet_hash,
    calculate_sha256,
    embedding_hash,
    legacy_model_hash,
    lora_hash,
    model_hash,
)


def _random_file(path, size, seed=0):
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv("OPENSD_CACHE_DIR", str(folder))  # so no test touches the real user cache
    return folder


@pytest.fixture
def opens(monkeypatch):
    """Paths the hashes module opens, in order (the module's open() is the builtin, wrapped)."""
    seen = []

    def counting_open(file, *args, **kwargs):
        seen.append(os.fspath(file))
        return builtins.open(file, *args, **kwargs)

    monkeypatch.setattr(hashes, "open", counting_open, raising=False)
    return seen


# ---------------------------------------------------------------------------------- the hashes

@pytest.mark.parametrize("size", [0, 1, 4 << 20, (4 << 20) + 12345])  # empty, tiny, one chunk, chunk + tail
def test_sha256_equals_hashlib_over_the_file(tmp_path, cache_dir, size):
    path = _random_file(tmp_path / "model.ckpt", size)
    expected = _sha(path.read_bytes())
    assert calculate_sha256(path) == expected
    assert calculate_sha256(path, chunk_size=1000) == expected  # chunking that does not divide the size
    assert HashCache(cache_dir).sha256(path) == expected
    assert model_hash(path) == expected[:10]
    assert embedding_hash(path) == expected[:12]
    assert lora_hash(path) == expected[:12]  # not .safetensors: the whole file


def test_legacy_model_hash_reads_64k_at_1m(tmp_path):
    path = _random_file(tmp_path / "old.ckpt", 0x100000 + 0x10000 + 999, seed=1)
    data = path.read_bytes()
    assert legacy_model_hash(path) == _sha(data[0x100000:0x110000])[:8]
    short = _random_file(tmp_path / "short.ckpt", 5000)
    assert legacy_model_hash(short) == _sha(b"")[:8] == "e3b0c442"  # what A1111 gives small files


def _lora(path, metadata=None, seed=0):
    rng = np.random.default_rng(seed)
    save_file({"lora_up.weight": rng.standard_normal((8, 4), dtype=np.float32),
               "lora_down.weight": rng.standard_normal((4, 8), dtype=np.float32)}, path, metadata=metadata)
    return path


def test_addnet_hash_is_sha256_of_the_tensor_data(tmp_path, cache_dir):
    a = _lora(tmp_path / "a.safetensors", {"ss_output_name": "a"})
    b = _lora(tmp_path / "b.safetensors", {"ss_output_name": "a much longer name, other metadata"})
    data = a.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert calculate_addnet_hash(a) == _sha(data[8 + n:])
    # only the header differs: same addnet hash, different file hash
    assert calculate_addnet_hash(a) == calculate_addnet_hash(b)
    assert calculate_sha256(a) != calculate_sha256(b)
    assert lora_hash(a) == lora_hash(b) == _sha(data[8 + n:])[:12]
    assert HashCache(cache_dir).addnet_hash(a) == _sha(data[8 + n:])


def test_lora_hash_prefers_the_trainers_stored_hash(tmp_path, cache_dir):
    stored = "ab" * 32
    assert lora_hash(_lora(tmp_path / "s.safetensors", {"sshs_model_hash": stored})) == stored[:12]
    bad = _lora(tmp_path / "bad.safetensors", {"sshs_model_hash": "not a hash"})
    assert lora_hash(bad) == calculate_addnet_hash(bad)[:12]


def test_addnet_hash_refuses_a_non_safetensors_file(tmp_path):
    path = _random_file(tmp_path / "x.safetensors", 100)
    with pytest.raises(ValueError, match="not a safetensors file"):
        calculate_addnet_hash(path)


# ---------------------------------------------------------------------------------- the cache

def test_cache_hit_does_not_read_the_file_again(tmp_path, cache_dir, opens):
    model = _random_file(tmp_path / "model.safetensors", 300_000)
    expected = _sha(model.read_bytes())
    assert HashCache(cache_dir).sha256(model) == expected
    assert opens.count(str(model)) == 1
    assert (cache_dir / "hashes.json").is_file()

    assert HashCache(cache_dir).sha256(model) == expected  # a new process: from the file on disk
    assert model_hash(model) == expected[:10]              # the default cache, same folder
    assert opens.count(str(model)) == 1
    entry = json.loads((cache_dir / "hashes.json").read_text())["files"][str(model)]
    st = model.stat()
    assert entry == {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": expected}


def test_changed_mtime_or_size_invalidates(tmp_path, cache_dir, opens):
    model = _random_file(tmp_path / "model.ckpt", 100_000, seed=1)
    cache = HashCache(cache_dir)
    first = cache.sha256(model)

    _random_file(model, 100_000, seed=2)              # same size, new content ...
    st = model.stat()
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # ... and a new mtime
    second = cache.sha256(model)
    assert second == _sha(model.read_bytes()) != first

    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))  # older mtime counts too
    assert cache.sha256(model) == second
    assert opens.count(str(model)) == 3

    with open(model, "ab") as f:                      # appended: size differs
        f.write(b"tail")
    os.utime(model, ns=(st.st_atime_ns, st.st_mtime_ns - 5_000_000_000))  # even with the cached mtime
    assert cache.sha256(model) == _sha(model.read_bytes())
    assert opens.count(str(model)) == 4


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe\x00garbage",
    b"",
    b"[1, 2, 3]",
    b'{"version": 99, "files": {}}',
    b'{"version": 1, "files": []}',
])
def test_corrupt_cache_is_ignored_and_rebuilt(tmp_path, cache_dir, content):
    model = _random_file(tmp_path / "model.ckpt", 10_000)
    cache_dir.mkdir()
    (cache_dir / "hashes.json").write_bytes(content)
    assert HashCache(cache_dir).sha256(model) == _sha(model.read_bytes())
    data = json.loads((cache_dir / "hashes.json").read_text())
    assert data["version"] == 1 and data["files"][str(model)]["sha256"] == _sha(model.read_bytes())


def test_bad_entries_are_recomputed(tmp_path, cache_dir, opens):
    model = _random_file(tmp_path / "model.ckpt", 10_000)
    st = model.stat()
    cache_dir.mkdir()
    entries = {str(model): {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": 12345},
               "other": "not an entry"}
    (cache_dir / "hashes.json").write_text(json.dumps({"version": 1, "files": entries}))
    assert HashCache(cache_dir).sha256(model) == _sha(model.read_bytes())
    assert opens.count(str(model)) == 1


def test_hash_of_a_file_changing_while_read_is_not_cached(tmp_path, cache_dir, monkeypatch):
    model = _random_file(tmp_path / "model.ckpt", 10_000)
    real = hashes.calculate_sha256

    def racing(path):
        digest = real(path)
        with open(model, "ab") as f:  # a download still writing the file
            f.write(b"more")
        return digest

    monkeypatch.setattr(hashes, "calculate_sha256", racing)
    cache = HashCache(cache_dir)
    cache.sha256(model)
    assert cache.cached(model) is None
    monkeypatch.setattr(hashes, "calculate_sha256", real)
    assert cache.sha256(model) == _sha(model.read_bytes())


def test_unwritable_cache_folder_still_hashes(tmp_path):
    model = _random_file(tmp_path / "model.ckpt", 10_000)
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("x")
    cache = HashCache(blocker / "cache")  # cannot be created: its parent is a file
    assert cache.sha256(model) == _sha(model.read_bytes())
    assert cache.sha256(model) == _sha(model.read_bytes())
    assert blocker.read_text() == "x"


def test_writers_keep_each_others_entries_and_leave_no_temp_files(tmp_path, cache_dir, opens):
    models = [_random_file(tmp_path / f"m{i}.ckpt", 5000, seed=i) for i in range(4)]
    one, two = HashCache(cache_dir), HashCache(cache_dir)  # loaded before either wrote
    one.sha256(models[0])
    two.sha256(models[1])   # must merge with one's entry, not overwrite it
    one.addnet_hash(_lora(tmp_path / "l.safetensors"))
    two.sha256(models[2])
    files = json.loads((cache_dir / "hashes.json").read_text())["files"]
    assert {str(m) for m in models[:3]} | {str(tmp_path / "l.safetensors")} == set(files)
    assert sorted(os.listdir(cache_dir)) == ["hashes.json", "hashes.json.lock"]
    fresh = HashCache(cache_dir)
    for m in models[:3]:
        assert fresh.sha256(m) == _sha(m.read_bytes())
    assert [opens.count(str(m)) for m in models] == [1, 1, 1, 0]


def test_concurrent_processes_share_one_cache(tmp_path, cache_dir):
    models = [_random_file(tmp_path / f"m{i}.ckpt", 20_000, seed=i) for i in range(12)]
    script = textwrap.dedent("""
        import sys
        from opensd.library.hashes import HashCache
        cache = HashCache(sys.argv[1])
        for path in sys.argv[2:]:
            cache.sha256(path)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, str(cache_dir), *map(str, models[i::3])])
             for i in range(3)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0, 0]
    files = json.loads((cache_dir / "hashes.json").read_text())["files"]
    assert {k: v["sha256"] for k, v in files.items()} == {str(m): _sha(m.read_bytes()) for m in models}


def test_cache_is_bounded(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr(hashes, "MAX_CACHE_ENTRIES", 3)
    cache = HashCache(cache_dir)
    models = [_random_file(tmp_path / f"m{i}.ckpt", 100, seed=i) for i in range(5)]
    for m in models:
        cache.sha256(m)
    files = json.loads((cache_dir / "hashes.json").read_text())["files"]
    assert list(files) == [str(m) for m in models[2:]]


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.delenv("OPENSD_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if sys.platform.startswith("linux"):
        assert hashes.default_cache_dir() == tmp_path / "xdg" / "opensd"
        assert hashes.default_cache().path == tmp_path / "xdg" / "opensd" / "hashes.json"
    monkeypatch.setenv("OPENSD_CACHE_DIR", str(tmp_path / "mine"))
    assert hashes.default_cache().path == tmp_path / "mine" / "hashes.json"
