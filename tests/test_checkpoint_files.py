"""Reading weight files safely: good files in every format, and a zoo of bad ones.

Every file is built in tmp_path; nothing is downloaded.
"""
from __future__ import annotations

import builtins
import json
import os
import pickle
import struct
import sys
import types

import pytest
import torch

from opensd.checkpoints import files as F
from opensd.checkpoints import safe_pickle as SP
from opensd.checkpoints.files import (
    read_metadata,
    read_safetensors_header,
    read_state_dict,
    save_safetensors,
    sniff_format,
)
from opensd.errors import CheckpointError, InvalidArgument


# ----------------------------------------------------------------------------- helpers


def st_bytes(header, data: bytes = b"", header_len: int | None = None) -> bytes:
    """A safetensors file assembled by hand: header may be a dict or raw bytes."""
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    n = len(raw) if header_len is None else header_len
    return struct.pack("<Q", n) + raw + data


def write(path, content: bytes):
    path.write_bytes(content)
    return path


def good_header():
    # two F32 tensors: a (2,) at [0,8), b (1,) at [8,12)
    return {
        "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]},
    }


def assert_error(path, func, *fragments):
    with pytest.raises(CheckpointError) as info:
        func(path)
    msg = str(info.value)
    assert str(path) in msg, msg
    for frag in fragments:
        assert frag in msg, f"{frag!r} not in {msg!r}"
    # plain words, no library internals leaking out
    assert "Traceback" not in msg and "weights_only` set to `False" not in msg
    return msg


def same(a: dict, b: dict):
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert torch.equal(a[k], b[k]), k


# ----------------------------------------------------------------------------- sniffing


def test_sniff_decides_by_content_not_extension(tmp_path):
    t = {"w": torch.arange(4.0)}
    save_safetensors(t, tmp_path / "st.ckpt")
    torch.save(t, tmp_path / "zip.safetensors")
    torch.save(t, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)
    assert sniff_format(tmp_path / "st.ckpt") == "safetensors"
    assert sniff_format(tmp_path / "zip.safetensors") == "torch-zip"
    assert sniff_format(tmp_path / "legacy.bin") == "torch-legacy"


def test_safetensors_whose_length_byte_looks_like_pickle_or_zip(tmp_path):
    # header length whose first byte is 0x80 (pickle protocol marker) must still be safetensors
    hdr = json.dumps(good_header()).encode()
    hdr += b" " * (0x180 - len(hdr))
    p = write(tmp_path / "x.bin", st_bytes(hdr, struct.pack("<3f", 1, 2, 3)))
    assert p.read_bytes()[0] == 0x80
    assert sniff_format(p) == "safetensors"
    assert read_state_dict(p)["b"].tolist() == [3.0]


@pytest.mark.parametrize(
    "content, fragment",
    [
        (os.urandom(4096).replace(b"{", b"x").replace(b"\x80", b"x").replace(b"PK", b"xx"), "not a weight file we can read"),
        (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n", "Git LFS pointer"),
        (b"<!DOCTYPE html><html><body>rate limited</body></html>", "HTML"),
        (b"abc", "not a weight file we can read"),
    ],
)
def test_unknown_content_is_refused(tmp_path, content, fragment):
    p = write(tmp_path / "model.safetensors", content)
    assert_error(p, sniff_format, fragment)
    assert_error(p, read_state_dict, fragment)


def test_empty_file(tmp_path):
    p = write(tmp_path / "empty.ckpt", b"")
    for fn in (sniff_format, read_state_dict, read_metadata, read_safetensors_header):
        assert_error(p, fn, "file is empty")


def test_missing_file(tmp_path):
    p = tmp_path / "nope.safetensors"
    for fn in (sniff_format, read_state_dict, read_metadata, read_safetensors_header):
        assert_error(p, fn, "does not exist")


def test_directory(tmp_path):
    d = tmp_path / "model.safetensors"
    d.mkdir()
    for fn in (sniff_format, read_state_dict, read_metadata, read_safetensors_header):
        assert_error(d, fn, "is a folder")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.ones(1)}, p)
    p.chmod(0)
    try:
        assert_error(p, read_state_dict, "permission denied")
    finally:
        p.chmod(0o644)


def test_permission_error_is_reported(tmp_path, monkeypatch):
    # the same path as above, for runs as root (where chmod 0 does not stop reads)
    p = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.ones(1)}, p)

    def denied(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(F, "open", denied, raising=False)
    assert_error(p, read_state_dict, "permission denied")


# ----------------------------------------------------------------------------- safetensors: good


def test_round_trip_dtypes_and_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    sd = {
        "fp32": torch.randn(3, 5, generator=g),
        "fp16": torch.randn(7, generator=g).half(),
        "bf16": torch.randn(2, 3, 4, generator=g).bfloat16(),
        "i64": torch.arange(5),
        "u8": torch.arange(3, dtype=torch.uint8),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=g).t(),  # non-contiguous in, contiguous on disk
    }
    meta = {"format": "pt", "note": "ünïcode ✓", "modelspec.title": "x"}
    p = tmp_path / "m.safetensors"
    save_safetensors(sd, p, metadata=meta)

    loaded = read_state_dict(p)
    same(loaded, {k: v.contiguous() for k, v in sd.items()})
    assert read_metadata(p) == meta
    entries, md = read_safetensors_header(p)
    assert md == meta
    assert entries["bf16"]["dtype"] == "BF16" and entries["bf16"]["shape"] == (2, 3, 4)
    assert entries["fp16"]["dtype"] == "F16" and entries["fp32"]["dtype"] == "F32"
    # every tensor starts on a multiple of its item size, and the data start is 8-aligned
    (n,) = struct.unpack("<Q", p.read_bytes()[:8])
    assert (8 + n) % 8 == 0
    for name, e in entries.items():
        assert e["data_offsets"][0] % sd[name].element_size() == 0, name
    # the reference library agrees with what we wrote
    from safetensors.torch import load_file

    same(load_file(str(p)), loaded)


def test_reads_files_written_by_the_safetensors_library(tmp_path):
    from safetensors.torch import save_file

    sd = {"x": torch.randn(4, 4).half(), "y": torch.randn(3).bfloat16()}
    p = tmp_path / "lib.safetensors"
    save_file(sd, str(p), metadata={"k": "v"})
    same(read_state_dict(p), sd)
    assert read_metadata(p) == {"k": "v"}


def test_safetensors_load_is_memory_mapped(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.zeros(1024, 1024)}, p)
    t = read_state_dict(p)["w"]
    # Memory-mapped tensors are backed by the file, so the mapping shows in /proc/self/maps.
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc")
    with open("/proc/self/maps") as fh:
        assert str(p) in fh.read()
    assert t.sum().item() == 0


def test_empty_safetensors_has_no_tensors(tmp_path):
    p = write(tmp_path / "e.safetensors", st_bytes({"__metadata__": {"a": "b"}}))
    assert read_safetensors_header(p) == ({}, {"a": "b"})
    assert_error(p, read_state_dict, "contains no tensors")


def test_header_with_trailing_space_padding_is_fine(tmp_path):
    raw = json.dumps(good_header()).encode() + b"      "
    p = write(tmp_path / "m.safetensors", st_bytes(raw, struct.pack("<3f", 1, 2, 3)))
    assert read_state_dict(p)["a"].tolist() == [1.0, 2.0]


# ----------------------------------------------------------------------------- safetensors: bad


def test_truncated_safetensors(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.randn(64, 64)}, p)
    full = p.read_bytes()
    write(p, full[:-1000])
    (n,) = struct.unpack("<Q", full[:8])
    have = len(full) - 1000 - 8 - n
    assert_error(p, read_state_dict, f"file is truncated: header promises {64 * 64 * 4} bytes of tensor data, file has {have}")
    assert_error(p, read_safetensors_header, "file is truncated")


def test_header_length_2_pow_60(tmp_path):
    p = write(tmp_path / "m.safetensors", st_bytes(good_header(), b"\0" * 12, header_len=2**60))
    assert_error(p, read_state_dict, str(2**60), "MiB limit")
    assert_error(p, read_safetensors_header, str(2**60))


def test_header_length_past_end_of_file(tmp_path):
    p = write(tmp_path / "m.safetensors", st_bytes(good_header(), b"", header_len=5000))
    assert_error(p, read_state_dict, "5000", "truncated or damaged")


def test_file_shorter_than_8_bytes(tmp_path):
    p = write(tmp_path / "m.safetensors", b"\x05\0\0")
    assert_error(p, read_safetensors_header, "too short")


@pytest.mark.parametrize(
    "raw, fragment",
    [
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]', "not valid JSON"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}}', "not valid JSON"),
        (b'{"a": \xff\xfe}', "not valid UTF-8"),
        (b'{"a": NaN}', "not valid JSON"),
        (b'{"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}, "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}', "appears twice"),
        (b"[1, 2]", "does not start with '{'"),
        (b"{" + b"[" * 100000 + b"]" * 100000 + b"}", "not valid JSON"),
    ],
)
def test_bad_header_json(tmp_path, raw, fragment):
    p = write(tmp_path / "m.safetensors", st_bytes(raw, b"\0" * 4))
    assert_error(p, read_safetensors_header, fragment)
    if raw.startswith(b"{"):
        assert_error(p, read_state_dict, fragment)


def _entry(dtype="F32", shape=(1,), offsets=(0, 4)):
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


@pytest.mark.parametrize(
    "header, data_len, fragment",
    [
        ({"a": _entry(dtype="F17")}, 4, "unknown dtype 'F17'"),
        ({"a": _entry(dtype=5)}, 4, "unknown dtype"),
        ({"a": _entry(shape=(-1,))}, 4, "bad shape"),
        ({"a": {"dtype": "F32", "shape": [1.0], "data_offsets": [0, 4]}}, 4, "bad shape"),
        ({"a": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, 4, "bad shape"),
        ({"a": {"dtype": "F32", "shape": "1", "data_offsets": [0, 4]}}, 4, "bad shape"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}}, 4, "bad data_offsets"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}}, 4, "bad data_offsets"),
        ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}}, 4, "bad data_offsets"),
        ({"a": {"dtype": "F32", "shape": [1]}}, 4, "no 'data_offsets'"),
        ({"a": [1, 2]}, 4, "not a JSON object"),
        ({"a": _entry(shape=(2,), offsets=(0, 4))}, 4, "needs 8 bytes but data_offsets [0, 4] span 4"),
        # overlapping: b starts inside a
        ({"a": _entry(shape=(2,), offsets=(0, 8)), "b": _entry(offsets=(4, 8))}, 8, "overlap"),
        # a hole between a and b
        ({"a": _entry(offsets=(0, 4)), "b": _entry(offsets=(8, 12))}, 12, "belong to no tensor"),
        # a tensor beyond the data region (not a clean truncation: there is also a gap)
        ({"a": _entry(offsets=(0, 4)), "b": _entry(offsets=(400, 404))}, 8, "outside the data region"),
        # bytes after the last tensor
        ({"a": _entry(offsets=(0, 4))}, 12, "extra bytes after the last tensor"),
        ({"__metadata__": {"k": 1}, "a": _entry()}, 4, "__metadata__ entry 'k' is not a string"),
        ({"__metadata__": ["x"], "a": _entry()}, 4, "__metadata__ is not a JSON object"),
    ],
)
def test_bad_header_entries(tmp_path, header, data_len, fragment):
    p = write(tmp_path / "m.safetensors", st_bytes(header, b"\0" * data_len))
    assert_error(p, read_safetensors_header, fragment)
    assert_error(p, read_state_dict, fragment)
    assert_error(p, read_metadata, fragment)


def test_valid_edge_offsets_are_accepted(tmp_path):
    # zero-size tensors may share an offset; entries may be listed out of order
    header = {"z": _entry(shape=(0, 3), offsets=(4, 4)), "b": _entry(offsets=(4, 8)), "a": _entry(offsets=(0, 4))}
    p = write(tmp_path / "m.safetensors", st_bytes(header, struct.pack("<2f", 1, 2)))
    sd = read_state_dict(p)
    assert sd["a"].tolist() == [1.0] and sd["b"].tolist() == [2.0] and sd["z"].shape == (0, 3)


def test_read_safetensors_header_on_torch_file(tmp_path):
    p = tmp_path / "m.safetensors"
    torch.save({"w": torch.ones(1)}, p)
    assert_error(p, read_safetensors_header, "not a safetensors file", "PyTorch zip")


def test_library_errors_are_wrapped(tmp_path, monkeypatch):
    import safetensors.torch

    p = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.ones(2)}, p)

    def boom(*a, **k):
        raise safetensors.SafetensorError("Error while deserializing header: MetadataIncompleteBuffer")

    monkeypatch.setattr(safetensors.torch, "load_file", boom)
    assert_error(p, read_state_dict, "safetensors library could not read it", "MetadataIncompleteBuffer")


def test_bad_device_is_invalid_argument(tmp_path):
    p = tmp_path / "m.safetensors"
    save_safetensors({"w": torch.ones(2)}, p)
    with pytest.raises(InvalidArgument, match="device"):
        read_state_dict(p, device="warp-drive")


# ----------------------------------------------------------------------------- torch pickles: good


@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", ["m.ckpt", "m.pt", "m.bin", "m"])
def test_torch_files_read_by_content(tmp_path, zipfmt, name):
    sd = {"w": torch.randn(3, 3), "h": torch.randn(2).half(), "b": torch.randn(2).bfloat16()}
    p = tmp_path / name
    torch.save(sd, p, _use_new_zipfile_serialization=zipfmt)
    assert sniff_format(p) == ("torch-zip" if zipfmt else "torch-legacy")
    same(read_state_dict(p), sd)
    assert read_metadata(p) == {}


def test_torch_zip_is_memory_mapped(tmp_path):
    p = tmp_path / "m.ckpt"
    torch.save({"w": torch.zeros(1024, 1024)}, p)
    read = read_state_dict(p)
    if not os.path.exists("/proc/self/maps"):
        pytest.skip("needs /proc")
    with open("/proc/self/maps") as fh:
        assert str(p) in fh.read()
    assert read["w"].sum().item() == 0


def test_ldm_state_dict_nesting(tmp_path):
    sd = {"model.diffusion_model.x.weight": torch.randn(2, 2), "first_stage_model.y": torch.randn(3)}
    ck = {
        "epoch": 6,
        "global_step": 470000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        "optimizer_states": [{"state": {0: {"exp_avg": torch.zeros(2)}}}],
        "lr_schedulers": [],
    }
    p = tmp_path / "sd.ckpt"
    torch.save(ck, p)
    same(read_state_dict(p), sd)


@pytest.mark.parametrize("key", ["model", "module"])
def test_model_and_module_wrappers(tmp_path, key):
    sd = {"a.weight": torch.randn(2), "b.bias": torch.randn(1)}
    p = tmp_path / "w.pth"
    torch.save({key: sd, "epoch": 1, "args": {"lr": 0.1}}, p)
    same(read_state_dict(p), sd)


def test_double_wrapper(tmp_path):
    sd = {"a": torch.randn(2)}
    p = tmp_path / "w.pth"
    torch.save({"state_dict": {"model": sd}}, p)
    same(read_state_dict(p), sd)


def test_non_tensor_entries_dropped_tensors_kept(tmp_path):
    p = tmp_path / "w.pt"
    params = torch.nn.Linear(2, 3).state_dict(keep_vars=True)  # nn.Parameter values
    obj = {
        **params,
        "step": 12,
        "name": "x",
        "string_to_param": {"*": torch.randn(1, 768)},  # textual-inversion layout
        "layers": {0: {"w": torch.ones(1)}},
    }
    torch.save(obj, p)
    out = read_state_dict(p)
    assert set(out) == {"weight", "bias", "string_to_param.*", "layers.0.w"}
    assert type(out["weight"]) is torch.Tensor
    assert torch.equal(out["weight"], params["weight"].detach())


@pytest.mark.parametrize(
    "obj, fragment",
    [
        ({"epoch": 1, "global_step": 2}, "contains no tensors"),
        ({"state_dict": {}}, "contains no tensors"),
        ({"w": torch.ones(1), "state_dict": {"v": torch.ones(1)}}, "both at the top level"),
        ({"blocks": [torch.ones(1), torch.ones(2)]}, "inside a list"),
        ([torch.ones(1)], "holds a list"),
        (torch.ones(3), "single bare tensor"),
        ({"a": {"b": torch.ones(1)}, "a.b": torch.ones(1)}, "same name 'a.b'"),
        ({("a", 1): torch.ones(1)}, "non-text key"),
    ],
)
def test_unusable_pickle_layouts(tmp_path, obj, fragment):
    p = tmp_path / "x.pt"
    torch.save(obj, p)
    assert_error(p, read_state_dict, fragment)


def test_plain_pickle_renamed_bin(tmp_path):
    p = write(tmp_path / "m.bin", pickle.dumps({"hello": [1, 2, 3]}, protocol=2))
    assert sniff_format(p) == "torch-legacy"
    assert_error(p, read_state_dict, "not a PyTorch checkpoint")


def test_torch_pickle_of_non_weights(tmp_path):
    p = tmp_path / "m.bin"
    torch.save({"epoch": 3, "notes": "no weights here"}, p)
    assert_error(p, read_state_dict, "contains no tensors")


@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_truncated_torch_files(tmp_path, zipfmt):
    p = tmp_path / "m.ckpt"
    torch.save({"w": torch.randn(256, 256)}, p, _use_new_zipfile_serialization=zipfmt)
    data = p.read_bytes()
    write(p, data[: len(data) // 2])
    with pytest.raises(CheckpointError) as info:
        read_state_dict(p)
    assert str(p) in str(info.value)
    assert any(w in str(info.value) for w in ("damaged", "truncated")), str(info.value)


# ----------------------------------------------------------------------------- torch pickles: hostile


class _SystemPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _ExecPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def test_exec_payload_is_live(tmp_path):
    """Control: the payload used below really runs code under an unrestricted unpickler."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps({"x": _ExecPayload(marker)}, protocol=2))
    assert marker.exists()


@pytest.mark.parametrize("payload, offender", [(_SystemPayload, "system"), (_ExecPayload, "exec")])
@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_code_running_pickle_is_refused(tmp_path, payload, offender, zipfmt):
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "x": payload(marker)}, p, _use_new_zipfile_serialization=zipfmt)
    msg = assert_error(p, read_state_dict, "refusing to load", offender, "refuse to run code from pickles")
    assert not marker.exists()
    assert "weights_only" not in msg


def test_bare_malicious_pickle(tmp_path):
    marker = tmp_path / "PWNED"
    p = write(tmp_path / "m.bin", pickle.dumps(_ExecPayload(marker), protocol=2))
    assert_error(p, read_state_dict, "refusing to load", "exec")
    assert not marker.exists()


def test_unknown_class_is_refused(tmp_path):
    p = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "cfg": types.SimpleNamespace(a=1)}, p)
    assert_error(p, read_state_dict, "refusing to load", "types.SimpleNamespace")


# --- pytorch_lightning stand-ins


_PL_MODULES = ("pytorch_lightning", "pytorch_lightning.callbacks", "pytorch_lightning.callbacks.model_checkpoint",
               "pytorch_lightning.core", "pytorch_lightning.core.module")


@pytest.fixture
def fake_lightning(monkeypatch):
    """Fake pytorch_lightning classes that exist only while a checkpoint is being *saved*."""
    mods = {name: types.ModuleType(name) for name in _PL_MODULES}
    for name, mod in mods.items():
        monkeypatch.setitem(sys.modules, name, mod)

    class ModelCheckpoint:
        def __init__(self, cmd=None):
            self.best_model_path = "/logs/last.ckpt"
            self.best_model_score = torch.tensor(0.12)
            self.cmd = cmd

    class LightningModule:
        pass

    for cls, module in ((ModelCheckpoint, "pytorch_lightning.callbacks.model_checkpoint"),
                        (LightningModule, "pytorch_lightning.core.module")):
        cls.__module__, cls.__qualname__ = module, cls.__name__
    mods["pytorch_lightning.callbacks.model_checkpoint"].ModelCheckpoint = ModelCheckpoint
    mods["pytorch_lightning.core.module"].LightningModule = LightningModule
    yield types.SimpleNamespace(ModelCheckpoint=ModelCheckpoint, LightningModule=LightningModule)


def _remove_fake_lightning():
    for name in _PL_MODULES:
        sys.modules.pop(name, None)


def _lightning_ckpt(pl, sd):
    return {
        "epoch": 5,
        "global_step": 840000,
        "pytorch-lightning_version": "1.4.2",
        "state_dict": sd,
        # old Lightning keyed callback state by the class itself; newer versions pickle instances
        "callbacks": {pl.ModelCheckpoint: {"monitor": None, "best_model_score": None}, "inst": pl.ModelCheckpoint()},
    }


@pytest.mark.parametrize("tuple_form", [True, False], ids=["tuple-safe-globals", "named-stand-ins"])
@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_lightning_checkpoint_loads(tmp_path, fake_lightning, monkeypatch, zipfmt, tuple_form):
    sd = {"model.diffusion_model.w": torch.randn(4, 4), "cond_stage_model.t": torch.randn(2).half()}
    p = tmp_path / "sd-v1-4.ckpt"
    torch.save(_lightning_ckpt(fake_lightning, sd), p, _use_new_zipfile_serialization=zipfmt)
    _remove_fake_lightning()
    monkeypatch.setattr(SP, "_TUPLE_SAFE_GLOBALS", tuple_form)
    assert "pytorch_lightning" not in sys.modules
    with pytest.raises(ImportError):
        __import__("pytorch_lightning")

    with pytest.raises(pickle.UnpicklingError):  # plain weights_only rejects it: the stand-ins matter
        torch.load(p, weights_only=True)
    # Taken after torch's first load, which may register its own (distributed) safe globals.
    before = set(torch.serialization.get_safe_globals())  # a set inside torch: order means nothing
    same(read_state_dict(p), sd)
    assert set(torch.serialization.get_safe_globals()) == before  # nothing left allow-listed


def test_lightning_stand_in_is_inert(tmp_path, fake_lightning):
    marker = tmp_path / "PWNED"
    sd = {"w": torch.ones(2)}
    p = tmp_path / "m.ckpt"
    class Call:  # pickles as REDUCE(ModelCheckpoint, (payload,)): a *call* of the allow-listed name
        def __reduce__(self):
            return (fake_lightning.ModelCheckpoint, (f"touch {marker}",))

    # ...and an instance whose pickled state (BUILD) carries the payload: both are ignored.
    torch.save({"state_dict": sd, "cb": Call(), "inst": fake_lightning.ModelCheckpoint(cmd=f"touch {marker}")}, p)
    import zipfile

    with zipfile.ZipFile(p) as z:  # sanity: the payload really is in the pickle
        data_pkl = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert data_pkl.count(f"touch {marker}".encode()) == 2 and b"ModelCheckpoint" in data_pkl
    _remove_fake_lightning()
    same(read_state_dict(p), sd)
    assert not marker.exists()
    inert = SP._INERT_CLASSES["pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"]
    obj = inert("rm -rf /", shell=True)
    obj.__setstate__({"__class__": "x"})
    assert type(obj) is inert and not hasattr(obj, "__dict__")


def test_other_lightning_classes_are_refused(tmp_path, fake_lightning):
    p = tmp_path / "m.ckpt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "module": fake_lightning.LightningModule()}, p)
    _remove_fake_lightning()
    assert_error(p, read_state_dict, "refusing to load", "pytorch_lightning.core.module.LightningModule")


def test_never_falls_back_to_unsafe_load(tmp_path, monkeypatch):
    calls = []
    real = torch.load

    def spy(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", spy)
    marker = tmp_path / "PWNED"
    p = tmp_path / "evil.pt"
    torch.save({"x": _ExecPayload(marker)}, p)
    with pytest.raises(CheckpointError):
        read_state_dict(p)
    ok = tmp_path / "ok.pt"
    torch.save({"w": torch.ones(1)}, ok)
    read_state_dict(ok)
    assert calls and all(c is True for c in calls)
    assert not marker.exists()


# ----------------------------------------------------------------------------- saving


def _leftovers(folder, keep):
    return sorted(n for n in os.listdir(folder) if n not in keep)


def test_save_leaves_no_temp_files(tmp_path):
    p = tmp_path / "out.safetensors"
    save_safetensors({"w": torch.ones(3)}, p)
    save_safetensors({"w": torch.zeros(3)}, p)  # overwrite
    assert _leftovers(tmp_path, {"out.safetensors"}) == []
    assert read_state_dict(p)["w"].tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("existing", [True, False], ids=["overwrite", "fresh"])
def test_failed_save_never_leaves_half_written_target(tmp_path, monkeypatch, existing):
    p = tmp_path / "out.safetensors"
    if existing:
        save_safetensors({"old": torch.ones(8)}, p)
    before = p.read_bytes() if existing else None
    real = F._write_tensor_data
    count = {"n": 0}

    def failing(f, t):
        count["n"] += 1
        if count["n"] == 2:
            f.write(b"\x01" * 7)  # partly written...
            raise OSError(28, "No space left on device")
        real(f, t)

    monkeypatch.setattr(F, "_write_tensor_data", failing)
    with pytest.raises(CheckpointError, match="No space left on device"):
        save_safetensors({"a": torch.randn(100), "b": torch.randn(100), "c": torch.randn(100)}, p)
    assert count["n"] == 2
    if existing:
        assert p.read_bytes() == before
        assert list(read_state_dict(p)) == ["old"]
    else:
        assert not p.exists()
    assert _leftovers(tmp_path, {"out.safetensors"}) == []


def test_interrupted_save_is_cleaned_up(tmp_path, monkeypatch):
    p = tmp_path / "out.safetensors"

    def interrupted(f, t):
        raise KeyboardInterrupt

    monkeypatch.setattr(F, "_write_tensor_data", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_safetensors({"a": torch.randn(10)}, p)
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "sd, meta, fragment",
    [
        ({"a": [1.0, 2.0]}, None, "not a tensor"),
        ({1: torch.ones(1)}, None, "is not text"),
        ({"__metadata__": torch.ones(1)}, None, "reserved"),
        ({"a": torch.ones(1)}, {"k": 1}, "metadata must map text"),
        ({"a": torch.ones(2).to_sparse()}, None, "not a dense tensor"),
        ([torch.ones(1)], None, "expected a dict"),
    ],
)
def test_save_rejects_bad_input_and_writes_nothing(tmp_path, sd, meta, fragment):
    p = tmp_path / "out.safetensors"
    with pytest.raises(CheckpointError, match=fragment):
        save_safetensors(sd, p, metadata=meta)
    assert os.listdir(tmp_path) == []


def test_save_into_missing_folder(tmp_path):
    p = tmp_path / "no" / "such" / "out.safetensors"
    with pytest.raises(CheckpointError, match="does not exist"):
        save_safetensors({"a": torch.ones(1)}, p)


def test_save_handles_shared_and_viewed_tensors(tmp_path):
    base = torch.arange(12.0).reshape(3, 4)
    sd = {"tied.a": base, "tied.b": base, "row": base[1], "col": base[:, 2]}
    p = tmp_path / "out.safetensors"
    save_safetensors(sd, p)
    same(read_state_dict(p), {k: v.contiguous() for k, v in sd.items()})
