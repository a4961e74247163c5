"""How a run folder is written: one file-permission policy, and one writer at a time.

Permissions: every file a run writes gets the mode a new file gets from the process's umask
(0644 under the usual 022), checkpoints and model weights included. safetensors creates its files
0600; left so, a run folder's weights would be private while its configuration, log and tokenizer
are not, which protects nothing and surprises whoever shares the run. A user who wants a private
run sets the umask (``umask 077``), and every file follows it.

One writer: :func:`run_folder_lock` keeps a second process (a study started twice, ``textvae train``
on a folder a study is training) out of a run folder instead of letting two trainings interleave
their checkpoints and logs, or a study clear a folder whose run has just started.

Where runs are: :func:`run_folders` finds the run folders a command is given (a study's variant folder
stands for its seeds).
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from textvae.errors import TextVAEError

try:
    import fcntl
except ImportError:  # Windows: no flock; run folders are then not guarded
    fcntl = None  # type: ignore[assignment]


def file_md5(path: Path) -> str:
    """The md5 of a file's bytes, read in blocks (a corpus file, a model's weights)."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def umask_mode() -> int:
    """``0o666 & ~umask``: the mode ``open()`` gives a new file in this process."""
    mask = os.umask(0)  # reading the umask means setting it; put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def replace_as_new_file(tmp: Path, path: Path) -> None:
    """Give ``tmp`` the mode of a newly created file, then rename it over ``path`` (atomically)."""
    os.chmod(tmp, umask_mode())
    os.replace(tmp, path)


def partial_file(path: Path) -> Path:
    """``<path>.tmp``: where :func:`write_safetensors` writes before renaming over ``path``."""
    return path.with_name(path.name + ".tmp")


def write_whole(path: Path, write: Callable[[Path], Any]) -> None:
    """``write(tmp)`` to ``<path>.tmp``, then rename it over ``path``: a process stopped part-way (a study's
    Ctrl-C while it writes its report, tables, plots and archive) leaves the previous file whole, never half
    of one that report.md links."""
    tmp = partial_file(path)
    try:
        write(tmp)
        replace_as_new_file(tmp, path)
    except BaseException:  # Ctrl-C included: nothing half-written is left beside the previous file
        tmp.unlink(missing_ok=True)
        raise


def write_text_whole(path: Path, text: str) -> None:
    """``text`` into ``path``, written whole or not at all (:func:`write_whole`)."""
    write_whole(path, lambda tmp: tmp.write_text(text))


def write_safetensors(path: Path, tensors: dict[str, Any], metadata: dict[str, str]) -> None:
    """Write ``tensors`` (contiguous CPU tensors sharing no memory) to the safetensors file ``path``
    atomically and durably: into :func:`partial_file`, flushed to disk, renamed over ``path`` with a new
    file's mode, the rename flushed too. A process killed at any moment leaves the previous file whole.
    On failure the partial file is removed and the error (an OSError, or safetensors' own type wrapping
    one: a full disk) is raised for the caller to word; the previous file is untouched."""
    from safetensors.torch import save_file

    tmp = partial_file(path)
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        replace_as_new_file(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX). Best effort: the new file is in place by now, so
    a directory that cannot be opened or flushed must not make the write read as failed."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_writable(folder: Path, what: str = "run folder", flag: str = "--out_dir", keep: bool = True) -> None:
    """Create ``folder`` and write a file in it, so an output folder on a read-only file system
    (or under a file, or without permission) fails before the data is loaded, not mid-run; the error
    names the folder as ``what`` and the option that chooses another (``flag``). ``keep=False``: the
    folders made for the test are removed again (a command that may yet refuse to start leaves nothing)."""
    folder = Path(os.path.normpath(folder.absolute()))  # "new/../out" makes no "new"
    probe = folder / ".write-test"
    made = [p for p in (folder, *folder.parents) if not p.exists()]  # deepest first
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise cannot_write(folder, e, what, flag) from None
    if not keep:
        for p in made:
            p.rmdir()


def cannot_write(folder: Path, e: OSError, what: str = "run folder", flag: str = "--out_dir") -> TextVAEError:
    return TextVAEError(f"cannot write the {what} {folder}: {e.strerror} ({e.filename}); choose another {flag}")


class FolderBusy(TextVAEError):
    """The run folder is held by another process (:func:`run_folder_lock`)."""


_held: set[Path] = set()  # the run folders this process holds


@contextlib.contextmanager
def run_folder_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir`` for this process during the block; a TextVAEError if another process
    holds it.

    The lock is an exclusive ``flock`` on ``.<name>.lock`` beside the folder, not in it, so that
    clearing the folder keeps it. The OS drops it when its process ends, however it ends: a killed
    run leaves no stale lock. Re-entrant within a process (a study holds a run's folder while it
    trains the run in the same process).
    """
    key = run_dir.resolve()
    if key in _held or fcntl is None:  # held: the outer block releases it
        yield
        return
    try:  # the folder itself is not made here: a refused --resume leaves nothing behind
        key.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(_lock_path(key), os.O_RDWR | os.O_CREAT, umask_mode())  # one lock whatever the path's spelling
    except OSError as e:
        raise cannot_write(run_dir, e) from None
    try:
        if not _take(fd):
            raise FolderBusy(f"{run_dir} is being written by another process (pid {_holder(fd)}); "
                             f"two trainings must not share a run folder")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)  # closing the last descriptor releases the flock


def _take(fd: int, tries: int = 20) -> bool:
    """The exclusive lock, tried for ~0.2 s: a ``--status`` elsewhere probes it with a moment's shared
    lock (:func:`lock_holder`), which must not make a run's start fail."""
    for attempt in range(tries):
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if attempt + 1 < tries:
                time.sleep(0.01)
    return False


def _lock_path(run_dir: Path) -> Path:
    """``.<name>.lock`` beside the run folder, not in it: clearing the folder keeps the lock."""
    return run_dir.parent / f".{run_dir.name}.lock"


def _holder(fd: int) -> str:
    """Who holds a run folder's lock, as it wrote itself there: its pid, and ``on HOST`` where that is
    another machine (a run folder on a shared file system), whose pids mean nothing here."""
    pid, _, host = os.pread(fd, 256, 0).decode(errors="replace").strip().partition(" ")
    if not pid:
        return "unknown"
    return pid if host in ("", socket.gethostname()) else f"{pid} on {host}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def lock_holder(run_dir: Path) -> Optional[str]:
    """The pid of the process holding ``run_dir`` (:func:`run_folder_lock`), or None when none does
    (this process's own hold included). Creates nothing: for reports of a study's state."""
    key = run_dir.resolve()
    path = _lock_path(key)
    if fcntl is None or key in _held or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        pid = _holder(fd)
        if pid.isdigit() and not _alive(int(pid)):  # a pid of this machine only
            return None  # its last holder is gone (and probing would hold the lock a moment)
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)  # granted only while no process holds it exclusively
        return None
    except BlockingIOError:
        return pid
    finally:
        os.close(fd)


def run_folders(folder: Path, command: str, study_outputs: Callable[[Path], str],
                marker: str = "metrics.jsonl") -> list[Path]:
    """``folder`` when it is a run folder (it has ``marker``, the file ``command`` reads), else the run folders
    it holds (a study's variant folder: its seeds); a study's own folder is an error that says where its outputs
    are, as ``study_outputs(folder)`` says (``its figures are in ...``; worked out only then)."""
    if (folder / marker).is_file():
        return [folder]
    if (folder / "results.json").is_file():
        raise TextVAEError(f"{folder} is a study's folder: {study_outputs(folder)}; {command} takes run folders, "
                           f"such as {folder}/VARIANT or {folder}/VARIANT/seed1")
    held = sorted(p.parent for p in folder.glob(f"*/{marker}")) if folder.is_dir() else []
    if not held and (folder.parent / marker).is_file():  # a run's model/ folder
        raise TextVAEError(f"{folder}: no {marker} here; {command} takes the run folder it is in, {folder.parent}")
    if not held:
        raise TextVAEError(f"{folder}: no {marker} here or in its folders; {command} takes run folders (runs/NAME)")
    return held
