"""Hostile model files, each built byte by byte here: refused with the file and the problem named,
or read safely; none runs code (payloads would create a marker file, which must never appear)."""
from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import struct
import threading
import zipfile

import pytest
import torch

from opensd.checkpoints.files import read_state_dict, save_safetensors, sniff_format
from opensd.errors import CheckpointError


class _Payload:
    """Unpickled by an unrestricted unpickler, this creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (builtins.exec, (f"open({self.marker!r}, 'w').close()",))


def _st(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def _refused(path, *fragments) -> str:
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert str(path) in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def _zip_with(members: list[tuple[str, bytes]], compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as z:
        for name, data in members:
            z.writestr(zipfile.ZipInfo(name), data, compress_type=compression)
    return buf.getvalue()


# --- polyglots -------------------------------------------------------------------------------


def _polyglot(marker) -> bytes:
    """A safetensors file whose first byte is pickle's PROTO opcode and whose tail is a zip holding
    a code-running pickle (zip tools read from the end)."""
    evil = _zip_with([("archive/data.pkl", pickle.dumps(_Payload(marker), protocol=2))])
    raw = json.dumps({"blob": {"dtype": "U8", "shape": [len(evil)], "data_offsets": [0, len(evil)]}}).encode()
    raw += b" " * ((0x180 - len(raw)) % 0x100)  # header length 0x..80: byte 0 reads as PROTO
    return struct.pack("<Q", len(raw)) + raw + evil


def test_safetensors_that_is_also_a_pickle_and_a_zip_is_read_as_safetensors(tmp_path):
    path = tmp_path / "poly.ckpt"
    path.write_bytes(_polyglot(tmp_path / "zip-tool-ran"))
    assert path.read_bytes()[0] == 0x80 and zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as z:  # control: a tool trusting the zip view runs the payload
        pickle.loads(z.read("archive/data.pkl"))
    assert (tmp_path / "zip-tool-ran").exists()

    marker = tmp_path / "we-ran-it!!!"
    path.write_bytes(_polyglot(marker))
    assert sniff_format(path) == "safetensors"
    blob = read_state_dict(path)["blob"]
    assert zipfile.is_zipfile(io.BytesIO(bytes(blob.numpy())))
    assert not marker.exists()


# --- tensor names and shapes -----------------------------------------------------------------


@pytest.mark.parametrize("name, why", [
    ("a\x00b", "control character"), ("\x1b[2Jmodel.w", "control character"), ("w\u202eexe.txt", "control character"),
    ("../../etc/passwd", "path separator"), ("a/b", "path separator"), ("a\\b", "path separator"),
    ("", "empty"), ("\ud800", "control character"), ("x" * 5000, "5000 characters"),
])
@pytest.mark.parametrize("container", ["safetensors", "torch-zip"])
def test_tensor_names_that_are_not_plain_text_are_refused(tmp_path, name, why, container):
    path = tmp_path / ("m.safetensors" if container == "safetensors" else "m.ckpt")
    if container == "safetensors":
        raw = json.dumps({name: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    else:
        torch.save({"state_dict": {"ok": torch.ones(1), name: torch.ones(1)}}, path)
    msg = _refused(path, "tensor name", why)
    assert "\x00" not in msg and "\x1b" not in msg and len(msg) < 600


@pytest.mark.parametrize("container", ["safetensors", "torch-zip"])
def test_absurd_dimensions_of_empty_tensors_are_refused(tmp_path, container):
    path = tmp_path / ("m.safetensors" if container == "safetensors" else "m.ckpt")
    if container == "safetensors":
        path.write_bytes(_st({"w": {"dtype": "F32", "shape": [0, 2**62], "data_offsets": [0, 0]},
                              "b": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))
    else:
        torch.save({"w": torch.empty(0).as_strided((0, 2**62), (1, 1)), "b": torch.ones(1)}, path)
    _refused(path, "'w'", "dimension")


# --- a safetensors name on something else ----------------------------------------------------


@pytest.mark.parametrize("zipfmt", [True, False], ids=["zip", "legacy"])
def test_pickle_named_safetensors_is_refused_not_unpickled(tmp_path, zipfmt):
    marker = tmp_path / "ran"
    path = tmp_path / "model.safetensors"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=zipfmt)
    _refused(path, "named .safetensors", "PyTorch", "pickle", "rename")
    path.write_bytes(pickle.dumps(_Payload(marker), protocol=2))
    _refused(path, "named .safetensors")
    assert not marker.exists()
    # The same bytes under an honest name are read (through the restricted unpickler).
    honest = tmp_path / "model.ckpt"
    torch.save({"w": torch.ones(2)}, honest, _use_new_zipfile_serialization=zipfmt)
    assert read_state_dict(honest)["w"].tolist() == [1.0, 1.0]


# --- zip checkpoints -------------------------------------------------------------------------


def _repacked(src, dst, compression=zipfile.ZIP_STORED, extra: list[tuple[str, bytes]] = ()):
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(zipfile.ZipInfo(info.filename), zin.read(info.filename), compress_type=compression)
        for name, data in extra:
            zout.writestr(zipfile.ZipInfo(name), data)


def test_compressed_zip_checkpoint_is_refused(tmp_path):
    """torch.save never compresses; a deflated record is a repackaged file, possibly a zip bomb
    (memory-mapped loading would otherwise read the compressed bytes as weights)."""
    src = tmp_path / "plain.ckpt"
    torch.save({"w": torch.arange(64.0)}, src)
    path = tmp_path / "deflated.ckpt"
    _repacked(src, path, zipfile.ZIP_DEFLATED)
    _refused(path, "compressed", "zip bomb")


def test_zip_record_claiming_more_than_the_file_holds_is_refused(tmp_path):
    src = tmp_path / "plain.ckpt"
    torch.save({"w": torch.ones(4)}, src)
    path = tmp_path / "big.ckpt"
    _repacked(src, path)
    data = bytearray(path.read_bytes())
    at = data.find(b"PK\x01\x02")  # walk the central directory to the data record's entry
    while not bytes(data[at + 46:at + 46 + struct.unpack_from("<H", data, at + 28)[0]]).endswith(b"data/0"):
        at = data.find(b"PK\x01\x02", at + 4)
    struct.pack_into("<II", data, at + 20, 2**31, 2**31)  # compressed and uncompressed size: 2 GiB
    path.write_bytes(bytes(data))
    _refused(path, "claims")


def test_duplicate_zip_entries_are_refused(tmp_path):
    src = tmp_path / "plain.ckpt"
    torch.save({"w": torch.ones(4)}, src)
    with zipfile.ZipFile(src) as z:
        pkl = next(n for n in z.namelist() if n.endswith("data.pkl"))
    path = tmp_path / "twice.ckpt"
    with pytest.warns(UserWarning, match="Duplicate name"):
        _repacked(src, path, extra=[(pkl, pickle.dumps({"w": 1}, protocol=2))])
    _refused(path, "twice", pkl)


def test_malicious_global_in_a_zip_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "ran"
    src = tmp_path / "plain.ckpt"
    torch.save({"w": torch.ones(4)}, src)
    path = tmp_path / "evil.ckpt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps({"w": _Payload(marker)}, protocol=2)
            zout.writestr(zipfile.ZipInfo(info.filename), data)
    _refused(path, "refusing to load", "exec")
    assert not marker.exists()


def test_legacy_pickle_claiming_a_huge_storage_is_called_damaged(tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(4)}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes()
    at = len(data) - 16 - 8  # the storage's element count, just before its 4 floats
    assert struct.unpack("<q", data[at:at + 8])[0] == 4
    path.write_bytes(data[:at] + struct.pack("<q", 2**40) + data[at + 8:])
    msg = _refused(path, "damaged")
    assert "%ld" not in msg


# --- things that are not regular files -------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_named_pipe_is_refused_without_blocking(tmp_path):
    path = tmp_path / "model.safetensors"
    os.mkfifo(path)
    result = []

    def read():
        try:
            read_state_dict(path)
        except CheckpointError as e:
            result.append(str(e))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the reader so the test run can end
        with open(path, "wb"):
            pass
        pytest.fail("reading a named pipe blocked")
    assert result and "not a regular file" in result[0]


def test_save_then_read_still_works(tmp_path):
    path = tmp_path / "ok.safetensors"
    save_safetensors({"model.w": torch.ones(2)}, path)
    assert read_state_dict(path)["model.w"].tolist() == [1.0, 1.0]
