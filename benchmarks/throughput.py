"""Issue 6 figures: training and evaluation throughput, measured against this machine's limits.

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/throughput.py [--threads 2] [--clock wall]
        [--sections peak train retain bucketing optim iw epoch] [--repeats 5] [--steps 30] [--json out.json]

Sections (each prints a table with the load average it ran under):

* ``peak``: GFLOP/s of 2048^3 fp32 and bf16 GEMMs (best of ``--repeats``): the roof.
* ``train``: training steps of the PTB 256/256/32 LSTM-VAE (real PTB batches of the bucketed
  plan) and of the Yahoo-size 512/1024/32 model (the same lengths, random ids, V = 20k), batch 32,
  SGD, clip 5 and the loop's non-finite check, exactly as the loop's hot path. The variants (the
  levers, each cumulative on the previous one: the unpacked one-direction encoder, the decoders'
  ``Dropout``, the fused loss -- which in fp32 on CPU pads V to a multiple of 16 --, the lean
  clip, sparse embedding gradients under plain SGD) are timed **interleaved**: each repeat runs every
  variant on the same batches in turn, so load from other processes hits all alike; median and
  best repeat are reported. Achieved FLOP/s counts useful FLOPs analytically (:func:`step_flops`:
  real tokens only, GEMMs only, backward = 2 x forward) against the GEMM peak of the variant's
  precision. Also the share of time outside forward/backward (batch collation) and in the update
  (clip, check, SGD).
* ``retain``: ``train.retain_memory`` off / on (process-wide, so alternating fresh processes).
* ``bucketing``: padding of the training plan against ``data.bucket_pool``.
* ``optim``: one optimiser step over the PTB model's parameters: SGD, and Adam as torch's per-tensor
  loop, its foreach path and its fused kernel (what ``optim.name: adam`` builds).
* ``iw``: IW-NLL (``textvae.metrics.iw_nll``, K = 500) sentences/s on PTB test sentences for
  several ``max_tokens`` budgets, fused vs reference loss, fp32 vs bf16 (``--iw-variants``), one
  fresh process per run so each peak RSS is its own, with the share of the bf16 GEMM roof achieved
  and each estimate's difference from fused fp32 (same sentences and samples); then the peak RSS
  against K at a fixed budget. ``--iw-batches N`` evaluates N batches evenly spaced in the test
  split's length-sorted evaluation plan (0: all of it), as a test report does; without it, the
  ``--iw-sentences`` sentences spread evenly over the test split (``Split.subset``: where the notes
  below say "the first N sentences", read these) as one batch of mixed lengths, whose padding and
  (a pass of one batch) Monte Carlo redraw double the work counted (figures before 2026-12-06).
* ``epoch``: one PTB epoch of ``recipes/ptb/vae.yaml`` through ``run_training`` in a fresh
  process per variant and seed (``--epoch-seeds``; ``reference-*`` patches the code back to
  before issue 6): tokens/s, validation -ELBO (the NLL bound the loop validates with), KL, peak
  RSS, and the fp32 GEMM roof measured just before and after the run (this shared host's speed
  drifts by 10-20 % over an hour); with several seeds, mean ± sd. The trained fp32 model
  (``--out``/fp32/model) is what the ``iw`` section then evaluates.

``--clock cpu`` times with this process's CPU time instead of wall time: with ``--threads 1`` it
is nearly immune to other processes' load, for A/B comparisons on a busy machine; absolute
figures are wall-clock ones taken while the load average stays below the core count.

Levers not kept (measured while building this): ``torch.compile`` of the train step fails in
dynamo (symbolic shapes in the posterior's ``randn``); compiled on its own, the softmax part of
the loss took 30 s to compile and saved ~4 ms of a 130 ms step; inductor leaves LSTMs to aten
anyway. In the fused loss, computing the logits transposed (W h^T: MKL's fp32 GEMM at ~180
GFLOP/s) lost its gain to the dim-0 softmax in the real step; the bias as one more GEMM input
column was slower in fp32; bf16 chunks of 1024 tokens instead of 256 changed nothing; the batch's
targets as certain candidates of the sampled softmax gave no better -ELBO over 3 seeds; writing G
in bf16 straight from an fp32 log-softmax (``exp(.., out=G)``) was slower than softmax + copy.
The sampled softmax pads its GEMM's N and |S| to multiples of 64: oneDNN builds and JIT-compiles
a primitive per new shape (bf16 [N, 256] x [256, |S|] forward + backward: 5.5 ms per call at
first sight vs 3.6 ms once cached), and |S| is random, so unpadded nearly every step paid it
(bf16 + sampled step: 17.8k -> 18.8-21.2k tok/s). The full softmax's shapes mostly repeat
(fixed chunks; N new on ~35 % of steps): padding its N to 16 showed no gain (200 first-seen PTB
batches, bf16: 9.9-10.4k tok/s either way).
``OMP_WAIT_POLICY=ACTIVE`` did not help (libgomp's default already spins between the LSTM's
small parallel regions; ``PASSIVE`` costs 25-40 %). The sampled softmax (``train.sampled_softmax``,
variants ``... sampled softmax`` and ``*-sampled*``) trains a biased estimate of the
reconstruction term, so it is opt-in, never the default: the ``epoch`` section shows what it costs
in validation -ELBO (always full softmax).

Issue 18 (one thread, ``--clock cpu``, A and B in fresh processes taken in turn, medians; the host
was busy, so only ratios mean anything). Under bf16 autocast the LSTMs do run in bf16: oneDNN's bf16
kernel takes 25 ms for a [96 x 41, 288] -> 256 forward against 46 ms in fp32 (~170 GFLOP/s, near
the bf16 GEMM roof), and it already computes the input projection of all time steps in one GEMM.
A profile of the bf16 PTB step: the output layer's GEMMs ~45 %, the LSTMs (forward + backward)
~25 %, the fused loss's softmax and casts most of the rest. Kept: the fused loss adds its fp32 bias
after an explicit fp32 cast of the bf16 logits rather than in one mixed-dtype add (0.5 vs 1-10 ms
per 256 x 10k chunk in isolation, the same bits; in the step it is within the noise: PTB 5,383 ->
5,469, Yahoo 658 -> 665 tok/s, 5 pairs); the test report's IW pass keeps freed memory (after
training's is given back; ``--retain-memory released`` is the setting it ran under before): iw_nll, K = 500
over 32 PTB test sentences, untrained model, bf16 1.01 -> 1.72 sent/s (3 pairs), fp32 0.72 -> 0.96
(1 pair), the estimate the same to the bit, peak 43 -> 95 MB above the loaded model; the ``iw``
section (``--iw-sentences 16 --iw-budgets 4096 16384 --iw-k-sweep 500 2000``, released vs on, 2
pairs) at the default budget 4096: bf16 1.06 / 0.95 -> 1.69 / 1.58 sent/s, fused fp32 0.75 / 0.70
-> 0.90 / 0.86, peak 50 -> ~100 MB (bf16) and 60 -> ~115 MB (fp32), still not growing with K
(K = 500 and 2000 alike at budget 16384); the larger budget pays no more under either. The bf16 IW
pass is then ~3/4 output layer (of which ~2/3 is GEMM at the roof, the rest the fp32 cast, bias
and log-softmax) and ~1/4 LSTM. Not kept: the embedding half of the decoder's input projection
computed once per sentence and the z half once per sample, with a Python-loop LSTM over those
precomputed gates (24 samples x 4 sentences x 41 steps): fp32 46 -> 38 ms, but bf16 25 -> 32 ms --
oneDNN's fused cell wins in bf16, and torch has no CPU kernel for a cell over precomputed gates;
``logsumexp`` instead of the in-place log-softmax in evaluation: 22 vs 10 ms per chunk; a reused
fp32 logits buffer: no change (9.9 vs 10.0 ms); a bf16 GEMM writing fp32 logits (``torch.mm(...,
out_dtype=)``) is not implemented on CPU.

Issue 18's precision condition (bf16 validation NLL after one epoch against fp32, paired seeds):
``--sections epoch --threads 1 --epoch-variants fp32 bf16 --epoch-seeds 1 2 3 4 5`` (2026-12-04, one
PTB study run on the other core; tok/s are not speed figures). Valid -ELBO after the epoch, fp32 ->
bf16: 120.697 -> 120.906, 122.157 -> 122.068, 121.598 -> 122.282, 122.475 -> 122.356, 121.314 ->
121.240, i.e. +0.173, -0.073, +0.563, -0.097, -0.061 %: mean +0.101 % (sd 0.28 %, standard error
0.13 %), no detectable bias, but single pairs differ by up to 0.56 %. After one epoch the pair's own
trajectories have drifted apart (bf16 rounding changes every update), and across seeds fp32 itself
varies by sd 0.70 nats (0.58 %), so one epoch cannot show 0.1 % per pair. At convergence the same
model pair (``lm`` in the PTB study, 48 epochs) differs by -0.005 nats (0.005 %).

Issue 18, quiet machine (every other process stopped), 2 threads, wall clock: ``--sections peak iw
--iw-model <PTB VAE after 1,000 steps, AU 32, KL 9.5> --iw-sentences 16 --iw-budgets 4096 16384
--iw-repeats 2 --iw-k-sweep 500 2000`` (roof bf16 420 GFLOP/s; % roof: decoder GEMM FLOPs of
:func:`iw_token_flops`, 6.3 MFLOP per token and sample):

    max_tokens  loss       prec  sent/s  % bf16 roof  IW-NLL    vs fp32   eval peak MB
    4096        reference  fp32  1.481   24.9 %       128.606   0         178
    4096        fused      fp32  1.554   26.1 %       128.606   0          92
    4096        fused      bf16  2.960   49.7 %       128.612   +0.0065    75
    16384       reference  fp32  1.537   25.8 %       128.606   0         724
    16384       fused      fp32  1.654   27.8 %       128.606   0         143
    16384       fused      bf16  3.310   55.6 %       128.612   +0.0065   105

At the default budget the full PTB test set (3,761 sentences) takes 3761 / 2.96 = 21 minutes in
bf16 (~19 at 16384), against 15 minutes at 70 % of the roof. Evaluation memory does not grow with
K (136 MB at K = 500, 160 MB at K = 2000, budget 16384). The larger budget pays only with two
threads: the same section at one thread (``--threads 1 --clock cpu --iw-repeats 3``, busy host) gave
bf16 1.676 / 1.681 sent/s and fused fp32 0.909 / 0.877 at 4096 / 16384 (58.7 % of the one-thread
bf16 roof): the IW pass loses efficiency in splitting its GEMMs over two threads, not in its budget;
the default stays 4096, which bounds the memory of decoders that write whole logits. Not kept: ``torch.compile`` of the
evaluation loss's elementwise part (fp32 cast, bias, logsumexp, target gather) as one inductor
kernel: 3.2 -> 2.4 ms per 256 x 10k chunk beside its 7.2 ms bf16 GEMM (one thread, CPU clock, the
same figures to 2e-6), i.e. under 8 % of the IW pass, for a compile of ~2 minutes and a C++
toolchain at run time. Nor the evaluation loss's fp32 part (cast, bias, log-softmax, gather) in
sub-chunks of 32-128 of each 256-token chunk's bf16 logits, through one reused fp32 buffer: 9.68 ->
9.17 ms per chunk (medians of 15 interleaved repeats, one thread, CPU clock, the same figures to the
bit; fp32 unchanged), ~4 % of the IW pass, for a second loop in the fused loss.

Where a bf16 PTB training step goes on the quiet machine at 2 threads (``torch.profiler``, 30 steps
of the default variant, ~700 tokens each, 71 ms per step): the GEMMs 32 ms (the output layer's three
at ~90 % of the roof), the LSTMs 19 ms (forward 6, backward 13: ~57 % of the roof for their 4.5
GFLOP), copies 5.7 ms (the fused loss's fp32 cast and bf16 G write, weight casts), softmax 2.1,
adds 1.8, dropout masks 1.2, the rest under 1 ms each. The 65 % of the roof that 3x the peer needs
is ~57 ms per step: removing every copy, softmax and add would not reach it. Both parts scale with
threads (quiet, bf16: decoder LSTM forward + backward 16 -> 10 ms, the output GEMMs 56 -> 30 ms
from 1 to 2 threads), so switching thread counts inside the step is no lever either.

Issue 18, target 3 (a converged PTB VAE row, training plus the K = 500 test report, in under 60
minutes on 2 cores). The converged rows of the PTB study (``studies/ptb_reproduce.yaml``, bf16, exact
objective, one thread per row, two rows at a time on the 2 cores; ``results.json`` of the study,
2026-12-04/05) took: ``annealed`` 54 epochs, 148 min training (5,637 tok/s) + 33 min test report;
``bn_vae`` 72 epochs, 189 + 33; ``pretrain_fb_inrun`` 100 epochs (the cap), 330 + 34; ``pretrain_fb``
100 epochs, 311 + 32 plus its autoencoder's 289; ``lm`` 48 epochs, 153 (exact NLL, no IW pass). The
shortest VAE row, ``annealed``, trains 54 x 0.93M = 50M tokens before its plateau schedule stops: in
60 minutes less a test report at 70 % of the roof (15 min) that is 18.6k tok/s, at or above the bf16
GEMM roof of the exact step (~18k tok/s at ~22 MFLOP per token). So no exact-objective
implementation meets target 3 on this CPU for the rows as their papers schedule them; with both
threads on one row (about 1.75x one thread for these steps, measured above) ``annealed`` would take
about 85 + 18 minutes.

The machine of 2026-12-05 (an Intel Xeon with AMX-BF16: 2048^3 GEMM roofs fp32 ~370, bf16 ~2,400
GFLOP/s at 2 threads, 6.5x apart where the EPYC's were 2.2x) changes the picture: the bf16 step's
GEMMs now take a fraction of it. Kept: the bf16 fused loss pads its GEMMs' token dimension with zero
rows to a multiple of 64 (``textvae.models.fused_loss.GEMM_ROWS``). oneDNN builds a kernel for each
new GEMM shape; with AMX a build costs ~15-20 ms where the GEMM itself ([~900, 10002] x [10002, 256],
bf16, one thread) takes 4.7 ms, and N (real tokens in the batch) is new on most steps. Same NLL and
gradients to the bit (``tests/test_perf_levers.py``). ``--sections epoch --threads 2 --epoch-variants
bf16 bf16-unpadded --epoch-seeds 1``, quiet machine (every other process stopped), one fresh process each:

    variant          tok/s   wall s   valid -ELBO   peak RSS MB
    bf16             17,149      60       120.899         1,081
    bf16-unpadded    13,618      75       120.744         3,947

(+26 %; the unpadded run also holds ~2.9 GB more, oneDNN's cache of kernels for every shape it met.)
One thread, CPU clock, busy host, 200 steps: 10.9k against 8.5k tok/s (two pairs). Also kept, in
bf16 only: the forward GEMM's right operand W^T made contiguous once per call (four 256-row chunks,
quiet, copy included: 6.9 -> 6.2 ms); fp32's single chunk is as fast on the transposed view (42.4 ms
against 41.5 contiguous, [900, 256] x [256, 10016]) and its copy would cost ~6 ms. Where the rest goes: per 256-token chunk the fp32 cast (~1.2 ms),
bias add (0.4), softmax / log-softmax (1.2-1.3) and max passes now cost more than the chunk's GEMM
(~1.1 ms at the roof): in the loss, elementwise work, not GEMM work, takes most of the time.

Where a bf16 PTB step goes on this CPU (``torch.profiler``, 50 steps of the default variant, one
thread, the study on both cores, so shares only): of ~58 ms of forward + backward per step, the
output layer's GEMMs ~15 ms, the fused loss's elementwise passes ~16 ms (its two [256, V] casts,
bf16 -> fp32 logits and fp32 -> bf16 G, ~9; softmax 3.5; the max passes 1.8; bias 1.2), the LSTMs
~14 (backward 11), the output weight's cast and transpose ~2.5. Levers for the elementwise part, not
kept (one [256, 10002] chunk: cast, bias, softmax, NLL and G from its bf16 logits; medians of 20
interleaved repeats, wall clock, quiet machine, 1 / 2 threads; the chunk's GEMM 1.24 / 0.68 ms):

    as it is                                             3.69 / 2.02 ms
    the same ops over sub-chunks of 32 tokens through
      one reused fp32 buffer that stays in L2            3.28 / 1.80 ms  (same bits)
    torch.compile (inductor) of the whole part           3.44 / 1.79 ms  (41 s to compile, a C++ toolchain)

About 0.2-0.4 ms per chunk, ~3 chunks per step: 1-2 % of the step. The softmax's exp over 2.56M
elements is ~1.1 ms at one thread by itself, so even a one-pass kernel would save at most ~2 ms per
chunk at one thread and ~1 at two: ~3 ms of the step's ~44 ms at two threads, where 3x the peer
needs ~31 ms. Nor the backward's
G W as G (W^T)^T on the forward's contiguous W^T (4.64 against 4.79 ms, [900, V] x [V, 256], one
thread): within the noise.

Kept: ``optim.name: adam`` builds torch's fused Adam. Adam's gradients are dense (its moments decay
on every row, so the embeddings' sparse gradients do not apply), and torch's default on a CPU is a
loop over the parameters, seven or so elementwise passes over each parameter and its two moments:
for the PTB model's 8.8M parameters that is a large share of a step. ``--sections optim`` (one
optimiser step, median of 30, quiet machine, wall clock), and the same study row before and
after (``cyclical`` seed 2 of ``studies/ptb_reproduce.yaml``, bf16, both cores, epochs 1-3, tok/s of
the training passes; validation -ELBO of epochs 1-2 the same to 0.005 nats):

    one step                                     2 threads   1 thread
    sgd (dense gradients)                         2.57 ms     4.66 ms
    adam per-tensor (torch's CPU default)        14.41       27.62
    adam foreach                                 14.39       27.21
    adam fused (optim.name adam)                  5.23        9.80

    cyclical seed 2, per-tensor Adam (c07cbb3)   9,891 / 9,760 / 10,086 tok/s
    cyclical seed 2, fused Adam (28eb66c)       12,545 / 11,835 / 12,039 tok/s   (+22 %)

An Adam row still trains slower than an SGD one (12k against 17k tok/s): its update reads and writes
all 8.8M parameters, their gradients and both moments every step, and its embeddings' gradients are
dense [V, 256] tensors, where plain SGD's are sparse (and, found later, its moments held denormals:
see the ``denormals`` section below).

The IW pass (``--sections peak iw --threads 2 --iw-model <kl_constraint's model, AU 27> --iw-sentences
16 --iw-budgets 4096 16384 --iw-repeats 2 --iw-k-sweep 500``, quiet): bf16 3.44 / 3.84 sent/s at
budget 4096 / 16384 (10.0 / 11.1 % of the bf16 roof), fused fp32 1.39 / 1.51, bf16 - fp32 -0.0067
nats, eval peak 90 / 139 MB (bf16). The whole K = 500 test report of ``kl_constraint`` (IW pass with
its redraw, ELBO, MI, AU) took 9.9 min at 2 threads. With one thread (CPU clock, busy host) 2.00 / 2.19
sent/s, of which the fused loss is ~80 %: its GEMMs ~23 %, the fp32 cast ~13 %, the rest bias,
log-softmax and indexing. (torch.profiler misattributes this pass: it reports the cast at ~25 ms per
chunk, against 1.2 ms timed directly.)

Target 3 on this machine: ``kl_constraint`` (49 epochs to its plateau stop, both cores, commit 1b0a546,
before the padding) took 100.4 + 9.9 min; at the padded epoch's 60 s its 49 epochs would take ~49 +
10 min, at the limit of target 3, and ``annealed``'s 54 epochs ~54 + 10.

Target 3 measured: ``cyclical`` seed 2 (``docs/results/ptb/run.sh``; bf16, exact objective, Fu et al.'s
fixed 40 epochs with Adam, the table's shortest VAE schedule), alone on both cores of the Xeon at
commit 28eb66c (padded loss GEMMs, fused Adam), 2026-12-05 15:52:36 to 16:56:07 UTC: **63.5 minutes**
from start to test report, of which training 52.4 min (11,822 tok/s), the 40 epoch-end validations
1.8 min, the K = 500 test report 9.3 min. It ends at IW-NLL 102.42, KL 0.97, MI 0.95, AU 5 (seed 1:
102.41). Over the 60 minutes by 6 %: the Adam update (above) keeps this row at 12k tok/s where an SGD
row trains at 17k; the SGD rows' schedules are longer (``annealed`` 54 epochs, ~54 x 63 s + 10 min
report = ~67 min).

Kept: denormals flushed to zero (``train.flush_denormals``, on by default; FTZ and DAZ in every
intra-op thread, :mod:`textvae.training.denormals`). Part of what an Adam row's update cost was
denormals: the first moment of a rare word's embedding row decays by 0.9 each step its word is
absent and passes through the denormal range, where x86 takes a microcode assist per instruction.
At the end of ``cyclical`` seed 2, 122,503 of the 17.6M moment elements were denormal. Its fused Adam
step over the two embeddings alone: 10.3-11.0 ms as saved against 3.4 ms with denormals flushed (one
thread); ``torch.set_flush_denormal`` alone changed nothing at two threads, because it sets the calling
thread only. ``--sections denormals --threads 2 --denormal-rounds 3 --steps 40 --warmup 10
--denormal-checkpoint <cyclical/seed2/checkpoint.safetensors>`` (quiet, 2026-12-05 17:46 UTC; bf16 steps from
that checkpoint's weights and moments, each in a fresh process, taken in turn):

    denormals  tok/s per round             median  fwd+bwd ms  update ms
    kept       11,298 / 12,601 / 11,882    11,882       43.0       15.3
    flushed    13,485 / 13,947 / 13,841    13,841       40.0        9.1

The kept figure is the study's (11.8k tok/s over the row's 40 epochs), though the two are not quite the
same measure: this one leaves out the batches' collation and the periodic metrics, which the loop's includes. The flushed update (9.1 ms)
is what a fresh Adam state costs, so the lever only removes what the trained state added. SGD rows do
not change: from ``pretrain_ae``'s epoch-12 checkpoint (SGD, sparse gradients), 9.8-9.9k tok/s kept
against 9.9-10.4k flushed (one thread, CPU clock).

Changed with it: the CPU's default IW budget (``textvae.metrics.likelihood.DEFAULT_MAX_TOKENS``) is
16384 instead of 4096, after the IW figures above (3.44 -> 3.84 sent/s, +50 MB; the estimate is the
same, because samples do not depend on the chunking).

Target 3 measured again with both: ``cyclical`` seed 3 (``docs/results/ptb/run.sh``; the same row,
configuration and machine as seed 2 above), alone on both cores at commit e34e6a3, 2026-12-05 17:47:09
(chain start) to 18:41:31 UTC: **54.4 minutes** from start to test report, of which training 44.8 min
(13,825 tok/s, against seed 2's 11,822), the 40 validations 1.7 min, the K = 500 test report 7.8 min
(against 9.3). It ends at IW-NLL 102.30, KL 1.52, MI 1.47, AU 3 (seeds 1, 2: 102.41, 102.42).

Kept: a C++ kernel for the bf16 loss's elementwise part (``train.native_kernels``, on by default;
:mod:`textvae.models.native` builds ``textvae/models/csrc/softmax_rows.cpp`` with ``-O3 -march=native``
on first use, ~25 s, and falls back to torch operations where it cannot). Per token row it reads the
bf16 logits once into an fp32 row buffer that stays in L1/L2 (bias added, max), then exp and sum, then
writes G in bf16: three passes over a row in cache where torch made ~8 over [256, V] fp32 tensors in
memory; its exp is a vectorised Taylor polynomial after range reduction (within a few fp32 ulps:
``tests/test_native.py``); its rows are split over torch's own OpenMP threads (compiled with
``-fopenmp``, it links the libgomp torch loaded). One [256, 10002] chunk from its bf16 logits
(medians of 20 interleaved repeats, quiet, wall clock, 1 / 2 threads):

    torch operations (cast, bias, max, softmax, NLL, G)     3.58 / 1.94 ms
    the kernel, 256-bit vectors (gcc's default here)        1.47 / 0.77 ms
    the kernel, 512-bit vectors (-mprefer-vector-width)     1.23 / 0.64 ms
    evaluation: torch log-softmax + gather / the kernel     2.32 / 1.18  ->  0.88 / 0.48 ms

In the step (``Stepper``, real PTB batches, freed memory kept as the loop does, alternating rounds of
60 steps in one process, quiet, 2 threads, two runs; the later rounds): torch ops 17.5-18.6k tok/s
against 21.1-21.7k with the kernel. Also
changed: the forward GEMM reads W^T as a view, no longer through a contiguous copy (torch's
transposing copy of the bf16 [10002, 256] weight takes 2-4 ms; view 21.3k against copy 20.6k tok/s,
5 rounds interleaved in one process; without the freed-memory setting 20.0k against 18.5k). The IW
pass (``--sections peak iw --threads 2 --iw-model <kl_constraint's model> --iw-sentences 16
--iw-budgets 16384 --iw-repeats 2 --iw-k-sweep 500``, quiet, 2026-12-05 20:48 UTC, roof bf16 2,617
GFLOP/s):

    max_tokens  loss       prec  sent/s  % bf16 roof  IW-NLL    vs fp32   eval peak MB
    16384       reference  fp32  1.545    4.2 %       111.965   0          824
    16384       fused      fp32  1.765    4.8 %       111.965   0          173
    16384       fused      bf16  4.190   11.3 %       111.958   -0.0067    135
    16384       fused+C++  bf16  5.671   15.3 %       111.958   -0.0067    123

(+35 % for the IW pass; the estimate the same to the printed digits.) A whole PTB epoch through
``run_training`` (``--sections epoch --threads 2 --epoch-variants bf16 bf16-torchops --epoch-seeds 1``,
quiet, 20:55 UTC; ``-torchops`` is ``train.native_kernels false``):

    variant         tok/s   wall s   valid -ELBO   peak RSS MB (train / with test report)
    bf16           21,210       50       120.789     986 / 1,303
    bf16-torchops  18,338       56       120.899   1,067 / 1,069

(+16 %; 2.66x the peer's 7,982 of ``peer_throughput.py``, whose 60-step windows still meet first GEMM
shapes that a run builds once.) Issue 18's precision condition again, with the kernel (``--sections epoch
--threads 2 --epoch-variants fp32 bf16 --epoch-seeds 1 2 3 4 5``, quiet, 22:19-22:33 UTC): valid -ELBO
after one epoch, fp32 -> bf16, 120.766 -> 120.789, 122.052 -> 122.112, 121.659 -> 122.025, 122.484 ->
122.397, 121.341 -> 121.284 (+0.019, +0.049, +0.301, -0.070, -0.047 %): mean +0.050 % (largest pair
0.30 %); fp32 121.660 ± 0.658 over the seeds, bf16 121.721 ± 0.664; 9,580 against 20,228 tok/s.
Not kept, measured the same way:
the logits transposed (W h^T [V, N], one GEMM for the whole batch, G^T written in place, the backward's
GEMMs on G^T) with a kernel over blocks of 16 or 32 token columns: its GEMMs are faster (forward 1.9
against 4.2 ms for 768 tokens, dW 1.3 against 2.4), but the column kernel's strided reads make it 2x
the row kernel (768 tokens: 3.9 against 2.0 ms), and the step ran at 20.2-20.5k against the rows'
21.3-21.7k; a tiled C++ transpose of the bf16 W for a contiguous W^T (cast + transpose 0.88 ms against
torch's 2.17): 19.2k against the view's 19.9k tok/s (5 interleaved rounds). Nor a C++ LSTM layer (a
scratch prototype: the input projection of all steps as one GEMM, then per step one ``at::mm`` of
h W_hh^T in bf16 and a vectorised gate kernel, the backward likewise, the weight gradients as GEMMs
over all steps): forward + backward of a PTB decoder layer (30 steps x 32, 288 -> 256) 9.7 ms against
oneDNN's 6.6, of a Yahoo-size one (544 -> 1024) 70.9 against 65.8 (quiet, 2 threads). It would also
round the gates' pre-activations to bf16 (torch's CPU GEMMs cannot write fp32 from bf16 inputs),
where oneDNN's bf16 cell can keep its gate scratch in fp32.

Kept: bf16 working copies (``train.bf16_weight_copies``, :mod:`textvae.training.working_copies`; on
by default with plain SGD). ``torch.profiler`` of the default bf16 step (quiet, 2 threads, 10 steps
after 15) put ``aten::copy_`` at 20.7 % of the Yahoo-size step (47 ms of ~230: per step two casts of
the [20000, 1024] output weight -- to bf16 for the forward, its bf16 gradient back to fp32 -- and of
each LSTM weight, forward and backward) and 8 % of PTB's (3.2 of ~40 ms). The forward and backward now
run on bf16 leaf tensors and one pass per weight (C++ ``sgd_bf16``) updates the fp32 master from the
bf16 gradient and rewrites the copy. A first cut (the copies through ``torch.func.functional_call``,
the update in torch operations) took the Yahoo-size forward + backward from 231 to 187-195 ms per
step; with the fused update ``peer_throughput.py`` measured +14 % (Yahoo-size) and +9 % (PTB) over the
kernel row. Not kept, measured with it: the fused loss's forward GEMM over 512 or 1024 tokens per
chunk instead of 256 (PTB, 3 interleaved rounds of 55 steps: 17.5-18.0k tok/s for all three).
A whole PTB epoch (``--sections epoch --threads 2 --epoch-variants bf16 bf16-nocopies --epoch-seeds 1``,
quiet, 00:22-00:25 UTC 2026-12-06, a slower day for this machine: see ``peer_throughput.py``;
``-nocopies`` is ``train.bf16_weight_copies false``): 19,254 against 18,490 tok/s (+4 %), valid -ELBO
120.828 against 120.789. The precision condition with the copies (``--epoch-variants bf16
--epoch-seeds 2 3 4 5``, the same quiet window; fp32 from the run above, whose code did not change):
fp32 -> bf16 120.766 -> 120.828, 122.052 -> 122.108, 121.659 -> 121.143, 122.484 -> 122.351, 121.341
-> 121.176 (+0.051, +0.046, -0.424, -0.109, -0.136 %): mean -0.114 % (bf16 the lower), sd of the
pairs 0.19 %, so a mean of five pairs carries ~0.09 % of noise from the runs' chaos alone. Five more
pairs (``--epoch-variants fp32 bf16 --epoch-seeds 6 7 8 9 10 --threads 2``, quiet, 00:52-01:00 UTC):
120.713 -> 120.655, 121.475 -> 121.553, 120.436 -> 120.429, 120.596 -> 120.634, 120.835 -> 120.719
(-0.048, +0.064, -0.006, +0.031, -0.095 %): mean -0.011 %, largest 0.095 %; over all ten pairs
-0.063 %. fp32 9,853 tok/s, bf16 with the copies 21,165 (19.7-22.0k) over the same five epochs.

Issue 18, 2026-12-06 (quiet: the study's runs stopped; 2 threads; a slow day for this host, bf16 roof
1,919-2,304 GFLOP/s). ``torch.profiler`` of the default bf16 PTB step with the working copies showed
three more passes that a kernel or a layout removes, each measured alone (medians, wall clock):

    the decoders' dropout mask + multiply, [32, 25, 256] fp32: torch (rand >= p)       0.72 ms
      textvae's ``dropout`` kernel (SplitMix64 hash of seed and index), fp32 / bf16      0.046 / 0.063
    the working copies' gradient norm (PTB's five bf16 gradients): torch, each
      ``vector_norm(g, dtype=float32)`` (an fp32 copy first)                            0.97
      ``sum_squares`` of the ``sgd_bf16`` kernel                                         0.13
    the output layer's forward GEMM, [256, 256] x [256, 10002]: W^T as a view          0.74-0.80
      W^T contiguous                                                                     0.60-0.63
    its weight gradient: G^T [h | g] ([10002, 768] x [768, 272]), then a copy of the
      [V, H] slice (0.38 ms)                                                             2.81-2.89
      dW^T = [h | g]^T G, both operands contiguous, no copy                             2.34

torch's CPU ``rand`` draws one element at a time from a locked Mersenne Twister (~2.5 ns per element);
gcc vectorised the norm's fp32 reduction only once it sat in a function of its own (inline in the
``parallel_reduce`` lambda it stayed scalar: 1.4 ms). The layout: the output weight's fp32 master is kept
transposed in memory when working copies apply (``working_copies.TRANSPOSED``), so its bf16 copy and the
copy's gradient are too, and autograd keeps that gradient without copying it. A [256, V] chunk as the
step runs it (the GEMM among the loss's other passes) took 1.44 ms with the view. ``Stepper`` on 60 PTB
batches after 20, then the same 60 again (all shapes met), fresh processes taken in turn:

    variant                                     first 60 (tok/s)    the same 60 again
    ee26b25 (before)                            16,980 / 17,531     18,765 / 19,029
    + dropout kernel + kernel norm              19,460 / 19,062     21,418 / 21,132   (update 4.5 -> 3.0 ms)
    + output weight transposed (kept)           20,680 / 20,483     22,928 / 23,411
      the same without the transposed layout    19,507 / 19,130     20,909 / 20,916

``peer_throughput.py`` has the side-by-side table: PTB 2.83x the peer, Yahoo-size 3.60x. In evaluation
(no gradients, bf16, a call of at least ``fused_loss.CONTIGUOUS_WT_TOKENS`` tokens) the fused loss makes
W^T contiguous once per call: the IW pass's calls have ~64 chunks. ``--sections iw --threads 2 --iw-model
<kl_constraint's model> --iw-sentences 16 --iw-budgets 16384 --iw-repeats 2 --iw-k-sweep 500`` (quiet,
02:43-02:46 UTC): fused + C++ bf16 4.26 sent/s (view) against 4.49 (copy), IW-NLL the same to the printed
digits (111.958, -0.0067 from fp32); 15.5 % of that run's bf16 roof. (The same command read 5.67 sent/s
on 2026-12-05: this host's speed drifts by ~25 % between days.)

Not kept, measured the same day:
- A C++ backward for the one-layer LSTM (oneDNN's forward kept, bit for bit): every step's
  pre-activations as one GEMM from the forward's output ([B T, I + H] x [I + H, 4H], rows padded to
  256), the cells' recurrence elementwise, the gradient's recurrence with one [B, 4H] x [4H, H] GEMM
  per step, the weight and input gradients as GEMMs over all steps. Its gradients were closer to a
  float64 reference than oneDNN's own (relative error 3.8e-3 against 4.6e-3 for dx, 4.3e-3 against
  4.95e-3 for dW_hh; [32, 25, 288] -> 256), but it was no faster: fwd + bwd 5.94 against 6.09 ms alone,
  and in the step (``Stepper``, two fresh-process pairs) 20,290 / 20,633 against 20,178 / 19,467 tok/s
  on new batches and 21,361 / 22,283 against 21,864 / 20,943 on the same ones, within the noise. Its
  per-step GEMM (~40 us) is what oneDNN's is, and the step-by-step part dominates at PTB's sizes.
- The loss's forward GEMM over 512 or 1024 tokens per chunk with W^T contiguous: 19.7-21.6k against
  20.0-21.1k tok/s at 256 (two rounds), within the noise.

The precision condition again (the dropout stream changed for fp32 and bf16 alike): ``--sections epoch
--threads 2 --epoch-variants fp32 bf16 --epoch-seeds 1 2 3 4 5`` and then ``... 6 7 8 9 10`` (quiet,
02:51-03:06 and 03:08-03:24 UTC). Valid -ELBO after one epoch, fp32 -> bf16: 120.682 -> 120.699,
122.357 -> 122.080, 121.428 -> 120.995, 122.146 -> 122.336, 121.220 -> 121.109 (+0.014, -0.227, -0.357,
+0.156, -0.091 %: mean -0.101 %); 120.761 -> 120.640, 121.484 -> 121.547, 120.249 -> 120.425, 120.525 ->
120.631, 120.762 -> 120.857 (-0.100, +0.052, +0.146, +0.089, +0.078 %: mean +0.053 %); **all ten pairs
-0.024 %**, largest pair 0.357 %. fp32 8,342 / 8,141 tok/s, bf16 20,207 / 19,351 over each set's epochs.

Issue 18, later on 2026-12-06 (quiet; 2 threads; bf16 roof 1,735-1,987 GFLOP/s, slower again). Kept: the
``lstm_bf16`` kernel (:mod:`textvae.models.lstm`, ``csrc/lstm_bf16.cpp``; under ``train.native_kernels``,
on CPUs with AMX), a one-layer LSTM's forward and backward recurrences in bf16 training. oneDNN's LSTM
spent its time around each step's small GEMM, its backward ~4x its forward. In the kernel the threads
stay in one OpenMP region for all steps with one barrier per step, each owning a block of hidden units
and their four gate columns (so its GEMM slice and its gates need no other thread's). A step's GEMMs
are oneDNN's AMX micro-kernel (``at::native::cpublas::brgemm``, bf16 operands, fp32 sums) on weight
slices packed once per call, which stay in the thread's L2. The forward keeps the gates, so the backward
recomputes nothing; the weight and input gradients are three GEMMs over all steps afterwards. The two
LSTM prototypes above called ``at::mm`` for each step's GEMM (~40 us at PTB's sizes); a thread's
micro-kernel calls for the same step take ~6-11 us. What mattered, measured alone (medians, 2 threads):
- The packed operand's alignment. 8 calls of [32, 256] x [256, 64]: 5.6-9.3 us from a 64-byte-aligned
  buffer, 12.5-13.5 us from one that is not (std::vector's 16-byte alignment).
- The weights' transposition for packing: an element at a time down a column 0.72 ms per forward, in
  16 x 16 tiles ~0.1.
- Each step's input projection as a second micro-kernel call into the same fp32 sums, instead of one
  GEMM over all steps before the recurrence: forward 1.30 against 1.50 ms.

One layer, forward and forward + backward (``[B, T, I] -> H``), oneDNN against the kernel, ms:

    [32, 22, 288] -> 256 (PTB decoder)    1.26 / 5.78   against   1.30 / 3.87
    [32, 22, 256] -> 256 (PTB encoder)    1.15 / 5.31   against   1.31 / 3.98
    [32, 40, 288] -> 256                  1.98 / 9.37   against   2.82 / 6.79
    [32, 22, 544] -> 1024 (Yahoo-size)   10.9 / 58.8    against  24.9 / 49.4

(The Yahoo-size forward is slower: each thread's packed weights, 6 MB, no longer fit its L2.) Of the
PTB decoder's 3.9 ms, the backward recurrence takes 0.69 (its per-step GEMMs 0.25, gates 0.33, barrier
0.04) and the three gradient GEMMs 1.13. Every output and gradient is closer to a float64 LSTM than
autocast's oneDNN LSTM: relative error 2.8e-3 against 3.0e-3 (output), 3.4e-3 against 4.4e-3 (dW_ih),
1.9e-3 against 3.8e-3 (db) (``tests/test_lstm_kernel.py`` checks each against 1 % and 2x oneDNN's).
``Stepper`` on 120 PTB batches after 20, fresh steppers in turn: 17,313 / 19,308 tok/s with oneDNN's
LSTM, 20,843 / 22,474 with the kernel (+16-20 %); at one thread (60 batches after 20, as a study's runs
train): 11,210 / 13,309 against 13,572 / 14,833 (+11-21 %). A whole bf16 epoch (``--sections epoch``) 21.4-23.6k
tok/s, 22.3k over nine seeds (20.2k and 19.4k last session, on a faster day).

The precision condition with the kernel (``--sections epoch --threads 2 --epoch-variants fp32 bf16
--epoch-seeds 1``, then ``--epoch-variants bf16 --epoch-seeds 2 3 4 5 6 7 8 9 10``; quiet, 05:44-05:57
UTC; fp32 is unchanged code, and seed 1 read 120.682 again, bit for bit). Valid -ELBO after one epoch,
fp32 -> bf16: 120.682 -> 120.632, 122.357 -> 121.946, 121.428 -> 120.879, 122.146 -> 122.449, 121.220 ->
121.270, 120.761 -> 120.723, 121.484 -> 121.415, 120.249 -> 120.420, 120.525 -> 120.661, 120.762 ->
120.743 (-0.041, -0.336, -0.452, +0.248, +0.041, -0.031, -0.057, +0.142, +0.113, -0.016 %): seeds 1-5
mean -0.108 %, seeds 6-10 +0.030 %, **all ten -0.039 %** (sd of the pairs 0.21 %, largest 0.45 %).

Also in this session: the clip scales a sparse embedding gradient's values in place, so it stays
coalesced and SGD's sparse add does not sort it again (the update's SGD part 0.64 -> 0.59 ms per step).
Not kept:
- The output layer's weight gradient GEMM on one thread while the other runs the LSTM's backward:
  9.39 against 9.42 ms for both in turn on two threads (oneDNN's LSTM forward + backward 8.8 ms on one
  thread, 5.9 on two).
- A pre-packed oneDNN weight for the loss's forward GEMM (``mkldnn._reorder_linear_weight``): 0.708
  against 0.724 ms per 256-token chunk, and slower at 512 tokens (1.48 against 1.15).

Issue 18's IW pass, 2026-12-06 (the twenty-first session; quiet, 2 threads; bf16 roof 1,950-2,216
GFLOP/s). First, what this section had measured: ``--iw-sentences 16`` is the first 16 sentences of the
test file as *one batch* of mixed lengths (padded to its longest, 41, for 22.6 tokens a sentence) and, a
pass of one batch, that batch's Monte Carlo redraw too, so the 15 % of the roof above counted about
half of the work done. ``--iw-batches N`` takes N batches evenly spaced in the length-sorted evaluation
plan, as a test report runs them, and ``decoded`` counts the redraw's work. A profile of the bf16 pass
on such batches (kl_constraint's model) put 29 % of its time in the output GEMMs, 23 % in the softmax
kernel, 16 % in oneDNN's LSTM and 21 % around it: the [S·B, T, E + D] input ``cat([embedding, z])`` and
its copy to time-major order. Kept:
- The decoder scores the S samples of a sentence without repeating its input
  (``Decoder.forward_samples``; for the LSTM, ``lstm.run_rnn_shared`` and the kernel's ``score_pass``):
  W_ih's embedding part applied once per sentence and its z part once per sample, both summed in fp32
  from bf16 operands, and each step only W_hh h_{t-1}. Without gradients the rows are independent, so
  the threads split the rows (blocks of 32, all T steps, no barrier) with the whole W_hh packed in
  each thread's L2. Per token and sample the LSTM with its input took ~3.4 us before (oneDNN, the cat
  and the copy; the profile's share of the unprofiled time), ~0.8-1.1 us in the kernel.
- The evaluation chunk of the fused loss with the C++ kernel: 512 tokens instead of 256 (the kernel's
  bf16 logits, 10 MB at V = 10k): its GEMM [512, 256] x [256, 10002] ran at 1,951-2,146 GFLOP/s against
  1,642-1,774 for two of 256 (1024: 2,226-2,638, but the pass as a whole gained nothing more; 2048 falls
  to ~550 GFLOP/s).
- The softmax kernel's two passes over a row written with AVX-512 intrinsics where the compiler targets
  AVX-512 (the portable loops otherwise): gcc vectorised the first pass (cast, bias, running max) poorly,
  and the exponential (the same formula, 2^n by ``scalef``) ran faster written out. ``nll_only`` on
  [512, 10002] bf16 logits: 2.2-2.3 -> 1.70-1.75 us per row (training's ``nll_and_grad`` shares both
  passes).
Measured and not kept as the default: an IW budget of 65536 tokens per decoder call in bf16 (each
call's fixed costs, such as the output weight's bf16 transposed copy, ~6 ms, spread over 4x the tokens):
the pass ~15 % faster (below), with 566 against 260 MB of IW working memory (the ``iw`` table). (The
training runs' RSS once quoted here, 1,828-2,348 MB against 1,309, does not bear on it: those runs of
``--sections epoch`` set ``train.iw_samples_final 0``, so their test reports had no IW pass.)

Before (cc4c482) and after, alternating fresh processes (``--sections peak iw --iw-model <kl_constraint's
model> --iw-batches 4 --iw-budgets 16384 --iw-repeats 1 --iw-variants fused bf16-c++ --iw-k-sweep 500``,
twice each, the "before" runs with ``PYTHONPATH`` at a checkout of cc4c482; 128 sentences), tok x K/s of
the bf16 C++ pass: 116,607 / 110,055 before, 136,637 / 139,425 after (+21 %; 32.9-35.2 % -> 40.5-40.8 %
of the roof); IW-NLL 105.032 in all four, +0.0023 from fp32's 105.030; eval peak 166-183 -> 106-132 MB.
Budgets on the same batches (``--iw-budgets 16384 65536 --iw-repeats 2 --iw-variants bf16-c++``): 141,546
against 168,897 tok x K/s (+19 %), eval peak 123 against 255 MB, the same estimate. The whole test split
(``--sections peak iw --iw-batches 0 --iw-repeats 1 --iw-variants bf16-c++``), 3,761 sentences:

    max_tokens  sent/s  tok*K/s  % bf16 roof (with the redraw)  IW-NLL   eval peak MB   pass
    16384       12.77   139,908  39.4 % (43.6 %)                105.399  260            4.9 min  (default)
    65536       14.98   164,168  46.6 % (51.6 %)                105.399  566            4.2 min

(The same estimate at both budgets: the samples do not depend on the chunking.) Issue 18's target 2 asks
for 70 % of the roof: the output GEMMs run at ~2.4 us per token and sample and the softmax at
~1.7, i.e. those two alone are ~73 % of the roof's time for the pass's FLOPs, before the LSTM (~0.8-1.1
us) and the rest. Reaching 70 % would need the softmax's exponentials to run under the GEMM (AMX and
AVX-512 are separate units of a core: one fused kernel issuing both), not measured here.

Training after these changes (the softmax kernel's passes are training's too, and a bf16 validation now
scores through ``score_pass``; quiet, 09:38-09:50 UTC). ``peer_throughput.py --peer-dir /tmp/peer --sizes
ptb --rounds 5 --steps 60 --warmup 20``: He et al. 6,432 / 6,905 / 6,810 / 6,666 / 6,646 tok/s, textvae's
default 21,386 / 20,839 / 21,009 / 21,123 / 21,066 (median **3.16x**, each round 3.02-3.32x; roof bf16
1,947-2,337). The precision condition (``--sections epoch --threads 2 --epoch-variants fp32 bf16
--epoch-seeds 1``, then ``--epoch-variants bf16 --epoch-seeds 2 3 4 5``): fp32 seed 1 read 120.682 again,
bit for bit (fp32 evaluation takes the unchanged path); valid -ELBO fp32 -> bf16 120.682 -> 120.906,
122.357 -> 122.019, 121.428 -> 121.021, 122.146 -> 122.157, 121.220 -> 121.485 (+0.186, -0.276, -0.335,
+0.009, +0.219 %: **mean -0.039 %**), a bf16 epoch at 23.2-24.7k tok/s (22.3k last session).

The IW pass again on 2026-12-07, back on an Intel Xeon with AMX-BF16 after eight sessions on an AVX2-only
EPYC (a new machine; commit 9beec83; the study's runs paused, 10:43-10:46 UTC): ``--sections peak iw
--threads 2 --iw-batches 4 --iw-budgets 16384 --iw-repeats 2 --iw-variants fused bf16-c++ --iw-k-sweep 500``
(an untrained model: no run folder survived the move). fused fp32 35,785 tok*K/s; fused + C++ bf16 162,992
(**42.2 %** of the bf16 roof, 47.1 % counting the redraw; 136,637-139,425 and 40.5-40.8 % on the machine
of 2026-12-06); the same estimate to the printed digits; eval peak 206 / 128 MB. No regression from the
changes made where none of this could run; target 2 (70 %) stays where the paragraph above leaves it.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from textvae.config import DecoderConfig, EncoderConfig, ModelConfig
from textvae.data.batch import collate
from textvae.data.batching import padding_fraction
from textvae.models.encoders import RNNEncoder, last_layer_final_state
from textvae.models.native import native_kernels, native_status, set_native_kernels
from textvae.models.sampled_softmax import SampledSoftmax
from textvae.models.textvae import TextVAE
from textvae.training.distributed import World
from textvae.training.train import TrainStep, bf16_supported, clip_gradients, nonfinite_figures, retain_freed_memory
from textvae.training.working_copies import WorkingCopies, clip_scale, working_copy_names

RECIPE = "ptb/vae"  # the packaged recipe
SIZES = {"ptb 256/256/32": (256, 256, 10002), "yahoo 512/1024/32": (512, 1024, 20001)}  # emb, hidden, V
CPU_BF16 = bf16_supported(torch.device("cpu"))  # False (AVX2 only): the bf16 rows are left out


# ---- measurement plumbing ----------------------------------------------------------------------
def clock_fn(kind: str) -> Callable[[], float]:
    return time.process_time if kind == "cpu" else time.perf_counter


def load() -> str:
    return f"load average {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores"


def reset_peak_rss() -> None:
    """Reset the process's peak-RSS counter (Linux: writing 5 to clear_refs)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- the roof ----------------------------------------------------------------------------------
def gemm_peak(dtype: torch.dtype, repeats: int, clock: Callable[[], float], n: int = 2048) -> float:
    """Best GFLOP/s of an n x n x n matmul in ``dtype``."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b
    best = math.inf
    for _ in range(max(repeats, 3)):
        t = clock()
        a @ b
        best = min(best, clock() - t)
    return 2 * n**3 / best / 1e9


def gemm_roofs(repeats: int, clock: Callable[[], float]) -> dict[str, float]:
    """The fp32 and bf16 roofs (:func:`gemm_peak`); bf16's NaN where the CPU has none (``CPU_BF16``)."""
    return {"fp32": gemm_peak(torch.float32, repeats, clock),
            "bf16": gemm_peak(torch.bfloat16, repeats, clock) if CPU_BF16 else math.nan}


# ---- FLOPs of a training step ---------------------------------------------------------------------
def lstm_flops(inp: int, hidden: int) -> int:
    """Forward multiply-adds x 2 of one LSTM position: 4 gates of (W_ih x + W_hh h)."""
    return 2 * 4 * hidden * (inp + hidden)


def step_flops(emb: int, hidden: int, latent: int, vocab: float, lengths: np.ndarray) -> float:
    """Useful FLOPs of one training step (padding excluded): encoder LSTM over the n + 2 tokens of
    each sentence, posterior head, decoder LSTM (input emb + z) and output projection over its
    n + 1 positions (``vocab`` output words: V, or the sampled softmax's expected candidates + 1);
    backward = 2 x forward (input and weight gradients). Elementwise work (gates, softmax) is not
    counted: it is not GEMM work."""
    enc_pos = float(lengths.sum())
    dec_pos = float((lengths - 1).sum())
    forward = (enc_pos * lstm_flops(emb, hidden) + len(lengths) * 2 * hidden * 2 * latent
               + dec_pos * (lstm_flops(emb + latent, hidden) + 2 * hidden * vocab))
    return 3 * forward


# ---- levers ------------------------------------------------------------------------------------
def packed_encoder_forward(self: RNNEncoder, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The reference encoder: always pack (the per-step, non-fused RNN path on CPU)."""
    packed = pack_padded_sequence(self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False)
    _, h_n = self.rnn(packed)
    h_n = h_n[0] if isinstance(h_n, tuple) else h_n
    return last_layer_final_state(h_n, self.num_layers, self.num_directions)


@contextlib.contextmanager
def encoder_mode(packed: bool) -> Iterator[None]:
    if not packed:
        yield
        return
    original = RNNEncoder.forward
    RNNEncoder.forward = packed_encoder_forward  # type: ignore[method-assign]
    try:
        yield
    finally:
        RNNEncoder.forward = original  # type: ignore[method-assign]


@dataclass
class Variant:
    """A training configuration: the levers of issue 6, each on or off."""

    name: str
    precision: str = "fp32"
    fused_loss: bool = True
    packed_encoder: bool = False
    torch_dropout: bool = False  # nn.Dropout (bernoulli_) instead of the decoders' Dropout
    torch_clip: bool = False  # clip_grad_norm_ instead of the loop's clip_gradients
    check: bool = True  # the loop's per-step non-finite check
    sampled: int = 0  # train.sampled_softmax: candidate words per step (0 = the full softmax)
    sparse: bool = True  # train.sparse_gradients
    native: bool = True  # train.native_kernels: the bf16 loss's softmax part in textvae's C++ kernel
    copies: bool = True  # train.bf16_weight_copies (bf16 only): LSTM and output weights as bf16 working copies


SAMPLED = 1024  # candidate words of the sampled-softmax lever (about 600 distinct per step on PTB)
REFERENCE = dict(fused_loss=False, packed_encoder=True, torch_dropout=True, torch_clip=True, sparse=False)
TRAIN_VARIANTS = [
    Variant("fp32 reference (before issue 6)", **REFERENCE),
    Variant("fp32 + unpacked encoder", fused_loss=False, torch_dropout=True, torch_clip=True, sparse=False),
    Variant("fp32 + fast dropout", fused_loss=False, torch_clip=True, sparse=False),
    Variant("fp32 + fused loss", torch_clip=True, sparse=False),
    Variant("fp32 + lean clip", sparse=False),
    Variant("fp32 + sparse gradients = default"),
    Variant("fp32 default, no non-finite check", check=False),
    Variant("bf16 reference", precision="bf16", **REFERENCE),
    Variant("bf16 + unpacked encoder", precision="bf16", fused_loss=False, torch_dropout=True, torch_clip=True,
            sparse=False),
    Variant("bf16 + fast dropout", precision="bf16", fused_loss=False, torch_clip=True, sparse=False),
    Variant("bf16 + fused loss", precision="bf16", torch_clip=True, sparse=False),
    Variant("bf16 + lean clip", precision="bf16", sparse=False),
    Variant("bf16 + sparse gradients, torch ops", precision="bf16", native=False, copies=False),
    Variant("bf16 + C++ softmax kernel", precision="bf16", copies=False),
    Variant("bf16 + bf16 weight copies = default", precision="bf16"),
    Variant(f"fp32 default + sampled softmax {SAMPLED}", sampled=SAMPLED),
    Variant(f"bf16 default + sampled softmax {SAMPLED}", precision="bf16", sampled=SAMPLED),
]


def build_model(emb: int, hidden: int, vocab: int, seed: int = 0) -> TextVAE:
    torch.manual_seed(seed)
    cfg = ModelConfig(emb_dim=emb, latent_dim=32, encoder=EncoderConfig(hidden_dim=hidden),
                      decoder=DecoderConfig(hidden_dim=hidden, input_dropout=0.5, output_dropout=0.5))
    return TextVAE(cfg, vocab)


def train_batches(size: str, n: int, seed: int = 0
                  ) -> tuple[list[list[np.ndarray]], np.ndarray, float, torch.Tensor]:
    """The first n batches (id arrays) of PTB's epoch-0 bucketed plan, their lengths, the plan's
    padding and the training token counts [V] (the sampled softmax's proposal, as the loop makes
    it); for the Yahoo-size model the same lengths filled with uniformly random ids of its
    vocabulary (counts: uniform)."""
    from textvae.tasks.runconfig import parse_run_config
    from textvae.data.datasets import load_dataset

    cfg, _ = parse_run_config([RECIPE])
    split = load_dataset(cfg.data).splits["train"]
    sampler = split.sampler(32, shuffle=True, seed=seed, pool_batches=cfg.data.bucket_pool)
    plan = sampler.epoch_batches(0)
    padding = padding_fraction(plan, split.lengths)
    vocab = SIZES[size][2]
    rng = np.random.default_rng(seed)
    batches = []
    for index in plan[:n]:
        seqs = [split.ids[i] for i in index]
        if vocab != 10002:
            seqs = [np.concatenate([[1], rng.integers(4, vocab, len(s) - 2), [2]]) for s in seqs]
        batches.append(seqs)
    lengths = np.concatenate([[len(s) for s in b] for b in batches])
    counts = (torch.bincount(torch.from_numpy(split.ids.flat).long(), minlength=vocab) if vocab == 10002
              else torch.ones(vocab))
    return batches, lengths, padding, counts


class Stepper:
    """One variant's model and optimiser, stepping exactly as the training loop's hot path does."""

    def __init__(self, variant: Variant, size: str, counts: torch.Tensor):
        emb, hidden, vocab = SIZES[size]
        self.variant, self.dims = variant, (emb, hidden, 32, vocab)
        self.model = build_model(emb, hidden, vocab).train()
        self.model.fused_loss = variant.fused_loss
        if variant.sampled:
            self.model.sampled_softmax = SampledSoftmax(counts, variant.sampled)
        self.model.set_sparse_gradients(variant.sparse)
        if variant.torch_dropout:
            dec = self.model.decoder
            dec.input_dropout, dec.output_dropout = (nn.Dropout(dec.input_dropout.p), nn.Dropout(dec.output_dropout.p))
        self.working = (WorkingCopies(self.model, working_copy_names(self.model))
                        if variant.copies and variant.precision == "bf16" and not variant.torch_clip else None)
        self.step_fn = TrainStep(self.model, self.working)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self.world = World()
        self.step = 0

    def output_words(self) -> float:
        """Output-layer rows per position: V, or the expected distinct candidates + the target."""
        sm = self.model.sampled_softmax
        return self.dims[3] if sm is None else float(sm.log_inclusion.exp().sum()) + 1

    def run(self, batches: list[list[np.ndarray]], clock: Callable[[], float]) -> dict[str, float]:
        """Train on ``batches``; seconds in collation, forward + backward, and the update."""
        times = {"data": 0.0, "fwd_bwd": 0.0, "update": 0.0}
        v = self.variant
        with encoder_mode(v.packed_encoder), native_kernels(v.native):
            for seqs in batches:
                t0 = clock()
                batch = collate(seqs)
                t1 = clock()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.precision == "bf16"):
                    loss, out = self.step_fn(batch, self.step, 1.0)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                t2 = clock()
                grad_norm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), 5.0) if v.torch_clip
                             else clip_gradients(self.model, 5.0, self.working))
                if v.check and nonfinite_figures(out, grad_norm, self.world):
                    raise RuntimeError(f"{v.name}: non-finite training figures")
                self.optimizer.step()
                if self.working is not None:
                    self.working.step(self.optimizer, clip_scale(float(grad_norm), 5.0))
                self.step += 1
                t3 = clock()
                times["data"] += t1 - t0
                times["fwd_bwd"] += t2 - t1
                times["update"] += t3 - t2
        return times


def section_train(args: argparse.Namespace, peaks: dict[str, float]) -> list[dict[str, Any]]:
    clock = clock_fn(args.clock)
    rows = []
    for size in args.sizes:
        batches, lengths, padding, counts = train_batches(size, args.warmup + args.steps)
        warm, timed = batches[: args.warmup], batches[args.warmup:]
        n_tokens = int(sum(len(s) - 1 for b in timed for s in b))
        variants = [v for v in TRAIN_VARIANTS if (not args.variants or any(k in v.name for k in args.variants))
                    and (v.precision == "fp32" or CPU_BF16)]
        steppers = [Stepper(v, size, counts) for v in variants]
        flops = {s.variant.name: step_flops(*SIZES[size][:2], 32, s.output_words(),
                                            lengths[-sum(len(b) for b in timed):]) for s in steppers}
        for s in steppers:
            s.run(warm, clock)
        runs: dict[str, list[dict[str, float]]] = {v.name: [] for v in variants}
        rss: dict[str, float] = {}
        for _ in range(args.repeats):
            for s in steppers:
                reset_peak_rss()
                runs[s.variant.name].append(s.run(timed, clock))
                rss[s.variant.name] = max(rss.get(s.variant.name, 0.0), peak_rss_mb())
        print(f"\n== training step, {size}, batch 32, {len(timed)} steps x {args.repeats} repeats "
              f"(interleaved), {args.threads} threads, {args.clock} clock; {load()}")
        print(f"   {n_tokens} tokens, {flops[variants[0].name] / len(timed) / 1e9:.2f} GFLOP/step useful with the "
              f"full softmax, plan padding {padding:.2%}")
        print(f"{'variant':<34} {'tok/s med':>9} {'tok/s best':>10} {'ms/step':>8} {'GFLOP/s':>8} "
              f"{'data %':>6} {'update %':>8} {'RSS MB':>7}")
        for v in variants:
            totals = [sum(r.values()) for r in runs[v.name]]
            med, best = statistics.median(totals), min(totals)
            r = runs[v.name][min(range(len(totals)), key=lambda i: abs(totals[i] - med))]  # (even count)
            gflops = flops[v.name] / med / 1e9
            row = {"section": "train", "size": size, "variant": v.name, "tokens_per_s": n_tokens / med,
                   "tokens_per_s_best": n_tokens / best, "ms_per_step": 1e3 * med / len(timed),
                   "gflops": gflops, "frac_peak": gflops / peaks[v.precision],
                   "frac_fp32_peak": gflops / peaks["fp32"], "data_frac": r["data"] / med,
                   "update_frac": r["update"] / med, "peak_rss_mb": rss[v.name], "padding": padding,
                   "all_tokens_per_s": [n_tokens / t for t in totals]}
            rows.append(row)
            print(f"{v.name:<34} {row['tokens_per_s']:>9,.0f} {row['tokens_per_s_best']:>10,.0f} "
                  f"{row['ms_per_step']:>8.1f} {gflops:>8.1f} {row['data_frac']:>6.1%} "
                  f"{row['update_frac']:>8.1%} {row['peak_rss_mb']:>7.0f}")
    return rows


def section_bucketing() -> None:
    """Padding of the training plan against the bucket pool (1 = plain shuffling)."""
    from textvae.tasks.runconfig import parse_run_config
    from textvae.data.datasets import load_dataset

    cfg, _ = parse_run_config([RECIPE])
    split = load_dataset(cfg.data).splits["train"]
    print("\n== padding of the PTB training plan (batch 32) against data.bucket_pool")
    for pool in (1, 10, 100, 1000):
        plan = split.sampler(32, shuffle=True, seed=1, pool_batches=pool).epoch_batches(0)
        print(f"   bucket_pool {pool:>5}: padding {padding_fraction(plan, split.lengths):.2%}")


# ---- the update ------------------------------------------------------------------------------------
OPTIM_VARIANTS: dict[str, Callable[[list[nn.Parameter]], torch.optim.Optimizer]] = {
    "sgd (dense gradients)": lambda ps: torch.optim.SGD(ps, lr=1.0),
    "adam per-tensor (torch's CPU default)": lambda ps: torch.optim.Adam(ps, lr=1e-3),
    "adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
    "adam fused (optim.name adam)": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
}


def section_optim(args: argparse.Namespace, clock: Callable[[], float]) -> list[dict[str, Any]]:
    """One optimiser step over every parameter of the PTB 256/256/32 model, dense gradients (Adam's
    are: its moments decay on every row), the variants interleaved; median ms over ``--steps``."""
    params = [p for p in build_model(*SIZES["ptb 256/256/32"]).parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 0.01
    optimizers = {name: make(params) for name, make in OPTIM_VARIANTS.items()}
    times: dict[str, list[float]] = {name: [] for name in optimizers}
    for step in range(args.warmup + args.steps):
        for name, opt in optimizers.items():
            t = clock()
            opt.step()
            if step >= args.warmup:
                times[name].append(clock() - t)
    print(f"\n== one optimiser step, PTB 256/256/32 ({sum(p.numel() for p in params):,} parameters), "
          f"{args.threads} threads, {args.clock} clock, median of {args.steps}; {load()}")
    rows = []
    for name, ts in times.items():
        rows.append({"section": "optim", "variant": name, "ms_per_step": 1e3 * statistics.median(ts)})
        print(f"   {name:<40} {rows[-1]['ms_per_step']:>7.2f} ms")
    return rows


def denormal_worker(job: dict[str, Any]) -> dict[str, Any]:
    """Bf16 training steps with fused Adam from a saved run's checkpoint (its weights and moments)
    in this (fresh) process, denormals flushed or not (``train.flush_denormals``)."""
    from textvae.training.checkpoint import load_checkpoint
    from textvae.training.denormals import flush_denormals

    mode = flush_denormals(job["flush"])
    batches, _, _, counts = train_batches("ptb 256/256/32", job["warmup"] + job["steps"], seed=job["seed"])
    # no working copies: with them (train.bf16_weight_copies, since 842d47f) the LSTM and output weights
    # would take plain SGD steps of their own, and the fused Adam timed here would update the embeddings only
    stepper = Stepper(Variant("bf16", precision="bf16", sparse=False, copies=False), "ptb 256/256/32", counts)
    stepper.optimizer = torch.optim.Adam(stepper.model.parameters(), lr=1e-3, fused=True)
    load_checkpoint(job["checkpoint"], stepper.model, stepper.optimizer, restore_rng=False)
    moments = [v for state in stepper.optimizer.state.values() for k, v in state.items() if k.startswith("exp_avg")]
    # from the bits (exponent 0, mantissa not): with DAZ on, a comparison would read every denormal as 0
    bits = [m.view(torch.int32) for m in moments]
    denormal = sum(int(((b & 0x7F800000).eq(0) & (b & 0x007FFFFF).ne(0)).sum()) for b in bits)
    clock = clock_fn(job["clock"])
    stepper.run(batches[: job["warmup"]], clock)
    times = stepper.run(batches[job["warmup"]:], clock)
    tokens = sum(len(s) - 1 for b in batches[job["warmup"]:] for s in b)
    return {"mode": mode, "denormal_moments": denormal, "moments": sum(m.numel() for m in moments),
            "tok_s": tokens / (times["fwd_bwd"] + times["update"]),
            "fwd_bwd_ms": 1e3 * times["fwd_bwd"] / job["steps"], "update_ms": 1e3 * times["update"] / job["steps"]}


def section_denormals(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Training steps from a trained Adam run's checkpoint, denormals kept vs flushed, one fresh
    process per measurement, the two taken in turn ``--denormal-rounds`` times."""
    if not args.denormal_checkpoint or not Path(args.denormal_checkpoint).is_file():
        print("\n== denormals: skipped (--denormal-checkpoint: the checkpoint.safetensors of a PTB run trained with "
              "optim.name adam)")
        return []
    results: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for seed in range(args.denormal_rounds):
        for flush in (False, True):
            job = {"flush": flush, "checkpoint": args.denormal_checkpoint, "clock": args.clock, "seed": seed,
                   "warmup": args.warmup, "steps": args.steps}
            cmd = [sys.executable, __file__, "--threads", str(args.threads), "--denormal-worker", json.dumps(job)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results[flush].append(json.loads(out.strip().splitlines()[-1]))
    first = results[False][0]
    print(f"\n== bf16 training steps from {args.denormal_checkpoint} (fused Adam; {first['denormal_moments']:,} of "
          f"{first['moments']:,} moment elements denormal), {args.threads} threads, {args.clock} clock, "
          f"{args.steps} steps after {args.warmup}; {load()}")
    print(f"   {'denormals':<10} {'tok/s per round':<26} {'median':>7} {'fwd+bwd ms':>10} {'update ms':>9}")
    rows = []
    for flush, runs in results.items():
        row = {"section": "denormals", "flush": flush, "mode": runs[0]["mode"],
               **{k: statistics.median(r[k] for r in runs) for k in ("tok_s", "fwd_bwd_ms", "update_ms")}}
        rows.append(row)
        per_round = " / ".join(f"{r['tok_s']:,.0f}" for r in runs)
        print(f"   {row['mode']:<10} {per_round:<26} {row['tok_s']:>7,.0f} "
              f"{row['fwd_bwd_ms']:>10.1f} {row['update_ms']:>9.1f}")
    return rows


# ---- evaluation ----------------------------------------------------------------------------------
def iw_batches(test: Any, job: dict[str, Any]) -> list[Any]:
    """The batches of 32 an IW run evaluates: ``batches`` evenly spaced batches of the test split's
    evaluation plan (sorted by length, as a full test report runs it: a systematic sample of its
    lengths and padding), all of them if ``batches`` is 0; without ``batches``, the first
    ``sentences`` sentences of the file as one batch (this section's figures before 2026-12-06: one
    batch of mixed lengths, padded to its longest)."""
    if "batches" not in job:
        return list(test.batches(32, limit=job["sentences"]))
    plan = list(test.batches(32))
    n = job["batches"] or len(plan)
    return [plan[int((i + 0.5) * len(plan) / n)] for i in range(n)]


def iw_worker(job: dict[str, Any]) -> dict[str, Any]:
    """IW-NLL of the batches of :func:`iw_batches` in this (fresh) process: sentences/s, the
    estimate, and the peak RSS of the evaluation itself (counter reset after loading). The pass
    decodes some batches twice (the Monte Carlo error's redraw, ``IWAccumulator``): ``decoded``
    counts the tokens x samples it ran, ``tokens_x_k_per_s`` only the one draw the estimate is."""
    from textvae.tasks.runconfig import parse_run_config
    from textvae.data.datasets import load_dataset
    from textvae.metrics import iw_nll
    from textvae.metrics.likelihood import IW_CHECK_EVERY

    cfg, _ = parse_run_config([RECIPE])
    test = load_dataset(cfg.data).splits["test"]
    model = TextVAE.from_pretrained(job["model"]) if job["model"] else build_model(256, 256, 10002)
    model.fused_loss = job["fused"]
    set_native_kernels(job.get("native", True))
    native_status()  # built (or loaded from its cache) before the clock starts
    batches = iw_batches(test, job)
    clock = clock_fn(job["clock"])
    base = peak_rss_mb()
    reset_peak_rss()
    t = clock()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=job["bf16"]):
        res = iw_nll(model, lambda: iter(batches), n_samples=job["k"], max_tokens=job["max_tokens"],
                     generator=torch.Generator().manual_seed(0))
    seconds = clock() - t
    tokens = int(res.n_tokens.sum())
    redrawn = sum(int(b.n_tokens.sum()) for i, b in enumerate(batches)
                  if i == 0 or i % IW_CHECK_EVERY == IW_CHECK_EVERY // 2)
    return {"sentences": len(res.nll), "sent_per_s": len(res.nll) / seconds, "seconds": seconds,
            "tokens_x_k_per_s": tokens * job["k"] / seconds, "decoded": (tokens + redrawn) * job["k"],
            "iw_nll": res.nll_mean, "base_rss_mb": base, "peak_rss_mb": peak_rss_mb()}


def run_iw(args: argparse.Namespace, model: str, **job: Any) -> dict[str, Any]:
    job = {"model": model, "clock": args.clock, **job}
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--retain-memory", args.retain_memory,
           "--iw-worker", json.dumps(job)]
    res = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def iw_token_flops(emb: int = 256, hidden: int = 256, latent: int = 32, vocab: int = 10002) -> int:
    """Decoder FLOPs of one predicted token of one importance sample: its LSTM step (input
    emb + z) and the output projection. The encoder (once per sentence, not per sample) and the
    elementwise softmax are left out, so K x tokens x this is the IW pass's GEMM work."""
    return lstm_flops(emb + latent, hidden) + 2 * hidden * vocab


# (fused, bf16, native) of the iw section's variants: the reference and the fused loss in fp32, the fused
# bf16 loss with torch operations and with the C++ kernels (textvae.models.native)
IW_VARIANTS = {"reference": (False, False, False), "fused": (True, False, False), "bf16": (True, True, False),
               "bf16-c++": (True, True, True)}


def section_iw(args: argparse.Namespace, peaks: dict[str, float]) -> list[dict[str, Any]]:
    """IW-NLL throughput and memory, one fresh process per run (so each peak RSS is its own),
    configurations alternating within each repeat; achieved GEMM FLOP/s (:func:`iw_token_flops`)
    as a share of the bf16 roof, and each estimate's difference from the fused fp32 one of the same
    budget (the same sentences and samples: only rounding differs)."""
    default_model = Path(args.out) / "fp32" / "model"
    model = args.iw_model or (str(default_model) if default_model.is_dir() else "")
    n, k = args.iw_sentences, args.iw_k
    chosen = {"sentences": n} if args.iw_batches is None else {"batches": args.iw_batches}
    # (budget, fused, bf16, native): the reference and the fused loss in fp32, the fused bf16 loss with
    # torch operations and with the C++ kernel (textvae.models.native)
    configs = [(budget, *IW_VARIANTS[name]) for budget in args.iw_budgets for name in args.iw_variants
               if CPU_BF16 or not IW_VARIANTS[name][1]]
    results: dict[tuple, list[dict[str, Any]]] = {c: [] for c in configs}
    for _ in range(args.iw_repeats):
        for c in configs:
            results[c].append(run_iw(args, model, **chosen, k=k, max_tokens=c[0], fused=c[1], bf16=c[2],
                                     native=c[3]))
    what = (f"the first {n} PTB test sentences (one batch)" if args.iw_batches is None else
            f"{args.iw_batches or 'all'} batches of 32 evenly spaced in PTB test's evaluation plan "
            f"({results[configs[0]][0]['sentences']} sentences)")
    print(f"\n== IW-NLL (textvae.metrics.iw_nll), K = {k}, {what}, model "
          f"{model or 'untrained 256/256/32'}, {args.threads} threads, {args.clock} clock, best of "
          f"{args.iw_repeats} (interleaved, fresh process each); {load()}")
    print("(tok*K/s and % roof: the estimate's one draw of K samples; 'decoded' adds the redrawn batches' "
          "second draw, also in the time)")
    print(f"{'max_tokens':>10} {'loss':>9} {'prec':>5} {'sent/s':>7} {'tok*K/s':>8} {'% bf16 roof':>11} "
          f"{'decoded':>8} {'IW-NLL':>9} {'vs fp32':>8} {'eval peak RSS MB':>16}")
    rows = []
    for c in configs:
        best = max(results[c], key=lambda r: r["sent_per_s"])
        peak = max(r["peak_rss_mb"] - r["base_rss_mb"] for r in results[c])
        budget, fused, bf16, native = c
        roof = best["tokens_x_k_per_s"] * iw_token_flops() / 1e9 / peaks["bf16"]
        decoded = best["decoded"] / best["seconds"] * iw_token_flops() / 1e9 / peaks["bf16"]
        fp32 = results.get((budget, True, False, False))
        delta = best["iw_nll"] - fp32[0]["iw_nll"] if fp32 else math.nan
        rows.append({"section": "iw", "max_tokens": budget, "fused": fused, "bf16": bf16, "native": native, **best,
                     "eval_peak_rss_mb": peak, "frac_bf16_peak": roof, "frac_bf16_peak_decoded": decoded, "delta_vs_fp32": delta})
        loss = "fused+C++" if native else "fused" if fused else "reference"
        print(f"{budget:>10} {loss:>9} {'bf16' if bf16 else 'fp32':>5} "
              f"{best['sent_per_s']:>7.3f} {best['tokens_x_k_per_s']:>8,.0f} {roof:>11.1%} {decoded:>8.1%} "
              f"{best['iw_nll']:>9.3f} "
              f"{delta:>+8.4f} {peak:>16.0f}")
    budget = args.iw_budgets[-1]
    print(f"evaluation peak RSS against K (max_tokens {budget}, fused fp32, {min(n, 8)} sentences):")
    for k_ in args.iw_k_sweep:
        r = run_iw(args, model, sentences=min(n, 8), k=k_, max_tokens=budget, fused=True, bf16=False)
        print(f"   K {k_:>5}: {r['peak_rss_mb'] - r['base_rss_mb']:>6.0f} MB above the loaded model, "
              f"{r['sent_per_s']:.3f} sent/s")
        rows.append({"section": "iw_memory", "k": k_, **r})
    return rows


def section_retain(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``train.retain_memory`` (process-wide, so one process per setting): fresh processes with it
    off and on, alternating, each timing the PTB step of the selected variants once."""
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            for setting in ("off", "on"):
                out = Path(tmp) / f"{setting}{repeat}.json"
                cmd = [sys.executable, __file__, "--sections", "train", "--sizes", "ptb 256/256/32", "--repeats", "1",
                       "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads),
                       "--clock", args.clock, "--retain-memory", setting, "--json", str(out), "--variants",
                       *(args.variants or ["reference", "default"])]
                subprocess.run(cmd, check=True, capture_output=True)
                for r in json.loads(out.read_text()):
                    if r["section"] == "train":
                        rows.append({"section": "retain", "retain_memory": setting, "variant": r["variant"],
                                     "tokens_per_s": r["tokens_per_s"]})
    print(f"\n== train.retain_memory off / on: PTB step, fresh process per setting, {args.repeats} alternating "
          f"pairs, {args.threads} threads, {args.clock} clock; {load()}")
    print(f"{'variant':<34} {'off tok/s':>9} {'on tok/s':>9} {'gain':>6}")
    for variant in dict.fromkeys(r["variant"] for r in rows):
        med = {k: statistics.median(r["tokens_per_s"] for r in rows if r["variant"] == variant and r["retain_memory"] == k)
               for k in ("off", "on")}
        print(f"{variant:<34} {med['off']:>9,.0f} {med['on']:>9,.0f} {med['on'] / med['off'] - 1:>+6.1%}")
    return rows


# ---- whole epochs ----------------------------------------------------------------------------------
EPOCH_VARIANTS = {"reference-fp32": ("fp32", True, 0), "fp32": ("fp32", False, 0), "bf16": ("bf16", False, 0),
                  "reference-bf16": ("bf16", True, 0), "fp32-sampled": ("fp32", False, SAMPLED),
                  "bf16-sampled": ("bf16", False, SAMPLED), "bf16-sampled1536": ("bf16", False, 3 * SAMPLED // 2),
                  "bf16-sampled2048": ("bf16", False, 2 * SAMPLED), "bf16-unpadded": ("bf16", False, 0),
                  "bf16-torchops": ("bf16", False, 0), "bf16-nocopies": ("bf16", False, 0)}
# -torchops: train.native_kernels false; -nocopies: train.bf16_weight_copies false


def use_reference_paths() -> None:
    """Patch this process back to the code before issue 6: packed encoder, ``nn.Dropout``,
    unfused loss (the fp32 latent side under autocast stays)."""
    import textvae.models.decoders as decoders

    decoders.Dropout = nn.Dropout  # read by RNNDecoder.__init__
    RNNEncoder.forward = packed_encoder_forward  # type: ignore[method-assign]
    TextVAE.fused_loss = property(lambda self: False, lambda self, value: None)  # type: ignore[assignment]


def epoch_worker(job: dict[str, Any]) -> dict[str, Any]:
    """One PTB epoch in this (fresh) process."""
    from textvae.tasks.runconfig import parse_run_config
    from textvae.training.logger import read_jsonl
    from textvae.tasks import run_training

    precision, reference, sampled = EPOCH_VARIANTS[job["variant"]]
    cfg, _ = parse_run_config([RECIPE, "--out_dir", job["out"], "--name", job["name"], "--train.epochs", "1",
                               "--train.seed", str(job["seed"]),
                               "--train.iw_samples_final", "0", "--train.metrics_every", "0",
                               "--train.progress", "false", "--train.tensorboard", "false",
                               "--train.threads", str(job["threads"]), "--train.precision", precision,
                               "--train.retain_memory", str(not reference).lower(),
                               "--train.sparse_gradients", str(not reference).lower(),
                               "--train.sampled_softmax", str(sampled),
                               "--train.native_kernels", str(not job["variant"].endswith("-torchops")).lower(),
                               "--train.bf16_weight_copies", str(not job["variant"].endswith("-nocopies")).lower()])
    if reference:
        use_reference_paths()
    if job["variant"].endswith("-unpadded"):  # the loss's GEMMs at the batch's own token count (a new shape per N)
        import textvae.models.fused_loss as fused_loss
        fused_loss.GEMM_ROWS = 1
    from textvae.tasks.sentences import SentenceTask

    final_report, peak_before_report = SentenceTask.test_report, []

    def report_after_training(*a: Any, **k: Any) -> dict[str, Any]:  # the loop's peak, before the test report
        peak_before_report.append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return final_report(*a, **k)

    SentenceTask.test_report = report_after_training  # type: ignore[method-assign]
    t = time.perf_counter()
    report = run_training(cfg)
    wall = time.perf_counter() - t
    valid = [r for r in read_jsonl(Path(job["out"]) / job["name"] / "metrics.jsonl") if r["split"] == "valid"][-1]
    return {"variant": job["variant"], "seed": job["seed"], "tokens_per_s": valid["tokens_per_s"],
            "neg_elbo": valid["neg_elbo"], "rec": valid["rec"], "kl": valid.get("kl", 0.0),
            "elbo_ppl": valid["elbo_ppl"], "wall_s": wall,
            "test_neg_elbo": report.get("neg_elbo"), "train_peak_rss_mb": peak_before_report[0],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def section_epoch(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    out = Path(args.out)
    for seed in args.epoch_seeds:  # seeds outer: each variant's runs spread over the session
        for variant in [v for v in args.epoch_variants if CPU_BF16 or "bf16" not in v]:
            # the first seed's fp32 run keeps the plain name: the iw section evaluates OUT/fp32/model
            name = variant if seed == args.epoch_seeds[0] else f"{variant}-seed{seed}"
            shutil.rmtree(out / name, ignore_errors=True)
            job = {"variant": variant, "name": name, "seed": seed, "out": str(out), "threads": args.threads}
            before, roof_before = os.getloadavg()[0], gemm_peak(torch.float32, 3, time.perf_counter)
            res = subprocess.run([sys.executable, __file__, "--threads", str(args.threads), "--epoch-worker",
                                  json.dumps(job)], check=True, capture_output=True, text=True)
            row = json.loads(res.stdout.strip().splitlines()[-1])
            row.update(section="epoch", load_before=before, load_after=os.getloadavg()[0],
                       roof_before=roof_before, roof_after=gemm_peak(torch.float32, 3, time.perf_counter))
            rows.append(row)
    print(f"\n== one PTB epoch ({RECIPE}, 929,589 training tokens), {args.threads} threads, wall clock")
    print(f"{'variant':<16} {'seed':>7} {'tok/s':>7} {'wall s':>7} {'valid -ELBO':>11} {'rec':>8} {'KL':>6} "
          f"{'ELBO-PPL':>8} {'RSS MB: train+valid':>19} {'+ test report':>13}  load and fp32 roof before / after")
    for r in sorted(rows, key=lambda r: args.epoch_variants.index(r["variant"])):
        print(f"{r['variant']:<16} {r['seed']:>7} {r['tokens_per_s']:>7,.0f} {r['wall_s']:>7.0f} "
              f"{r['neg_elbo']:>11.3f} {r['rec']:>8.3f} {r['kl']:>6.3f} {r['elbo_ppl']:>8.2f} "
              f"{r['train_peak_rss_mb']:>19.0f} {r['peak_rss_mb']:>13.0f}  "
              f"{r['load_before']:.2f} / {r['load_after']:.2f}, {r['roof_before']:.0f} / {r['roof_after']:.0f} GFLOP/s")
    if len(args.epoch_seeds) > 1:
        print(f"mean ± sd over seeds {args.epoch_seeds}:")
        for variant in args.epoch_variants:
            mine = [r for r in rows if r["variant"] == variant]
            tok, nll = [r["tokens_per_s"] for r in mine], [r["neg_elbo"] for r in mine]
            print(f"{variant:<16} tok/s {statistics.mean(tok):>7,.0f}   valid -ELBO {statistics.mean(nll):.3f} "
                  f"± {statistics.stdev(nll):.3f}")
        paired_precision(rows)
    return rows


def paired_precision(rows: list[dict[str, Any]]) -> None:
    """Issue 18's precision check: each seed's bf16 validation -ELBO after the epoch against the fp32
    run of the same seed (same initialisation and batches), relative difference in %."""
    by = {(r["variant"], r["seed"]): r["neg_elbo"] for r in rows}
    seeds = [s for v, s in by if v == "fp32" and ("bf16", s) in by]
    if not seeds:
        return
    rel = [100 * (by["bf16", s] - by["fp32", s]) / by["fp32", s] for s in seeds]
    print("bf16 against fp32, paired by seed (valid -ELBO after the epoch): "
          + ", ".join(f"{s}: {by['fp32', s]:.3f} -> {by['bf16', s]:.3f} ({d:+.3f} %)" for s, d in zip(seeds, rel))
          + f"; mean {statistics.mean(rel):+.3f} %, largest |difference| {max(map(abs, rel)):.3f} %")


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sections", nargs="+", default=["peak", "train", "iw", "epoch"],
                    choices=["peak", "train", "retain", "bucketing", "optim", "denormals", "iw", "epoch"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    ap.add_argument("--variants", nargs="*", default=[], help="substrings selecting training variants")
    ap.add_argument("--iw-k", type=int, default=500)
    ap.add_argument("--iw-sentences", type=int, default=16,
                    help="without --iw-batches: the first N test sentences, as one batch")
    ap.add_argument("--iw-batches", type=int, help="N batches of 32 evenly spaced in the test split's "
                    "evaluation plan (0: the whole split), as a test report runs them")
    ap.add_argument("--iw-repeats", type=int, default=2)
    ap.add_argument("--iw-variants", nargs="+", default=list(IW_VARIANTS), choices=list(IW_VARIANTS))
    ap.add_argument("--iw-budgets", type=int, nargs="+", default=[4096, 16384, 65536])
    ap.add_argument("--iw-k-sweep", type=int, nargs="+", default=[50, 500, 2000, 8000],
                    help="K values of the evaluation-memory sweep (at the last budget)")
    ap.add_argument("--iw-model", help="saved model folder for the iw section (default: OUT/fp32/model "
                    "when the epoch section has made it, else an untrained model)")
    ap.add_argument("--out", default="out/bench_throughput", help="where the epoch section keeps its runs")
    ap.add_argument("--epoch-variants", nargs="+", default=["reference-fp32", "fp32", "bf16"],
                    choices=list(EPOCH_VARIANTS))
    ap.add_argument("--epoch-seeds", type=int, nargs="+", default=[783435],
                    help="train.seed of the epoch runs (default: the recipe's); several give mean ± sd")
    ap.add_argument("--retain-memory", choices=["on", "off", "released"], default="on",
                    help="train.retain_memory for this process (the loop's default: on); released: glibc's "
                         "fixed default thresholds, as the loop's test report ran before issue 18")
    ap.add_argument("--denormal-checkpoint", help="denormals section: a PTB run's checkpoint.safetensors, trained "
                    "with optim.name adam")
    ap.add_argument("--denormal-rounds", type=int, default=3)
    ap.add_argument("--json", help="also write all rows here")
    ap.add_argument("--epoch-worker", help=argparse.SUPPRESS)
    ap.add_argument("--iw-worker", help=argparse.SUPPRESS)
    ap.add_argument("--denormal-worker", help=argparse.SUPPRESS)
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    os.environ.setdefault("TEXTVAE_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    torch.set_num_threads(args.threads)
    if args.epoch_worker:  # run_training applies train.retain_memory itself
        print(json.dumps(epoch_worker(json.loads(args.epoch_worker))))
        return
    if args.retain_memory != "off":
        retain_freed_memory(args.retain_memory == "on")
    if args.iw_worker:
        print(json.dumps(iw_worker(json.loads(args.iw_worker))))
        return
    if args.denormal_worker:
        print(json.dumps(denormal_worker(json.loads(args.denormal_worker))))
        return
    rows: list[dict[str, Any]] = []
    clock = clock_fn(args.clock)
    # the roof: the best of several GEMMs before and after the training section (a busy moment
    # on a shared machine can only lower a measurement)
    if not CPU_BF16:
        print("this CPU has no bfloat16 arithmetic (textvae refuses bf16 on it): bf16 rows and roof left out")
    peaks = gemm_roofs(args.repeats, clock)
    if "bucketing" in args.sections:
        section_bucketing()
    if "train" in args.sections:
        train_rows = section_train(args, peaks)
        peaks = {k: max(v, peaks[k]) for k, v in gemm_roofs(args.repeats, clock).items()}  # NaN stays NaN
        for r in train_rows:  # fractions against the final roof
            r["frac_peak"] = r["gflops"] / peaks["bf16" if "bf16" in r["variant"] else "fp32"]
            r["frac_fp32_peak"] = r["gflops"] / peaks["fp32"]
        rows += train_rows
    if "peak" in args.sections or "train" in args.sections:
        print(f"\n== GEMM peak (2048^3, best of {max(args.repeats, 3)} before and after), {args.threads} threads, "
              f"{args.clock} clock; {load()}\n   fp32 {peaks['fp32']:.1f} GFLOP/s, bf16 {peaks['bf16']:.1f} GFLOP/s")
        if "train" in args.sections:
            print(f"{'variant (against this roof)':<34} {'GFLOP/s':>8} {'% peak':>7} {'% fp32 pk':>9}")
            for r in train_rows:
                print(f"{r['size'][:4]} {r['variant']:<29} {r['gflops']:>8.1f} {r['frac_peak']:>7.1%} "
                      f"{r['frac_fp32_peak']:>9.1%}")
    rows.append({"section": "peak", **peaks})
    if "retain" in args.sections:
        rows += section_retain(args)
    if "optim" in args.sections:
        rows += section_optim(args, clock)
    if "denormals" in args.sections:
        rows += section_denormals(args)
    if "iw" in args.sections:
        rows += section_iw(args, peaks)
    if "epoch" in args.sections:
        rows += section_epoch(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
