#!/usr/bin/env bash
# The PTB reproduction (issue 15) on a 2-core CPU: two chains of `textvae study`, one per core, one
# thread per run, each chain with its own rows (two study processes must never share a run;
# finished runs are skipped, killed ones resume from their last epoch's checkpoint).
#   core A: bf16 rows pretrain_fb_inrun annealed bn_vae, the lambda diagnostic pretrain_fb_lambda6_5 (from
#           pretrain_ae's encoder), cyclical kl_constraint, aggressive (last: each of its outer steps in
#           aggressive mode costs 31-100 ordinary steps), then seeds 2 and 3 of lm annealed
#   core B: Li et al.'s two runs (pretrain_ae, then pretrain_fb from its encoder), the fp32 check (lm,
#           pretrain_fb_inrun; it gates the bf16 rows), the gamma diagnostic bn_vae_gamma0_5, composite (also
#           from pretrain_ae's encoder), the second gamma diagnostic bn_vae_gamma0_3, then seeds 2 and 3 of
#           pretrain_ae pretrain_fb bn_vae
# Runs from a frozen source tree so edits in the checkout do not reach running runs:
#   git worktree add --detach ~/textvae-src main     # once; later: git -C ~/textvae-src checkout --detach main
#   RUNS=~/textvae-runs SRC=~/textvae-src bash docs/results/ptb/run.sh
set -euo pipefail
RUNS=${RUNS:-$HOME/textvae-runs}
SRC=${SRC:-$HOME/textvae-src}
export PYTHONPATH=$SRC OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export TEXTVAE_DATA_DIR=${TEXTVAE_DATA_DIR:-/work/shared/data}
mkdir -p "$RUNS"
cd "$SRC"
# started twice, the second chains would skip the runs the first ones hold (each run folder is locked)
# but start the rows after them on a third and fourth process
if pgrep -f "textvae study studies/ptb_reproduce.yaml" > /dev/null; then
  echo "the study is already running (pids: $(pgrep -d ' ' -f 'textvae study studies/ptb_reproduce.yaml')); not started" >&2
  exit 1
fi
S="textvae study studies/ptb_reproduce.yaml --jobs 1"
nohup bash -c "$S --only lm pretrain_fb_inrun annealed bn_vae --set train.threads=1 --out $RUNS/ptb_reproduce; \
  $S --only pretrain_fb_lambda6_5 cyclical kl_constraint --set train.threads=1 --out $RUNS/ptb_reproduce; \
  $S --only aggressive --set train.threads=1 --out $RUNS/ptb_reproduce; \
  $S --seeds 2 3 --only lm annealed --set train.threads=1 --out $RUNS/ptb_reproduce" >> "$RUNS/ptb_reproduce.out" 2>&1 &
nohup bash -c "$S --only pretrain_ae pretrain_fb --set train.threads=1 --out $RUNS/ptb_reproduce; \
  $S --only lm pretrain_fb_inrun --set train.threads=1 train.precision=fp32 --out $RUNS/ptb_reproduce_fp32; \
  $S --only bn_vae_gamma0_5 composite bn_vae_gamma0_3 --set train.threads=1 --out $RUNS/ptb_reproduce; \
  $S --seeds 2 3 --only pretrain_ae pretrain_fb bn_vae --set train.threads=1 --out $RUNS/ptb_reproduce" \
  >> "$RUNS/ptb_reproduce_b.out" 2>&1 &
echo "started; logs: $RUNS/ptb_reproduce.out $RUNS/ptb_reproduce_b.out"
echo "where each run stands: textvae study studies/ptb_reproduce.yaml --status --out $RUNS/ptb_reproduce"
