"""``train.flush_denormals``: what the mode does to arithmetic, and that every intra-op thread gets it."""
import os
import subprocess
import sys

import pytest
import torch

from textvae.training.denormals import calling_thread_flushes, denormals, flush_denormals


@pytest.fixture
def restore_mode():
    was = calling_thread_flushes()
    yield
    flush_denormals(was)


def test_the_mode_reads_and_writes_denormals_as_zero_and_clears_again(restore_mode):
    tiny = torch.finfo(torch.float32).tiny
    assert 0 < denormals(1).item() < tiny
    assert flush_denormals(True) == "flushed"
    assert calling_thread_flushes()
    x = torch.cat([denormals(1), torch.tensor([tiny, 1.0])])  # a denormal input, not one the conversion flushed
    assert (x * 1).tolist() == [0.0, tiny, 1.0]  # read as 0 (DAZ); a normal float is untouched
    assert (torch.tensor([tiny]) / 4).item() == 0.0  # written as 0 (FTZ)
    assert flush_denormals(False) == "kept"
    assert (torch.tensor([tiny]) / 4).item() == pytest.approx(tiny / 4)


def test_adam_updates_the_same_weights_with_denormal_moments_flushed(restore_mode):
    """What the mode loses lies below any weight's resolution: Adam steps over rows whose first
    moment is decaying through the denormal range (a rare word's embedding row, gradient 0) give
    bit-identical weights, while the moments themselves do differ (flushed to 0)."""
    results = {}
    for on in (False, True):
        flush_denormals(on)
        p = torch.nn.Parameter(torch.linspace(-1, 1, 4096).reshape(16, 256))
        opt = torch.optim.Adam([p], lr=1e-3, fused=True)
        opt.state[p] = {"step": torch.tensor(1000.0), "exp_avg": torch.full_like(p, 3e-37),
                        "exp_avg_sq": torch.full_like(p, 1e-12)}
        for _ in range(40):  # 3e-37 * 0.9^k is denormal from k = 24 on
            p.grad = torch.zeros_like(p)
            opt.step()
        results[on] = (p.detach().clone(), opt.state[p]["exp_avg"].clone())
    assert torch.equal(results[False][0], results[True][0])
    # bit patterns: in the flushing mode a comparison would read the denormals as 0 too
    assert results[True][1].view(torch.int32).eq(0).all() and results[False][1].view(torch.int32).ne(0).all()


SCRIPT = """
import sys, torch
torch.set_num_threads(2)
if sys.argv[1] == "pool_first":
    torch.ones(1 << 20).mul_(2)  # starts the intra-op pool in the default mode
from textvae.training.denormals import denormal_mode, denormals_flushed, flush_denormals
print(flush_denormals(True), flush_denormals(False))
with denormals_flushed(True) as mode:  # as a run holds it
    print(mode)
print(denormal_mode())
"""


@pytest.mark.parametrize("order", ["fresh", "pool_first"])
def test_every_intra_op_thread_takes_the_mode_whenever_it_started(order):
    """MXCSR is per thread and torch.set_flush_denormal sets the caller's only: the second
    intra-op thread of a pool started before the call (a study loads its corpus first) must get
    the mode too, and lose it again; a run gives every thread the mode it found back."""
    out = subprocess.run([sys.executable, "-c", SCRIPT, order], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "OMP_NUM_THREADS": "2"}, check=True)
    assert out.stdout.split() == ["flushed", "kept", "flushed", "kept"]
