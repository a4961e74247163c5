"""textvae's C++ kernels (textvae.models.native) against slow references, and their switch.

The kernel tests skip where the kernel cannot be built (no C++ compiler): torch operations then
compute the same thing, which tests/test_perf_levers.py covers.
"""
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from textvae.models import native
from textvae.models.fused_loss import linear_cross_entropy
from tests.conftest import needs_cpu_bf16


@pytest.fixture
def softmax_rows():
    module = native.native_kernel("softmax_rows")
    if module is None:
        pytest.skip(f"the softmax_rows kernel is not built here ({native.native_status()})")
    return module


def reference(logits, bias, targets):
    """NLL and softmax - onehot in float64 of the kernel's inputs (bf16 logits + fp32 bias)."""
    x = logits.double() + bias.double()
    p = torch.softmax(x, -1)
    rows = torch.arange(len(targets))
    nll = torch.logsumexp(x, -1) - x[rows, targets]
    p[rows, targets] -= 1.0
    return nll, p


def bf16_ulp(x):
    """The spacing of bf16 numbers at |x| (8 significant bits), at least that of the smallest normal."""
    return torch.clamp(x.abs(), min=2.0 ** -126).log2().floor().exp2() * 2.0 ** -7


@pytest.mark.parametrize("n, vocab, scale", [(1, 7, 1.0), (37, 1003, 3.0), (64, 50, 40.0), (5, 4099, 0.01)])
def test_softmax_rows_against_float64(softmax_rows, n, vocab, scale):
    """NLL to ~1e-6 relative; each G entry within one bf16 rounding of the exact value (the kernel's
    fp32 softmax is accurate to a few ulps, then rounded once to bf16). Widths that are not
    multiples of the vector length test the loops' tails; scale 40 sends most exps below fp32's range."""
    g = torch.Generator().manual_seed(n + vocab)
    logits = (torch.randn(n, vocab, generator=g) * scale).bfloat16()
    bias = torch.randn(vocab, generator=g)
    targets = torch.randint(0, vocab, (n,), generator=g)
    grad = torch.empty(n, vocab, dtype=torch.bfloat16)
    nll = softmax_rows.nll_and_grad(logits, bias, targets, grad)
    exact_nll, exact_grad = reference(logits, bias, targets)
    torch.testing.assert_close(nll.double(), exact_nll, rtol=2e-6, atol=2e-6)
    assert ((grad.double() - exact_grad).abs() <= bf16_ulp(exact_grad) + 1e-30).all()
    assert torch.equal(softmax_rows.nll_only(logits, bias, targets), nll)


def test_softmax_rows_reads_strided_rows_and_writes_only_its_rows(softmax_rows):
    """Rows of a wider buffer (a chunk of the loss's G) are read and written at their stride, and
    nothing outside the given rows changes."""
    logits = torch.randn(6, 40).bfloat16()[1:5]
    bias, targets = torch.zeros(40), torch.tensor([0, 3, 39, 7])
    buffer = torch.full((8, 40), 7.0, dtype=torch.bfloat16)
    softmax_rows.nll_and_grad(logits, bias, targets, buffer[2:6])
    _, exact = reference(logits, bias, targets)
    assert ((buffer[2:6].double() - exact).abs() <= bf16_ulp(exact) + 1e-30).all()
    assert (buffer[:2] == 7).all() and (buffer[6:] == 7).all()


def test_softmax_rows_rejects_what_it_cannot_read(softmax_rows):
    with pytest.raises(RuntimeError, match="bf16"):
        softmax_rows.nll_only(torch.zeros(2, 5), torch.zeros(5), torch.zeros(2, dtype=torch.long))
    with pytest.raises(RuntimeError, match="bias"):
        softmax_rows.nll_only(torch.zeros(2, 5).bfloat16(), torch.zeros(4), torch.zeros(2, dtype=torch.long))


@needs_cpu_bf16
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_loss_same_with_and_without_the_kernel(softmax_rows, with_bias):
    """The bf16 fused loss with the kernel and with torch operations: the same NLL to fp32 rounding,
    the same gradients to one bf16 rounding of G's entries (summed in the backward's GEMMs)."""
    g = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(300, 32, generator=g), torch.randn(1000, 32, generator=g) * 0.3
    bias = torch.randn(1000, generator=g) if with_bias else None
    targets, upstream = torch.randint(0, 1000, (300,), generator=g), torch.rand(300, generator=g)
    results = []
    for on in (True, False):
        leaves = [t.clone().requires_grad_() for t in (hidden, weight, bias) if t is not None]
        with native.native_kernels(on), torch.autocast("cpu", dtype=torch.bfloat16):
            nll = linear_cross_entropy(leaves[0], leaves[1], leaves[2] if with_bias else None, targets, chunk=128)
            (nll * upstream).sum().backward()
            with torch.no_grad():
                evaluated = linear_cross_entropy(*leaves[:2], leaves[2] if with_bias else None, targets)
        results.append([nll.detach(), evaluated] + [t.grad for t in leaves])
    for with_kernel, with_torch in zip(*results):
        torch.testing.assert_close(with_kernel, with_torch, rtol=2e-5, atol=2e-5)


def splitmix64_keep(seed, n, p):
    """The dropout kernel's mask, in numpy's uint64 arithmetic (wrapping): the high 32 bits of
    SplitMix64's output for counters 1..n from ``seed``, compared with round(p * 2^32)."""
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + (np.arange(n, dtype=np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return torch.from_numpy((z >> np.uint64(32)) >= np.uint64(round(p * 2 ** 32)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("p, seed", [(0.5, 0), (0.3, 2 ** 62 + 12345), (0.9, 77)])
def test_dropout_kernel_against_splitmix64(dtype, p, seed):
    """Every element's mask is the reference's (a size that is no multiple of the vector width nor of
    a thread's share); kept elements are x / (1 - p) rounded once to the input's type; NaN stays NaN."""
    kernel = native.native_kernel("dropout")
    if kernel is None:
        pytest.skip(f"the dropout kernel is not built here ({native.native_status()})")
    x = torch.randn(3, 40_003, generator=torch.Generator().manual_seed(5)).to(dtype)
    x[0, 0] = float("nan")
    y = kernel.dropout(x, p, seed)
    keep = splitmix64_keep(seed, x.numel(), p).view(x.shape)
    expected = torch.where(keep, (x.double() * float(torch.tensor(1 / (1 - p)))).to(dtype), torch.zeros((), dtype=dtype))
    assert y.dtype == dtype
    assert torch.equal(torch.nan_to_num(y), torch.nan_to_num(expected))
    assert bool(keep[0, 0]) == bool(torch.isnan(y[0, 0]))
    assert abs(keep.double().mean().item() - (1 - p)) < 5 * math.sqrt(p * (1 - p) / keep.numel())
    with pytest.raises(RuntimeError, match="contiguous"):
        kernel.dropout(x.t(), p, seed)


def test_sum_squares_against_float64():
    """The working copies' squared gradient norm: several bf16 tensors, sizes off every block size, to
    ~1e-6 relative of the float64 sum; none gives 0."""
    kernel = native.native_kernel("sgd_bf16")
    if kernel is None:
        pytest.skip(f"the sgd_bf16 kernel is not built here ({native.native_status()})")
    g = torch.Generator().manual_seed(2)
    grads = [(torch.randn(shape, generator=g) * scale).bfloat16()
             for shape, scale in [((1001, 37), 1.0), ((5,), 1e-3), ((70_001,), 30.0), ((1,), 2.0)]]
    exact = sum(float(t.double().square().sum()) for t in grads)
    assert kernel.sum_squares(grads) == pytest.approx(exact, rel=1e-6)
    assert kernel.sum_squares([]) == 0.0
    with pytest.raises(RuntimeError, match="bf16"):
        kernel.sum_squares([torch.ones(3)])


def test_switch_and_status(monkeypatch):
    assert native.set_native_kernels(False) is True
    try:
        assert native.native_status() == "off" and native.native_kernel("softmax_rows") is None
        with native.native_kernels(True):
            assert native.native_status() != "off"
        assert native.native_status() == "off"  # the block restored the setting before it
    finally:
        native.set_native_kernels(True)
    with pytest.raises(ValueError, match="valid: softmax_rows"):
        native.native_kernel("softmax")


def test_switching_on_builds_nothing(monkeypatch):
    """Entering the switch (every run start, ``textvae evaluate``) builds no kernel: an fp32 or GPU run,
    which uses none, neither waits for a compiler nor warns where there is none."""
    builds = []
    monkeypatch.setattr(native, "_built", {})
    monkeypatch.setattr(native, "_build", lambda kernel: builds.append(kernel) or "not built in this test")
    with native.native_kernels(True):
        pass
    assert builds == []
    assert native.native_kernel("softmax_rows") is None and builds == ["softmax_rows"]  # built at first use


def test_environment_turns_building_off(monkeypatch):
    monkeypatch.setattr(native, "_built", {})
    monkeypatch.setenv("TEXTVAE_NATIVE", "0")
    assert native.native_kernel("softmax_rows") is None
    assert native.native_status() == "unavailable: TEXTVAE_NATIVE=0"


def test_a_failed_build_warns_once_and_torch_computes(monkeypatch, tmp_path, caplog):
    """A source that does not compile: one warning naming the kernel, None, and the fused loss
    computes with torch operations (the same NLL as with the kernel off)."""
    (tmp_path / "softmax_rows.cpp").write_text("this is not C++\n")
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    monkeypatch.setattr(native, "_built", {})
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    with caplog.at_level(logging.INFO, logger="textvae.models.native"):
        assert native.native_kernel("softmax_rows") is None
        assert native.native_kernel("softmax_rows") is None
    # said before the (minutes-long, when it compiles) build, then why it failed; once
    assert len(caplog.records) == 2
    assert caplog.records[0].message.startswith("compiling textvae's C++ kernel softmax_rows")
    assert [r.message.count("softmax_rows could not be built") for r in caplog.records] == [0, 1]
    assert native.native_status().startswith("unavailable: ")
    hidden, weight, targets = torch.randn(9, 8), torch.randn(20, 8), torch.randint(0, 20, (9,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        nll = linear_cross_entropy(hidden, weight, None, targets)
        with native.native_kernels(False):
            plain = linear_cross_entropy(hidden, weight, None, targets)
    assert torch.equal(nll, plain)


def test_build_name_follows_source_and_machine(monkeypatch, tmp_path):
    """Another source, another shared header, another CPU or another environment gives another cached library,
    never a stale one."""
    name = native._build_name("softmax_rows")
    for source in native.SOURCES.iterdir():
        (tmp_path / source.name).write_bytes(source.read_bytes())
    monkeypatch.setattr(native, "SOURCES", tmp_path)
    assert native._build_name("softmax_rows") == name
    (tmp_path / "bf16.h").write_text((tmp_path / "bf16.h").read_text() + "// changed\n")
    assert native._build_name("softmax_rows") != name
    monkeypatch.setattr(native, "SOURCES", native.SOURCES.__class__(native.__file__).parent / "csrc")
    monkeypatch.setattr(native, "_cpu_identity", lambda: "flags : something else")
    other_cpu = native._build_name("softmax_rows")
    assert other_cpu != name
    # another environment (its own torch install, its own Python) builds apart, not over this one's build;
    # the same one under another name of its interpreter (python, python3) builds once
    monkeypatch.setattr(native.sys, "executable", native.sys.executable + "3")
    assert native._build_name("softmax_rows") == other_cpu
    monkeypatch.setattr(native.sys, "prefix", "/elsewhere/venv")
    assert native._build_name("softmax_rows") != other_cpu


def test_checkouts_of_the_same_source_share_one_build(monkeypatch, tmp_path):
    """torch rebuilds a folder whose build file names another source path: two checkouts of one source
    compiling from their own paths rebuilt each other's library, unannounced. The build compiles a copy
    of the source kept in its folder, the same path from every checkout, and never rewrites it."""
    import os

    import torch.utils.cpp_extension as cpp_extension

    compiled = []
    monkeypatch.setattr(cpp_extension, "load", lambda name, sources, **kw: compiled.append(sources) or object())
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "build"))
    checkouts = []
    for folder in ("one", "two"):
        (tmp_path / folder).mkdir()
        for source in native.SOURCES.iterdir():
            if source.suffix in (".cpp", ".h"):
                (tmp_path / folder / source.name).write_bytes(source.read_bytes())
        checkouts.append(tmp_path / folder)
    for checkout in checkouts:
        monkeypatch.setattr(native, "SOURCES", checkout)
        monkeypatch.setattr(native, "_built", {})
        assert native.native_kernel("softmax_rows") is not None
        if len(compiled) == 1:
            copy = Path(compiled[0][0])
            os.utime(copy, ns=(1, 1))  # a rewrite would move it
    assert compiled[0] == compiled[1]
    assert copy.parent == native._build_folder(native._build_name("softmax_rows")) / "src"
    assert copy.read_bytes() == (checkouts[0] / "softmax_rows.cpp").read_bytes()
    assert copy.stat().st_mtime_ns == 1
    headers = {h.name for h in checkouts[0].glob("*.h")}
    assert {p.name for p in copy.parent.iterdir()} == {"softmax_rows.cpp", *headers} and headers
    # a folder built before the copy existed compiles once more, and says so (its library exists)
    folder, name = copy.parent.parent, native._build_name("softmax_rows")
    (folder / f"{name}.so").write_bytes(b"")
    (folder / "build.ninja").write_text(f"build x.o: compile {checkouts[0] / 'softmax_rows.cpp'}\n")
    assert native._compiles(folder, name, copy)
    (folder / "build.ninja").write_text(f"build x.o: compile {copy}\n")
    assert not native._compiles(folder, name, copy)


def test_without_flock_a_killed_build_s_lock_is_cleared_by_its_age(tmp_path, monkeypatch):
    """Where there is no flock: a ``lock`` older than STALE_LOCK_S is removed, a fresh one (a build under
    way) is left alone."""
    import os
    import time

    lock = tmp_path / "lock"
    lock.write_text("")
    native._clear_stale_lock(tmp_path)
    assert lock.exists()
    old = time.time() - native.STALE_LOCK_S - 5
    os.utime(lock, (old, old))
    native._clear_stale_lock(tmp_path)
    assert not lock.exists()
    native._clear_stale_lock(tmp_path)  # nothing to clear: no error
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    assert native._build_folder("k") == tmp_path / "k"


@pytest.mark.skipif(native.fcntl is None, reason="no flock here")
def test_a_build_waits_for_a_live_build_and_clears_a_dead_one_s_lock(tmp_path, caplog):
    """A build's turn waits while another process's build holds the folder's flock; once it is released
    (its holder ended, however), torch's ``lock`` file, which would make torch wait forever, is gone."""
    import fcntl
    import os
    import threading

    (tmp_path / "lock").write_text("")  # a build killed mid-way, fresh as it is
    other = os.open(tmp_path / "textvae.build", os.O_RDWR | os.O_CREAT)  # a live build's hold
    fcntl.flock(other, fcntl.LOCK_EX)
    entered = threading.Event()

    def build():
        with native._build_turn(tmp_path):
            entered.set()

    thread = threading.Thread(target=build)
    with caplog.at_level(logging.INFO, logger="textvae.models.native"):
        thread.start()
        assert not entered.wait(0.3)  # waits for the live build, and leaves its lock alone, saying so
    assert (tmp_path / "lock").exists()
    assert f"waiting for another process that builds textvae's C++ kernel in {tmp_path}" in caplog.text
    os.close(other)
    assert entered.wait(10)
    thread.join()
    assert not (tmp_path / "lock").exists()
