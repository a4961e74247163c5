"""Flushing denormal floats to zero in every thread that computes (``train.flush_denormals``).

x86 CPUs compute on denormals (|x| < 1.18e-38 in fp32 and bf16) through a microcode assist that
costs on the order of a hundred cycles per vector instruction. Training makes them without any
overflow or bug: Adam's first moment of an embedding row decays by β₁ = 0.9 on every step its word
is absent and sits in the denormal range for ~150 steps before it underflows to 0, so at any time
the rows of the rarer words are there. Setting the FTZ and DAZ bits of MXCSR makes the hardware
write and read those values as 0, as TensorFlow's CPU kernels do by default; the values lost are
below any figure's resolution (an Adam update of 1e-38 / (√v + ε) is nothing to a weight).

MXCSR belongs to a thread, and ``torch.set_flush_denormal`` sets the calling thread's only. A new
thread starts with the bits of the thread that creates it, so the intra-op (OpenMP) threads get
them when they start after the call; a pool started earlier (a study that loaded its corpus
first, a notebook) keeps its own, so :func:`flush_denormals` copies the mode into it, and reports
what holds in fact, measured with :func:`denormal_mode`.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import re
from pathlib import Path
from typing import Iterator

import torch

DENORMAL_BITS = 0x000AE398  # 713624 * 2^-149 = 1.0e-39, below fp32's smallest normal (1.18e-38)
# torch's elementwise kernels give each intra-op thread at least 32768 elements (at::internal::GRAIN_SIZE)
GRAIN = 32768


def denormals(n: int) -> torch.Tensor:
    """n fp32 copies of 1.0e-39, made from their bits: converting the number 1e-39 in a flushing thread
    would already give 0, and a DAZ check on it would measure nothing."""
    return torch.full((n,), DENORMAL_BITS, dtype=torch.int32).view(torch.float32)


def _flushed_shares(n: int) -> tuple[float, float]:
    """The shares of n results that show DAZ (a denormal input read as 0: 1e-39 * 2^30 would be
    1e-30) and FTZ (a denormal result written as 0: the smallest normal / 4). Each thread that
    computes a slice of the n elements contributes its own mode."""
    daz = (denormals(n) * 2.0**30).eq(0).float().mean()
    ftz = (torch.full((n,), torch.finfo(torch.float32).tiny) / 4).eq(0).float().mean()
    return float(daz), float(ftz)


def calling_thread_flushes() -> bool:
    """Whether the calling thread flushes denormals (products small enough to stay on it)."""
    return _flushed_shares(64) == (1.0, 1.0)


def denormal_mode() -> str:
    """What holds in torch's intra-op threads: ``"flushed"`` (all read and write denormals as 0),
    ``"kept"`` (none do) or ``"mixed"``, from products large enough that every thread computes a
    slice of them."""
    shares = _flushed_shares(GRAIN * 2 * torch.get_num_threads())
    return "flushed" if shares == (1.0, 1.0) else "kept" if shares == (0.0, 0.0) else "mixed"


def _copy_mode_to_pool() -> bool:
    """Give the intra-op threads the calling thread's floating-point environment (MXCSR with it):
    one OpenMP parallel region of torch's own libgomp in which every thread runs ``fesetenv`` on
    a copy of the caller's. False where that runtime or libm's functions are not found (another
    OpenMP runtime, not Linux): the threads then keep their mode."""
    try:
        path = next(line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
                    if re.search(r"/libgomp[^/]*\.so[^/]*$", line))
        gomp, libm = ctypes.CDLL(path), ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        parallel, get_env, set_env = gomp.GOMP_parallel, libm.fegetenv, libm.fesetenv
    except (OSError, StopIteration, AttributeError):
        return False
    env = ctypes.create_string_buffer(64)  # a fenv_t (32 bytes on x86-64 glibc: x87 state + MXCSR)
    if get_env(env) != 0:
        return False
    # GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags): GCC's
    # lowering of `#pragma omp parallel`; fesetenv(const fenv_t *) has the signature fn needs
    parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    parallel.restype = None
    parallel(ctypes.cast(set_env, ctypes.c_void_p), ctypes.cast(env, ctypes.c_void_p), torch.get_num_threads(), 0)
    return True


def flush_denormals(on: bool) -> str:
    """Read and write denormals as 0 (``on``) or as IEEE says, in the calling thread and in the
    intra-op threads, and return :func:`denormal_mode` (``"mixed"`` only where the threads of a pool
    started before could not be given the mode)."""
    torch.set_flush_denormal(on)
    mode = denormal_mode()
    if mode == "mixed" and _copy_mode_to_pool():
        mode = denormal_mode()
    return mode


@contextlib.contextmanager
def denormals_flushed(on: bool) -> Iterator[str]:
    """:func:`flush_denormals` for the block (yielding its mode); the calling thread's mode before
    it is every thread's after it."""
    was = calling_thread_flushes()
    try:
        yield flush_denormals(on)
    finally:
        flush_denormals(was)
