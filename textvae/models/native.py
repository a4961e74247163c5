"""textvae's C++ kernels, compiled for this machine on first use (``train.native_kernels``).

Each kernel is one source under ``csrc/`` (with the headers there), built by
``torch.utils.cpp_extension`` with the host's C++ compiler (``-O3 -march=native``: vectorised for this
CPU) and cached in torch's extension folder (``TORCH_EXTENSIONS_DIR``, by default
~/.cache/torch_extensions). The cached library's name carries a hash of the source and headers, the
flags, torch's version and install folder, the Python environment and the CPU's feature flags, so an
edited source, another environment or a checkout moved to another CPU builds anew instead of loading
(or rebuilding over) a library made for something else; the compile happens once per machine,
environment and source, from a copy of the source kept in that folder, so that checkouts of one source
share it. Where it fails (no compiler, no headers) a warning says
why, once per process, and the caller computes the same thing with torch operations;
``TEXTVAE_NATIVE=0`` in the environment never tries.

Kernels: ``softmax_rows`` (the elementwise half of the bf16 fused loss,
:mod:`textvae.models.fused_loss`); ``sgd_bf16`` (the norm of the bf16 working copies' gradients, and the
SGD update of an fp32 master weight that also writes its bf16 working copy,
:mod:`textvae.training.working_copies`); ``dropout`` (the recurrent decoders' dropout on the CPU, fp32
or bf16, :class:`textvae.models.decoders.Dropout`); ``lstm_bf16`` (a one-layer LSTM's recurrences in bf16
training, and its bf16 scoring of many samples of z per sentence, on CPUs with AMX, :mod:`textvae.models.lstm`).
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; a build's lock is then judged by its age
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

SOURCES = Path(__file__).resolve().parent / "csrc"
KERNELS = ("softmax_rows", "sgd_bf16", "dropout", "lstm_bf16")
# -fopenmp: at::parallel_for is a header template, so its parallel region is compiled into the kernel.
# The library then needs libgomp.so.1, and the dynamic linker hands it the one torch already loaded
# (same soname): the kernel's threads are torch's intra-op pool, with its thread count and its
# floating-point mode (textvae.training.denormals).
_X86_FLAGS = ["-mprefer-vector-width=512"]  # gcc and clang otherwise keep AVX-512 CPUs at 256-bit vectors
_FLAGS = ["-O3", "-march=native", "-fopenmp"]
STALE_LOCK_S = 3600.0  # where there is no flock; a build on a loaded machine can take tens of minutes

_enabled = True
_built: dict[str, Any] = {}  # kernel name -> its module, or the reason it could not be built (str)


def _flags() -> list[str]:
    return _FLAGS + (_X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else [])


def _cpu_identity() -> str:
    """The CPU's feature flags (Linux), else the processor's name: what ``-march=native`` compiles for."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _sources(kernel: str) -> dict[str, bytes]:
    """The kernel's source and the shared headers it may include, by file name, read once: the build's name
    and its copy of them (:func:`_sources_in`) are made from the same bytes."""
    return {path.name: path.read_bytes() for path in [SOURCES / f"{kernel}.cpp", *sorted(SOURCES.glob("*.h"))]}


def _build_name(kernel: str, sources: Optional[dict[str, bytes]] = None) -> str:
    # the shared headers count too: a kernel includes them
    contents = list((sources or _sources(kernel)).values())
    # torch's install (its headers and libraries) and Python's too: two environments sharing the extension
    # folder would otherwise rebuild one folder back and forth, each build a minute unannounced
    where = f"{Path(torch.__file__).resolve().parent}\0{Path(sys.prefix).resolve()}\0{sys.version}"
    key = b"\0".join(contents + [" ".join(_flags()).encode(), torch.__version__.encode(), _cpu_identity().encode(),
                                 where.encode()])
    return f"textvae_{kernel}_{hashlib.sha256(key).hexdigest()[:16]}"


def _sources_in(folder: Path, kernel: str, sources: dict[str, bytes]) -> Path:
    """``sources`` (:func:`_sources`) written into ``folder/src`` where absent; the kernel's copy's path.

    torch's build compares its build file, which names the source's path, so two checkouts of the same
    source (a study's frozen tree and a working one) compiling from their own paths would rebuild one build
    folder back and forth, a minute or more each and unannounced (the library exists). Compiled from a copy
    in the folder that its content names (:func:`_build_name`), every checkout shares one build. A file is
    written only where absent (then atomically): a rewrite would be newer than the library, and rebuild it."""
    src = folder / "src"
    src.mkdir(exist_ok=True)
    for name, content in sources.items():
        target = src / name
        if not target.is_file():
            partial = target.with_name(f"{name}.{os.getpid()}.partial")
            partial.write_bytes(content)
            partial.replace(target)
    return src / f"{kernel}.cpp"


def _compiles(folder: Path, name: str, source: Path) -> bool:
    """Whether torch's build in ``folder`` will compile: no library yet, or a build file that names another
    source (a folder built before its source was copied there)."""
    ninja = folder / "build.ninja"
    return not (folder / f"{name}.so").is_file() or (ninja.is_file() and str(source) not in ninja.read_text())


def _ninja_on_path() -> None:
    """torch builds with the ``ninja`` it finds on PATH; the pip package (a dependency) puts one in its
    environment's scripts folder, which is not on PATH when textvae runs from a venv not activated."""
    if shutil.which("ninja") is None:
        with contextlib.suppress(ImportError):
            import ninja

            os.environ["PATH"] = ninja.BIN_DIR + os.pathsep + os.environ.get("PATH", "")


def _build_folder(name: str) -> Path:
    """Where the kernel ``name`` is compiled and cached: torch's extension folder, one folder per name."""
    from torch.utils.cpp_extension import get_default_build_root

    return Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root()) / name


def _remove_dead_lock(lock: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
        log.warning(f"removed {lock}, left by a build of textvae's kernel that did not finish")


def _clear_stale_lock(folder: Path) -> None:
    """Where there is no ``flock`` (:func:`_build_turn`): a ``lock`` older than :data:`STALE_LOCK_S`
    is taken for a dead build's and removed."""
    lock = folder / "lock"
    with contextlib.suppress(FileNotFoundError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_S:
            _remove_dead_lock(lock)


@contextlib.contextmanager
def _build_turn(folder: Path) -> Iterator[None]:
    """The block (a build) once no other textvae process builds in ``folder``; never waiting on a dead build.

    torch marks a build folder with a ``lock`` file while it compiles and makes every other process wait,
    with no timeout, until the file is gone: a build that was killed (Ctrl-C, a stopped study or test
    run) leaves it, and its waiters would wait forever. So textvae's builds first take an exclusive
    ``flock`` on ``textvae.build`` in the folder, which waits for a live build and which the OS releases
    however its holder ends; while it is held, a ``lock`` file can only be a dead build's, and is removed.
    """
    if fcntl is None:
        _clear_stale_lock(folder)
        yield
        return
    fd = os.open(folder / "textvae.build", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info(f"waiting for another process that builds textvae's C++ kernel in {folder}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        _remove_dead_lock(folder / "lock")
        yield
    finally:
        os.close(fd)  # releases the flock


def _build(kernel: str) -> Any:
    if os.environ.get("TEXTVAE_NATIVE", "1") == "0":
        return "TEXTVAE_NATIVE=0"
    try:
        from torch.utils.cpp_extension import load

        _ninja_on_path()
        sources = _sources(kernel)
        name = _build_name(kernel, sources)
        folder = _build_folder(name)
        folder.mkdir(parents=True, exist_ok=True)
        with _build_turn(folder):
            source = _sources_in(folder, kernel, sources)
            if _compiles(folder, name, source):  # else torch loads the library it built before
                log.info(f"compiling textvae's C++ kernel {kernel} in {folder} (once per machine and torch "
                         f"version; a minute or more, longer beside other work)")
            return load(name, [str(source)], extra_cflags=_flags(), extra_ldflags=["-fopenmp"],
                        build_directory=str(folder), verbose=False)
    except Exception as error:  # noqa: BLE001 (a compiler's failure has no one type; the reason is kept)
        reason = f"{type(error).__name__}: {str(error).strip().splitlines()[-1] if str(error).strip() else ''}"
        log.warning(f"textvae's C++ kernel {kernel} could not be built ({reason}); torch operations compute "
                    f"the same instead (slower). TEXTVAE_NATIVE=0 stops trying.")
        return reason


def native_kernel(kernel: str) -> Optional[Any]:
    """The built module of ``kernel`` (one of :data:`KERNELS`), or None when native kernels are off
    or it cannot be built here (then callers use torch operations)."""
    if kernel not in KERNELS:
        raise ValueError(f"unknown native kernel {kernel!r}; valid: {', '.join(KERNELS)}")
    if not _enabled:
        return None
    if kernel not in _built:
        _built[kernel] = _build(kernel)
    module = _built[kernel]
    return None if isinstance(module, str) else module


def set_native_kernels(on: bool) -> bool:
    """Use the native kernels (where they build) from now on, or never; returns the previous setting."""
    global _enabled
    was, _enabled = _enabled, bool(on)
    return was


@contextlib.contextmanager
def native_kernels(on: bool) -> Iterator[None]:
    """:func:`set_native_kernels` for the block; the setting before it is restored after. Nothing is
    built on entry: a kernel is built where it is first used (a GPU run never builds one; an fp32 CPU run only the dropout)."""
    was = set_native_kernels(on)
    try:
        yield
    finally:
        set_native_kernels(was)


def native_status(kernels: Sequence[str] = KERNELS) -> str:
    """``on`` (each of ``kernels`` built, where not yet), ``off`` (not used) or ``unavailable: <reason>``:
    for run records."""
    if not _enabled:
        return "off"
    missing = [k for k in kernels if native_kernel(k) is None]
    return "on" if not missing else f"unavailable: {_built[missing[0]]}"
