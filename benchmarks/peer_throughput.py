"""Issue 18, target 1: textvae's exact-objective training step against He et al.'s own code
(jxhe/vae-lagging-encoder), side by side on one machine.

    git clone <jxhe/vae-lagging-encoder> /tmp/peer     # a scratch checkout; never part of textvae
    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/peer_throughput.py --peer-dir /tmp/peer \
        [--sizes ptb yahoo] [--rounds 3] [--steps 60] [--warmup 20] [--threads 2]

For each model size, every round runs one fresh subprocess per code path, in turn (so load from
elsewhere hits all alike): the peer's training step (its ``VAE.loss`` with KL weight 1, backward,
``clip_grad_norm_`` 5, its two SGD optimisers, lr 1, on batches from its own ``MonoTextData``
batching), then textvae's training step in fp32 and in bf16 autocast (the loop's hot path, as
``benchmarks/throughput.py``'s ``Stepper`` runs it, on textvae's bucketed batches). Both read the same
corpus: PTB's training set for the 256/256/32 model; for the Yahoo-size model (512/1024/32 of the
peer's ``config_yahoo.py``, V = 20k) a corpus of uniformly random words of a 20k vocabulary with
PTB's sentence lengths, written once into a scratch folder. Each worker times ``--steps`` steps after
``--warmup`` and counts real tokens (words + ``</s>``; ``<s>`` is not predicted). The fp32 and bf16
GEMM roofs (2048^3) are measured just before the first and after the last round.

Prints one table per size: tok/s per round, the median, the ratio to the peer's median, and the
achieved share of the roof (useful GEMM FLOPs as ``throughput.step_flops`` counts them). Without
``--peer-dir`` or with a folder that is not the peer's checkout it says so and exits 0 (skipped).
The "% roof" cells recorded below, before 2026-12-06, counted each sentence's GEMM work over its
predicted tokens only (one position short of ``step_flops``' whole sentences), so they are about 4.7 %
low on PTB and on the Yahoo-size corpus alike (46.1 % reads 48.3 %); the tok/s and ratios are unaffected.

Measured 2026-12-04 on the 2-core AMD EPYC (Zen 4, avx512_bf16) with every other process stopped
(``--sizes ptb --rounds 3 --steps 60 --warmup 20`` and ``--sizes yahoo --rounds 3 --steps 30
--warmup 10``, ``--threads 2``; roofs fp32 171-191, bf16 413-423 GFLOP/s), each code's share of its
own precision's roof:

    size   code                            tok/s per round          median  vs peer  % roof
    ptb    He et al. (fp32)                3,928 / 4,364 / 4,746     4,364   1.00x    48.2 %
    ptb    textvae fp32                    5,965 / 5,066 / 5,982     5,965   1.37x    65.6 %
    ptb    textvae bf16 (exact objective)  8,813 / 8,422 / 9,093     8,813   2.02x    43.7 %
    yahoo  He et al. (fp32)                  717 /   705 /   692       705   1.00x    71.5 %
    yahoo  textvae fp32                      787 /   741 /   728       741   1.05x    75.1 %
    yahoo  textvae bf16 (exact objective)  1,113 / 1,073 / 1,056     1,073   1.52x    49.3 %

What 3x the peer asks of the exact objective: the bf16 roof is ~2.2x the fp32 one on this CPU, so
3x needs the bf16 step at 3 x 48.2 / 2.2 = 65 % of the bf16 roof for PTB (today 44 %) and at
3 x 71.5 / 2.2 = 97 % for the Yahoo-size model (today 49 %), where the peer's fp32 step already
spends most of its time in large GEMMs near the fp32 roof. The Yahoo-size target is therefore out of
reach of any exact bf16 step on this machine: even with every non-GEMM operation free it would be
at most 2.2 / 0.715 = 3.1x, and the recurrent GEMMs (32 x 1024 x 4096 per step, backward included)
do not run at the 2048^3 roof.

Measured 2026-12-05 on the machine that replaced it, a 2-core Intel Xeon with AMX-BF16 (the same
commands, commit 8ac5f85: the loss's GEMMs padded to 64 rows; quiet; roofs fp32 340-386, bf16
2,100-2,500 GFLOP/s):

    size   code                            tok/s per round             median  vs peer  % roof
    ptb    He et al. (fp32)                 8,120 /  7,325 /  8,106     8,106   1.00x    50.2 %
    ptb    textvae fp32                     8,642 /  8,531 /  8,680     8,642   1.07x    53.4 %
    ptb    textvae bf16 (exact objective)  15,145 / 16,136 / 15,414    15,414   1.90x    14.1 %
    yahoo  He et al. (fp32)                 1,093 /  1,060 /  1,022     1,060   1.00x    57.4 %
    yahoo  textvae fp32                     1,080 /  1,072 /  1,057     1,072   1.01x    58.1 %
    yahoo  textvae bf16 (exact objective)   2,302 /  2,225 /  2,231     2,231   2.11x    20.4 %

Here the bf16 roof is 6.5x the fp32 one, so 3x the peer no longer asks for more than the roof: it
asks the exact bf16 step to cut the elementwise work of its loss (fp32 cast, bias, softmax, which
now outweigh its GEMMs; ``throughput.py``) by about a third (PTB) to a half (Yahoo). A whole PTB
epoch runs at 17.1k tok/s (``throughput.py --sections epoch``), 2.1x the peer's 8.1k: the 80 steps
here include the first builds of the padded GEMM shapes, which a run pays once.

Measured 2026-12-05 20:41-20:47 UTC on the same Xeon (quiet: the PTB study paused), commit a93180e plus
the worker's malloc setting below; the same commands. New rows: the bf16 step with torch operations
for the loss's softmax part and with textvae's C++ kernel (``train.native_kernels``, the default), and
the forward GEMM reading W^T as a view (both rows):

    size   code                                 tok/s per round             median  vs peer  % roof
    ptb    He et al. (fp32)                      7,982 /  8,496 /  7,773     7,982   1.00x    49.0 %
    ptb    textvae fp32                         10,229 /  9,806 /  9,561     9,806   1.23x    60.0 %
    ptb    textvae bf16, torch ops              17,620 / 16,443 / 16,278    16,443   2.06x    14.4 %
    ptb    textvae bf16 + C++ softmax (exact)   19,713 / 18,576 / 18,337    18,576   2.33x    16.2 %
    yahoo  He et al. (fp32)                      1,137 /  1,084 /  1,054     1,084   1.00x    55.6 %
    yahoo  textvae fp32                          1,341 /  1,365 /  1,305     1,341   1.24x    68.9 %
    yahoo  textvae bf16, torch ops               2,919 /  3,174 /  2,954     2,954   2.73x    23.2 %
    yahoo  textvae bf16 + C++ softmax (exact)    3,137 /  3,292 /  3,072     3,137   2.89x    24.7 %

(roofs fp32 343-377, bf16 2,404-2,534 GFLOP/s.) textvae's worker now keeps freed memory as the
training loop does by default (``train.retain_memory``); before, each step's large temporaries were
page-faulted in afresh, which the loop never does, so the earlier textvae rows read low (the
peer's code runs as it is, with glibc's default). 3x the peer is 23.9k tok/s (PTB) and 3,252
(Yahoo-size): not met; Yahoo-size is within 4 %.

Measured 2026-12-05 23:50-23:57 UTC on the same Xeon (quiet: the PTB study's two runs stopped with
SIGSTOP for the measurement), commit 842d47f (``train.bf16_weight_copies``), the same commands. New row: bf16
working copies of the LSTM and output weights (:mod:`textvae.training.working_copies`, the default for
plain SGD), which replace the per-step fp32 -> bf16 cast of each weight and the widening of its bf16
gradient by one fused SGD pass that also writes the copy. The machine read slower this time for every
code (the peer 12 % below the run above; roofs bf16 1,993-2,333 GFLOP/s), so compare within a table:

    size   code                                   tok/s per round             median  vs peer  % roof
    ptb    He et al. (fp32)                        7,118 /  7,213 /  7,070     7,118   1.00x    40.2 %
    ptb    textvae fp32                            8,945 /  8,502 /  8,154     8,502   1.19x    47.9 %
    ptb    textvae bf16, torch ops                15,366 / 14,174 / 14,388    14,388   2.02x    12.9 %
    ptb    textvae bf16 + C++ softmax (exact)     17,374 / 15,912 / 16,034    16,034   2.25x    14.4 %
    ptb    textvae bf16 + weight copies (exact)   17,746 / 17,453 / 16,659    17,453   2.45x    15.7 %
    yahoo  He et al. (fp32)                          962 /    955 /    951       955   1.00x    52.0 %
    yahoo  textvae fp32                            1,112 /  1,158 /  1,181     1,158   1.21x    63.1 %
    yahoo  textvae bf16, torch ops                 2,583 /  2,624 /  2,699     2,624   2.75x    23.2 %
    yahoo  textvae bf16 + C++ softmax (exact)      2,601 /  2,676 /  2,967     2,676   2.80x    23.6 %
    yahoo  textvae bf16 + weight copies (exact)    2,826 /  3,059 /  3,150     3,059   3.20x    27.0 %

The Yahoo-size model's exact objective now trains at 3.2x the peer (target 1 met for that size);
PTB's at 2.45x (not met: 3x is 21.4k here).

Measured 2026-12-06 02:33-02:51 UTC on the same Xeon (quiet, the study's runs stopped), the same
commands at commit 618678b, which adds: the decoders' dropout masks from textvae's ``dropout``
kernel (fp32 and bf16 rows alike); the working copies' gradient norm summed by the ``sgd_bf16`` kernel;
the output weight's master and copy laid out transposed, so the fused loss's forward GEMM reads W^T
contiguous and its backward writes dW^T without a copy. The C++ row is now named "C++ kernels" (softmax
and dropout). Roofs bf16 1,919-2,167 GFLOP/s (a slow day again):

    size   code                                   tok/s per round             median  vs peer  % roof
    ptb    He et al. (fp32)                        7,168 /  6,754 /  6,647     6,754   1.00x    45.3 %
    ptb    textvae fp32                            8,469 /  8,204 /  8,420     8,420   1.25x    56.3 %
    ptb    textvae bf16, torch ops                14,215 / 14,043 / 14,079    14,079   2.08x    13.6 %
    ptb    textvae bf16 + C++ kernels (exact)     17,069 / 16,310 / 16,320    16,320   2.42x    15.8 %
    ptb    textvae bf16 + weight copies (exact)   19,304 / 18,946 / 19,125    19,125   2.83x    18.5 %
    yahoo  He et al. (fp32)                          945 /    921 /    942       942   1.00x    56.3 %
    yahoo  textvae fp32                            1,089 /  1,133 /  1,138     1,133   1.20x    67.8 %
    yahoo  textvae bf16, torch ops                 2,560 /  2,684 /  2,761     2,684   2.85x    26.3 %
    yahoo  textvae bf16 + C++ kernels (exact)      2,753 /  2,879 /  2,958     2,879   3.06x    28.2 %
    yahoo  textvae bf16 + weight copies (exact)    3,213 /  3,392 /  3,392     3,392   3.60x    33.3 %

With the dropout kernel and the norm alone (before the transposed layout), the PTB default row read
19,335 (2.69x of that run's peer, 7,199). A longer window, ``--steps 200 --warmup 100`` (so that both
codes have met most sentence lengths, whose first LSTM and GEMM shapes oneDNN builds once), does not
change the ratio: PTB peer 7,169, textvae's default 20,174, **2.81x** (the peer speeds up as much).
Target 1: Yahoo-size met (3.6x); PTB not (2.8x; 3x is 20.3k in the first table).

Measured 2026-12-06 06:01-06:12 UTC on the same Xeon (quiet), the same commands but ``--rounds 5`` for
PTB, with the ``lstm_bf16`` kernel (:mod:`textvae.models.lstm`: a one-layer LSTM's forward and backward
recurrences on AMX, under ``train.native_kernels``, so in both C++ rows). Roofs bf16 1,707-2,151
GFLOP/s, the slowest day yet:

    size   code                                   tok/s per round                             median  vs peer  % roof
    ptb    He et al. (fp32)                        6,320 /  6,933 /  6,925 /  7,050 /  6,736    6,925   1.00x    46.1 %
    ptb    textvae fp32                            7,810 /  7,824 /  8,121 /  7,790 /  7,949    7,824   1.13x    52.1 %
    ptb    textvae bf16, torch ops                12,868 / 13,175 / 13,450 / 13,253 / 13,900   13,253   1.91x    16.3 %
    ptb    textvae bf16 + C++ kernels (exact)     16,953 / 17,099 / 17,790 / 19,345 / 19,727   17,790   2.57x    21.9 %
    ptb    textvae bf16 + weight copies (exact)   20,666 / 19,288 / 20,864 / 22,441 / 21,873   20,864   3.01x    25.7 %
    yahoo  He et al. (fp32)                          937 /    889 /    941                        937   1.00x    54.1 %
    yahoo  textvae fp32                            1,135 /  1,093 /  1,134                      1,134   1.21x    65.5 %
    yahoo  textvae bf16, torch ops                 2,590 /  2,497 /  2,564                      2,564   2.74x    22.9 %
    yahoo  textvae bf16 + C++ kernels (exact)      2,935 /  2,861 /  2,918                      2,918   3.11x    26.0 %
    yahoo  textvae bf16 + weight copies (exact)    3,421 /  3,405 /  3,266                      3,405   3.63x    30.4 %

Per round, the default PTB row against the peer's: 3.27, 2.78, 3.01, 3.18, 3.25x (the machine sped up
over the rounds; both codes alike). A three-round run 35 minutes earlier (05:26-05:36, with the kernel's
first version: every step's input projection as one GEMM before the recurrence, 0.2 ms slower per call) read peer 6,274 against 18,262 (2.91x; one round at
16,581) and Yahoo-size 898 against 3,382 (3.77x). The longer window (``--sizes ptb --rounds 3 --steps 200
--warmup 100``, quiet, 06:27-06:34 UTC; roofs bf16 1,709-2,386): peer 6,627 / 7,463 / 7,189, textvae fp32
8,654 (1.20x), bf16 torch ops 15,672 (2.18x), C++ kernels 21,622 (3.01x), the default 25,927 / 27,711 /
25,378, **3.61x** (last session's code read 2.81x in this window; a likely reason for the larger gain over
the longer window, not measured apart: the kernel's micro-kernels are keyed without the sentence length,
where oneDNN builds an LSTM primitive for each new length). Target 1: met for both sizes, PTB by 3.01x
over 60 steps and 3.61x over 200.

Measured 2026-12-06 12:48-12:50 UTC on a 2-core AMD EPYC with AVX2 only (no AVX-512, no AMX: textvae
refuses bf16 there, so the bf16 rows are left out), commit 1c34f8b, quiet (the study's runs paused),
``--sizes ptb --rounds 3 --steps 60 --warmup 20`` (roof fp32 129 before, 183 after):

    size   code                 tok/s per round             median  vs peer  % roof
    ptb    He et al. (fp32)      3,073 / 3,142 / 4,279       3,142   1.00x    51.4 %
    ptb    textvae fp32          3,909 / 5,136 / 5,354       5,136   1.63x    83.8 %

On such a CPU target 1 is out of reach by construction: it was met with bf16 on AMX, and fp32 is all
that runs here.

Measured 2026-12-07 10:00-10:10 UTC back on a 2-core Intel Xeon with AMX-BF16 (a new machine; the code of
eight sessions written on the EPYC, checked here again), commit 041a55d, the study's runs paused (SIGSTOP),
``--sizes ptb --rounds 3 --steps 60 --warmup 20`` then ``--sizes yahoo --rounds 3 --steps 30 --warmup 10``.
PTB quiet (roofs fp32 432 / 415, bf16 2,564 / 2,477 GFLOP/s before / after):

    size   code                                   tok/s per round             median  vs peer  % roof
    ptb    He et al. (fp32)                        6,824 /  8,097 /  7,728     7,728   1.00x    39.3 %
    ptb    textvae fp32                            9,456 /  9,624 /  9,376     9,456   1.22x    48.1 %
    ptb    textvae bf16, torch ops                15,588 / 16,282 / 15,548    15,588   2.02x    13.4 %
    ptb    textvae bf16 + C++ kernels (exact)     21,061 / 20,412 / 21,430    21,061   2.73x    18.1 %
    ptb    textvae bf16 + weight copies (exact)   24,623 / 25,804 / 25,681    25,681   3.32x    22.0 %
    yahoo  He et al. (fp32)                        1,089 /  1,140 /  1,150     1,140   1.00x    58.0 %
    yahoo  textvae fp32                            1,328 /  1,414 /  1,008     1,328   1.17x    67.6 %
    yahoo  textvae bf16, torch ops                 2,939 /  3,089 /  1,149     2,939   2.58x    23.1 %
    yahoo  textvae bf16 + C++ kernels (exact)      3,497 /  3,458 /  1,077     3,458   3.03x    27.2 %
    yahoo  textvae bf16 + weight copies (exact)    4,177 /  4,087 /    916     4,087   3.59x    32.1 %

The Yahoo-size table's third round is not quiet: a helper's small runs started during it (its roofs
after the rounds read fp32 195, bf16 1,151, half the quiet ones), so its first two rounds are the
figure: 3.84x and 3.59x the peer's same round. Target 1 holds on this machine: PTB 3.32x (each round
3.19-3.61x), Yahoo-size 3.6-3.8x.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
SIZES = {"ptb": (256, 256, 10002), "yahoo": (512, 1024, 20000)}  # emb, hidden, vocabulary
PEER_FILES = ("modules/vae.py", "modules/encoders/enc_lstm.py", "data/text_data.py")


def write_corpus(size: str, folder: Path) -> Path:
    """PTB's training text, or random words of a 20k vocabulary with PTB's sentence lengths."""
    ptb = Path(os.environ.get("TEXTVAE_DATA_DIR", "")) / "ptb" / "ptb.train.txt"
    if not ptb.is_file():
        sys.exit(f"peer_throughput: {ptb} not found; set TEXTVAE_DATA_DIR")
    if size == "ptb":
        return ptb
    path = folder / "random20k.train.txt"
    if not path.is_file():
        rng = np.random.default_rng(0)
        vocab = SIZES[size][2] - 4  # the four special tokens each code adds
        lines = [" ".join(f"w{i}" for i in rng.integers(0, vocab, len(s.split())))
                 for s in ptb.read_text().splitlines() if s.split()]
        path.write_text("\n".join(lines) + "\n")
    return path


# ---- workers (one fresh process each) ----------------------------------------------------------
def peer_worker(job: dict[str, Any]) -> dict[str, Any]:
    """He et al.'s text.py training step, its own modules and batching, KL weight 1."""
    import torch
    from torch import nn

    sys.path.insert(0, job["peer_dir"])
    from data import MonoTextData  # noqa: E402 (the peer's package)
    from modules import VAE, LSTMDecoder, LSTMEncoder  # noqa: E402

    emb, hidden, _ = SIZES[job["size"]]
    args = argparse.Namespace(ni=emb, enc_nh=hidden, dec_nh=hidden, nz=32, dec_dropout_in=0.5,
                              dec_dropout_out=0.5, device=torch.device("cpu"))
    torch.manual_seed(job["seed"])
    data = MonoTextData(job["corpus"], label=False)

    def uniform(stdv: float):
        return lambda t: nn.init.uniform_(t, -stdv, stdv)

    vae = VAE(LSTMEncoder(args, len(data.vocab), uniform(0.01), uniform(0.1)),
              LSTMDecoder(args, data.vocab, uniform(0.01), uniform(0.1)), args)
    enc_opt = torch.optim.SGD(vae.encoder.parameters(), lr=1.0)
    dec_opt = torch.optim.SGD(vae.decoder.parameters(), lr=1.0)
    batches = data.create_data_batch(batch_size=32, device=args.device, batch_first=True)
    order = np.random.default_rng(job["seed"]).permutation(len(batches))
    vae.train()

    def step(batch: torch.Tensor) -> None:
        enc_opt.zero_grad()
        dec_opt.zero_grad()
        loss, _, _ = vae.loss(batch, 1.0, nsamples=1)
        loss.mean(dim=-1).backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 5.0)
        enc_opt.step()
        dec_opt.step()

    for i in order[: job["warmup"]]:
        step(batches[i])
    timed = [batches[i] for i in order[job["warmup"]: job["warmup"] + job["steps"]]]
    t0 = time.perf_counter()
    for batch in timed:
        step(batch)
    seconds = time.perf_counter() - t0
    lengths = np.concatenate([np.full(b.shape[0], b.shape[1] - 1) for b in timed])  # predicted tokens
    return {"seconds": seconds, "tokens": int(lengths.sum()), "lengths": lengths.tolist()}


def textvae_worker(job: dict[str, Any]) -> dict[str, Any]:
    """textvae's hot path (throughput.Stepper) on its bucketed batches of the same corpus."""
    sys.path.insert(0, str(HERE))
    import torch
    import throughput as tp
    from textvae.tasks.runconfig import parse_run_config
    from textvae.data.datasets import load_dataset

    overrides = [] if job["size"] == "ptb" else ["--data.name", job["corpus"]]
    cfg, _ = parse_run_config([tp.RECIPE, *overrides])
    bundle = load_dataset(cfg.data)
    split = bundle.splits["train"]
    plan = split.sampler(32, shuffle=True, seed=job["seed"], pool_batches=cfg.data.bucket_pool).epoch_batches(0)
    batches = [[split.ids[i] for i in index] for index in plan[: job["warmup"] + job["steps"]]]
    emb, hidden, _ = SIZES[job["size"]]
    tp.SIZES[job["size"]] = (emb, hidden, bundle.tokenizer.vocab_size)
    counts = torch.ones(bundle.tokenizer.vocab_size)
    tp.native_status()  # the C++ kernel built (or loaded from its cache) before any step is timed
    tp.retain_freed_memory()  # as the training loop does by default (train.retain_memory)
    variant = tp.Variant(job["path"], precision=job["precision"], native=job["native"], copies=job["copies"])
    stepper = tp.Stepper(variant, job["size"], counts)
    stepper.run(batches[: job["warmup"]], time.perf_counter)
    timed = batches[job["warmup"]:]
    t0 = time.perf_counter()
    stepper.run(timed, time.perf_counter)
    seconds = time.perf_counter() - t0
    lengths = np.array([len(s) - 1 for b in timed for s in b])
    return {"seconds": seconds, "tokens": int(lengths.sum()), "lengths": lengths.tolist()}


def run_worker(job: dict[str, Any], threads: int) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(job)], env=env,
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise SystemExit(f"peer_throughput: worker {job['path']} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---- the comparison ----------------------------------------------------------------------------
def peer_checkout_problem(peer_dir: str | None) -> str | None:
    if not peer_dir:
        return "no --peer-dir given"
    missing = [f for f in PEER_FILES if not (Path(peer_dir) / f).is_file()]
    return f"{peer_dir} is not a checkout of jxhe/vae-lagging-encoder (missing {', '.join(missing)})" \
        if missing else None


def compare(args: argparse.Namespace, size: str, corpus: Path, peaks: dict[str, float]) -> None:
    sys.path.insert(0, str(HERE))
    import throughput as tp

    paths = [("He et al. (fp32)", "peer", "fp32", False, False), ("textvae fp32", "textvae", "fp32", False, False),
             ("textvae bf16, torch ops", "textvae", "bf16", False, False),
             ("textvae bf16 + C++ kernels (exact)", "textvae", "bf16", True, False),
             ("textvae bf16 + weight copies (exact)", "textvae", "bf16", True, True)]
    paths = [p for p in paths if p[2] == "fp32" or tp.CPU_BF16]  # AVX2 only: textvae refuses bf16
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, *_ in paths}
    for r in range(args.rounds):
        for name, code, precision, native, copies in paths:
            job = {"code": code, "path": name, "precision": precision, "native": native, "copies": copies, "size": size,
                   "corpus": str(corpus), "peer_dir": args.peer_dir, "steps": args.steps, "warmup": args.warmup,
                   "seed": r}
            results[name].append(run_worker(job, args.threads))
    emb, hidden, vocab = SIZES[size]
    print(f"\n== {size} {emb}/{hidden}/32, V = {vocab}, batch 32, {args.steps} steps after {args.warmup}, "
          f"{args.threads} threads, {args.rounds} rounds; roof fp32 {peaks['fp32']:.0f} / bf16 "
          f"{peaks['bf16']:.0f} GFLOP/s")
    print(f"{'code':<36} {'tok/s per round':<30} {'median':>8} {'vs peer':>8} {'% roof':>7}")
    peer_median = None
    for name, _, precision, *_ in paths:
        rates = [r["tokens"] / r["seconds"] for r in results[name]]
        med = statistics.median(rates)
        peer_median = peer_median or med
        # the workers record predicted tokens (n + 1 a sentence); step_flops takes whole sentences (n + 2)
        per_token = np.mean([tp.step_flops(emb, hidden, 32, vocab, np.array(r["lengths"]) + 1) / r["tokens"]
                             for r in results[name]])
        share = med * per_token / 1e9 / peaks[precision]
        print(f"{name:<36} {' / '.join(f'{x:,.0f}' for x in rates):<30} {med:>8,.0f} "
              f"{med / peer_median:>7.2f}x {share:>7.1%}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peer-dir", help="a scratch checkout of jxhe/vae-lagging-encoder")
    ap.add_argument("--sizes", nargs="+", default=["ptb", "yahoo"], choices=sorted(SIZES))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        job = json.loads(args.worker)
        print(json.dumps((peer_worker if job["code"] == "peer" else textvae_worker)(job)))
        return
    problem = peer_checkout_problem(args.peer_dir)
    if problem:
        print(f"peer_throughput: skipped: {problem}")
        return
    sys.path.insert(0, str(HERE))
    import torch
    import throughput as tp

    torch.set_num_threads(args.threads)
    clock = time.perf_counter
    peaks = tp.gemm_roofs(3, clock)
    with tempfile.TemporaryDirectory() as scratch:
        for size in args.sizes:
            compare(args, size, write_corpus(size, Path(scratch)), peaks)
    after = tp.gemm_roofs(3, clock)
    print(f"\nroof after the rounds: fp32 {after['fp32']:.0f} / bf16 {after['bf16']:.0f} GFLOP/s; {tp.load()}")


if __name__ == "__main__":
    main()
