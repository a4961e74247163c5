"""textvae.files.write_safetensors: the one atomic, durable safetensors writer (checkpoints, model
weights, the IW pass's progress)."""
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from textvae.files import partial_file, write_safetensors, write_text_whole, write_whole


def test_writes_and_replaces_with_a_new_files_mode(tmp_path):
    path = tmp_path / "x.safetensors"
    old = os.umask(0o027)
    try:
        write_safetensors(path, {"a": torch.arange(3.0)}, {"k": "1"})
        write_safetensors(path, {"a": torch.arange(4.0)}, {"k": "2"})
    finally:
        os.umask(old)
    assert torch.equal(load_file(str(path))["a"], torch.arange(4.0))
    assert path.stat().st_mode & 0o777 == 0o640  # safetensors alone would leave 0600
    assert not partial_file(path).exists()


@pytest.mark.parametrize("where", ["serialising", "renaming"])
def test_a_failed_write_keeps_the_previous_file_and_leaves_no_partial_one(tmp_path, monkeypatch, where):
    import safetensors.torch

    path = tmp_path / "x.safetensors"
    write_safetensors(path, {"a": torch.ones(2)}, {})
    before = path.read_bytes()

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\0" * 10)
        raise OSError(28, "No space left on device")

    if where == "serialising":
        monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    else:
        monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(18, "Invalid cross-device link")))
    with pytest.raises(OSError):
        write_safetensors(path, {"a": torch.zeros(2)}, {})
    assert path.read_bytes() == before
    assert not partial_file(path).exists()


def test_a_file_written_whole_survives_a_stop_part_way(tmp_path):
    """A study's report, tables, plots and archive: Ctrl-C while one is written leaves the previous one whole."""
    path = tmp_path / "report.md"
    write_text_whole(path, "first\n")

    def stopped(tmp):
        tmp.write_text("half of the")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_whole(path, stopped)
    assert path.read_text() == "first\n" and not partial_file(path).exists()
    write_text_whole(path, "second\n")
    assert path.read_text() == "second\n" and sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_one_lock_for_a_run_folder_whatever_its_path(tmp_path):
    """A run folder reached through a symlink is the same folder: a second process is refused it."""
    import subprocess
    import sys

    from textvae.files import run_folder_lock

    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    other = ("import sys; from pathlib import Path; from textvae.files import run_folder_lock\n"
             "try:\n    with run_folder_lock(Path(sys.argv[1])): print('got it')\n"
             "except Exception as e: print(e)")
    with run_folder_lock(tmp_path / "real" / "x"):
        out = subprocess.run([sys.executable, "-c", other, str(tmp_path / "alias" / "x")],
                             capture_output=True, text=True, timeout=120).stdout
    assert "is being written by another process" in out


def test_a_lock_names_its_holder_and_machine(tmp_path):
    """The lock file says who holds it: a pid of this machine as it is, another machine's with its host
    (a run folder on a shared file system), whose pid is not looked up here."""
    import os
    import socket

    from textvae.files import _holder, _lock_path, lock_holder, run_folder_lock

    run = tmp_path / "x"
    with run_folder_lock(run):
        assert _lock_path(run).read_text() == f"{os.getpid()} {socket.gethostname()}\n"
    fd = os.open(_lock_path(run), os.O_RDWR)
    try:
        assert _holder(fd) == str(os.getpid())
        os.pwrite(fd, b"999999999 elsewhere\n", 0)
        assert _holder(fd) == "999999999 on elsewhere"
    finally:
        os.close(fd)
    assert lock_holder(run) is None  # no process holds it: the probe, not the pid, says so


def test_a_run_without_tensorboard_says_so(tmp_path, monkeypatch, caplog):
    """train.tensorboard on (the default) without the tb extra: the log says where the figures go instead."""
    import logging
    import sys

    from textvae.training.logger import RunLogger

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if not installed
    with caplog.at_level(logging.INFO, logger="textvae"):
        assert RunLogger(tmp_path, tensorboard=True).tb is None
        RunLogger(tmp_path, tensorboard=False)
    assert caplog.text.count("tensorboard is not installed (pip install 'textvae[tb]')") == 1
