"""opensd.atomic: whole-file replacement that readers, crashes and concurrent writers cannot tear."""
from __future__ import annotations

import ast
import os
import stat
from pathlib import Path

import pytest
import torch

import opensd
from opensd.atomic import atomic_write, write_atomic
from opensd.training.trainer import STATE, TrainConfig, Trainer


def test_write_replaces_whole_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "a.json"
    write_atomic(path, "old")
    assert write_atomic(path, "nouveau é") == path
    assert path.read_text(encoding="utf-8") == "nouveau é"
    assert os.listdir(tmp_path) == ["a.json"]


def test_failure_inside_keeps_the_old_file_and_removes_the_temp(tmp_path):
    path = tmp_path / "state.pt"
    write_atomic(path, b"previous")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_write(path) as f:
            f.write(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"previous"
    assert os.listdir(tmp_path) == ["state.pt"]


def test_concurrent_writers_each_get_their_own_temp_file(tmp_path):
    # Two writers of one target, interleaved: with a shared temp name (the old `x.tmp`) the second
    # would truncate the first's half-written data, or rename it away before the first finished.
    path = tmp_path / "options.json"
    with atomic_write(path) as first:
        first.write(b"first ")
        with atomic_write(path) as second:
            second.write(b"second")
        assert path.read_bytes() == b"second"
        first.write(b"writer")
    assert path.read_bytes() == b"first writer"
    assert os.listdir(tmp_path) == ["options.json"]


def test_permissions_are_the_old_files_or_umask_default_not_mkstemps_0600(tmp_path):
    fresh = write_atomic(tmp_path / "new.png", b"x")
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask
    kept = write_atomic(tmp_path / "kept.json", b"1")
    kept.chmod(0o640)
    write_atomic(kept, b"2")
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640


def test_data_is_synced_before_the_rename(tmp_path, monkeypatch):
    """The file's blocks reach the disk before its new name does (else a power cut can leave the
    name on an empty file); the folder is synced after, so the rename itself is durable."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append("fsync-dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync-file")
        real_fsync(fd)

    def replace(src, dst):
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(tmp_path / "x.safetensors", b"data")
    assert events == ["fsync-file", "replace", "fsync-dir"]


def test_trainer_state_survives_a_failed_save(tmp_path):
    """A real caller: a checkpoint save that dies half-way keeps the previous state.pt, no litter."""
    model = torch.nn.Linear(2, 2)
    trainer = Trainer(model, lambda start: iter(()), lambda m, b, step: m(b).sum(), TrainConfig(steps=1), tmp_path)
    trainer.save()
    before = (tmp_path / STATE).read_bytes()
    trainer.losses.append(lambda: None)  # torch.save cannot pickle a lambda: it fails mid-write
    with pytest.raises(Exception, match="lambda"):
        trainer.save()
    assert (tmp_path / STATE).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == [STATE]


def test_no_module_hand_writes_a_temp_file_and_renames_it():
    """One helper for atomic writes: no other module of opensd calls os.replace or renames a temp
    path itself (moving an existing file, e.g. a user's upload or a finished download, is not a write)."""
    moves = {("server/comfy_userdata.py", "source"), ("training/emoji_npm.py", "tgzs"),
             ("training/emoji_data.py", "tmp"), ("library/convert.py", "out"),  # convert: a whole folder
             ("library/model_manager.py", "part"),  # a finished, hash-checked download
             ("distributed/shipping.py", "tmp")}  # a hard link of a stored blob put under its name
    root = Path(opensd.__file__).parent
    found = []
    for file in sorted(root.rglob("*.py")):
        rel = file.relative_to(root).as_posix()
        if rel == "atomic.py":
            continue
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            f = node.func
            os_replace = f.attr == "replace" and isinstance(f.value, ast.Name) and f.value.id == "os"
            tmp_rename = f.attr in ("replace", "rename") and "tmp" in ast.unparse(f.value).lower()
            if f.attr == "mkstemp" or os_replace or tmp_rename:
                first = ast.unparse(node.args[0]) if node.args else ""
                if not any(rel == m and first.startswith(arg) for m, arg in moves):
                    found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert found == []


def test_a_failing_check_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "m.bin"
    target.write_bytes(b"old")
    seen = []

    def check(tmp):
        seen.append(tmp.read_bytes())
        raise ValueError("not acceptable")

    with pytest.raises(ValueError):
        with atomic_write(target, check=check) as f:
            f.write(b"new")
    assert seen == [b"new"] and target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_exclusive_writes_never_replace_a_file(tmp_path):
    target = tmp_path / "m.bin"
    with atomic_write(target, exclusive=True) as f:
        f.write(b"first")
    with pytest.raises(FileExistsError):
        with atomic_write(target, exclusive=True) as f:
            f.write(b"second")
    assert target.read_bytes() == b"first" and sorted(tmp_path.iterdir()) == [target]
