"""Test defaults: one torch thread and fixed seeds, so the suite is fast and repeatable on 2 cores."""
import contextlib
import os

import pytest
import torch

torch.set_num_threads(1)

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True, scope="session")
def _cache(tmp_path_factory):
    """Synthetic corpora and md5 records go to a cache of the test session's own (``TEXTVAE_CACHE``), not
    the user's ~/.cache/textvae: nothing carried over between test runs, nothing written outside the
    session's temporary folder. Subprocesses inherit it; a test that sets its own overrides it."""
    previous = os.environ.get("TEXTVAE_CACHE")
    os.environ["TEXTVAE_CACHE"] = str(tmp_path_factory.mktemp("textvae_cache"))
    yield
    if previous is None:
        os.environ.pop("TEXTVAE_CACHE", None)
    else:
        os.environ["TEXTVAE_CACHE"] = previous


@pytest.fixture
def data_dir():
    """The real corpora (``TEXTVAE_DATA_DIR``, else ../shared/data); skip when absent."""
    path = os.environ.get("TEXTVAE_DATA_DIR") or SHARED_DATA
    if not os.path.isdir(os.path.join(path, "ptb")):
        pytest.skip("real corpora not available: set TEXTVAE_DATA_DIR")
    return path


@contextlib.contextmanager
def kernel_or_torch(kernel: str, on: bool):
    """The block with textvae's C++ kernels on (skipped where ``kernel`` is not built here) or off (torch
    operations), for fixtures that run a test both ways."""
    from textvae.models import native

    if on and native.native_kernel(kernel) is None:
        pytest.skip(f"the {kernel} kernel is not built here ({native.native_status()})")
    with native.native_kernels(on):
        yield on


def cpu_bf16() -> bool:
    from textvae.training.train import bf16_supported

    return bf16_supported(torch.device("cpu"))


# bf16 autocast on the CPU: where oneDNN has no bf16 (AVX2 only) textvae refuses it, and these tests skip
needs_cpu_bf16 = pytest.mark.skipif(not cpu_bf16(), reason="this CPU has no bfloat16 arithmetic (AVX2 only)")


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    """textvae sees a CPU without bfloat16 arithmetic (an AVX2-only one), whatever this one has."""
    import textvae.training.train as train_module

    monkeypatch.setattr(train_module, "bf16_supported", lambda device: False)
