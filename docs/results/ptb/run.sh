#!/usr/bin/env bash
# The PTB reproduction (issue 15) on a 2-core CPU: one chain of `textvae study`, two runs at a time with one
# thread each (two runs at one thread train ~2/1.7 as many steps as one run at two threads; a run stopped by
# SIGTERM checkpoints after its current step, so aggressive's hour-long epochs resume mid-epoch in the next
# session), the rows in order of what the table still needs (done so far: the fp32 cyclical
# of the bf16-vs-fp32 check, cyclical seeds 2 and 3, issue 18's timed rows, and the gamma diagnostics
# bn_vae_gamma0_5 and bn_vae_gamma0_3, the measurement bn_vae's cause owed):
#   aggressive and composite (done), then seeds 2 and 3 of lm annealed pretrain_fb bn_vae composite
#   (composite's seed 1 beat the LM's seed 1 by 0.05 nats, under the seed spread).
# The archives (docs/results/ptb/archive*.json, committed) hold every finished run's figures, so a new
# machine, whose run folders are gone, trains only what no archive holds (a run that another run starts
# from, like pretrain_ae for composite, is trained again: an archive keeps no weights). Finished runs in
# folders are skipped, killed ones resume from their last epoch's checkpoint.
# Runs from a frozen source tree so edits in the checkout do not reach running runs:
#   git worktree add --detach ~/textvae-src main     # once; later: git -C ~/textvae-src checkout --detach main
#   RUNS=~/textvae-runs SRC=~/textvae-src bash docs/results/ptb/run.sh
# The archives written by the runs are the source tree's: copy them into the checkout to commit them.
# The outputs of a chain step cover its selection only; the whole table's come from `--report` over every
# seed (it trains nothing), for each of the two folders (the fp32 one with `--set train.precision=fp32`):
#   textvae study studies/ptb_reproduce.yaml --seeds 1 2 3 --report --archive $A --out $RUNS/ptb_reproduce
set -euo pipefail
RUNS=${RUNS:-$HOME/textvae-runs}
SRC=${SRC:-$HOME/textvae-src}
export PYTHONPATH=$SRC OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TEXTVAE_DATA_DIR=${TEXTVAE_DATA_DIR:-/work/shared/data}
mkdir -p "$RUNS"
cd "$SRC"
# started twice, the second chain would skip the run the first one holds (each run folder is locked)
# but start the rows after it at the same time
if pgrep -f "textvae study studies/ptb_reproduce.yaml" > /dev/null; then
  echo "the study is already running (pids: $(pgrep -d ' ' -f 'textvae study studies/ptb_reproduce.yaml')); not started" >&2
  exit 1
fi
# A CPU without bf16 arithmetic (AVX2 only: the study refuses bf16 there) trains the remaining seeds in fp32,
# in the fp32 check's folder and archive; the table (benchmarks/ptb_reproduce_table.py) takes a seed's fp32 run
# where the bf16 study has none, marked so. lm/seed2 and cyclical's seeds are done in bf16.
# In the order the table needs them (--only sets it; a slot takes the first run whose encoder run is
# finished): what one command cannot finish in a session is resumed by the next. The LM's third seed and
# composite's seeds 2 and 3 decide the eighth row (composite is 0.01 nats below the LM's mean of two seeds);
# the third seeds of annealed and bn_vae (verdicts far from their margins) come next. A seed that one archive
# holds is not trained in the other precision: annealed/seed2, bn_vae/seed2 and lm/seed3 finished in fp32.
# Last, seeds 2 and 3 of the lambda = 6.5 diagnostic: its seed 1 matched every figure of the published row and
# was 0.17 nats below the LM's three-seed mean with MI >= 5 and AU 32, while composite missed the eighth row's
# goal over three seeds; three seeds say whether that holds beyond one (they start from pretrain_ae's seeds).
# Then composite/seed2 again: composite's budget is 200 epochs since (no paper sets it), and its seed 2 was still
# improving at 100, where it had stopped; it trains on from its checkpoint (its seeds 1 and 3 had ended their plateau
# schedule, so they stay as they are).
ORDER="pretrain_ae/seed2 composite/seed2 pretrain_fb/seed2"
ORDER="$ORDER pretrain_ae/seed3 composite/seed3 pretrain_fb/seed3 annealed/seed3 bn_vae/seed3"
ORDER="$ORDER pretrain_fb_lambda6_5/seed2 pretrain_fb_lambda6_5/seed3"
# Last, the eighth row's candidates. The 2026-12-08 machine is new: every run folder is gone, and with them
# pretrain_ae's weights and composite_flow's seeds 2 and 3 (stopped in their epoch 100, no test report). First
# composite_flow_bn (composite_flow with BN-VAE: composite_flow's learned prior had put its information into 9 of
# the 32 dimensions, and the eighth row asks for all 32 active), each seed after pretrain_ae's run of that seed,
# trained again. composite_flow (the measurement of what the learned prior alone buys) comes after.
ORDER="$ORDER pretrain_ae/seed2 pretrain_ae/seed3 composite_flow_bn/seed2 composite_flow_bn/seed3"
ORDER="$ORDER pretrain_ae/seed1 composite_flow_bn/seed1 composite_flow/seed2 composite_flow/seed3 composite_flow/seed1"
if python -c "import sys, torch; from textvae.training.train import bf16_supported; \
sys.exit(not bf16_supported(torch.device('cpu')))"; then
  A=docs/results/ptb/archive.json OUT=$RUNS/ptb_reproduce
  S="textvae study studies/ptb_reproduce.yaml --jobs 2 --set train.threads=1 --archive $A --out $OUT"
  CHAIN="$S --seeds 1 2 3 --only $ORDER"
else
  A=docs/results/ptb/archive_fp32.json OUT=$RUNS/ptb_reproduce_fp32
  S="textvae study studies/ptb_reproduce.yaml --jobs 2 --set train.threads=1 train.precision=fp32 --archive $A --out $OUT"
  CHAIN="$S --seeds 1 2 3 --only $ORDER"
fi
nohup bash -c "$CHAIN" >> "$OUT.out" 2>&1 &
echo "started; log: $OUT.out"
echo "where each run stands: textvae study studies/ptb_reproduce.yaml --status --seeds 1 2 3 --archive $SRC/$A --out $OUT"
