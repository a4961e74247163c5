"""Issue 18 on a GPU: a PTB epoch, the K = 500 IW-NLL of the PTB test set, and GPU memory.

    TEXTVAE_DATA_DIR=/path/to/data python benchmarks/gpu_ptb.py --out DIR \
        [--precisions fp32 bf16] [--iw-budgets 4096 65536] [--iw-sentences 0]

For each precision: one epoch of ``recipes/ptb/vae.yaml`` (batch 32, SGD, the loop's periodic
metrics and its validation included) through ``run_training`` on ``cuda``, seed 1: training
tokens/s, the epoch's wall time, and the peak GPU memory allocated by torch. Then the test report
of that model (``train.iw_samples_final`` = 500, in the run's precision, as a run ends), timed; and
``textvae.metrics.likelihood.iw_nll`` alone at each ``--iw-budgets`` (decoder tokens per call,
``max_tokens``; the test report runs at the device's default, ``likelihood.default_max_tokens``)
on the test set (the first ``--iw-sentences`` sentences, 0 = all 3,761), sentences/s and peak
memory, with the same samples for every budget (the estimate must not move). Each section
catches its own failure and prints it, so one broken section does not cost the others (device time is scarce). Results as JSON lines on
stdout and in DIR/gpu_ptb.jsonl. ``--variants`` times one epoch per settings string (A/B of a
lever), ``--epochs-only`` skips the evaluations.

Measured on one NVIDIA H200 (torch 2.11.0+cu130, cuDNN 9.19; the device's own Python, textvae
from the checkout; the machine to itself), 2026-12-04:

    python benchmarks/gpu_ptb.py --out /tmp/bench --stop-on-error

    section       precision  time                         rate                  peak GPU MB
    epoch         fp32       15.3 s train (23.0 s wall)   60.9k tok/s           269
    epoch         bf16       16.3 s train (17.1 s wall)   57.2k tok/s           270
    test report   fp32       33.9 s (IW-NLL 119.489)      111 sent/s            270
    test report   bf16       43.9 s (IW-NLL 119.702)      86 sent/s             270
    iw_nll 65536  fp32       17.1 s (IW-NLL 119.489)      220 sent/s            808
    iw_nll 65536  bf16       18.6 s (IW-NLL 119.707)      202 sent/s            554

(one epoch of training from the same init, so the two models differ: the fp32 / bf16 IW-NLLs are
of different models.) The step is launch-bound, not arithmetic-bound: bf16 autocast buys nothing
on the GPU (its casts are more launches), and the IW pass gains 2x from a 16x larger decoder
budget. A converged row (~50 epochs with validation, then the test report) is ~15-20 minutes
alone on the GPU, against ~2.5 hours on one CPU thread. Four rows of studies/ptb_reproduce.yaml
sharing the GPU (``textvae study ... --jobs 4 --set train.device=cuda train.threads=3``, 190 s):
the SGD rows (annealed, bn_vae; sparse gradients then) 25-26k tok/s each, the Adam rows
(cyclical, kl_constraint) 38-41k, ~130k tok/s together, 2.1x one process's.

Kept: the IW decoder budget by device, 65536 on a GPU (4096, chosen for CPU memory, stays the
CPU's). ``--precisions fp32 --max-steps 300 --skip-test-report --iw-budgets 65536 4096 16384
262144`` (another H200 machine, the full test set, the same samples each time; 262144 did not run
within the call's time):

    max_tokens  seconds  sent/s  IW-NLL        peak GPU MB
    4096        50.2      74.9   133.7308414   233
    16384       31.2     120.6   133.7308414   337
    65536       25.9     145.3   133.7308415   826

(The test reports in the table above ran at 4096, before this default.)

Kept: sparse embedding gradients only on the CPU. On the GPU the dense update is faster
(``--precisions fp32 --epochs-only --max-steps 700 --variants "" "--train.sparse_gradients
false" "" "--train.sparse_gradients false"``: sparse 52.9k / 62.9k tok/s, dense 65.3k / 76.2k,
the first pair including the cold start), so ``sparse_gradients_apply`` now leaves the GPU dense.
Not measured for want of device time (15 minutes per task): CUDA graphs of the step, budgets
above 65536, bf16 without the fp32 loss casts.
"""
from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
STOP_ON_ERROR = False  # --stop-on-error: end at the first failed section (and keep the device time)


def emit(out: Path, **record: Any) -> None:
    line = json.dumps(record)
    print(line, flush=True)
    with open(out / "gpu_ptb.jsonl", "a") as f:
        f.write(line + "\n")


def peak_mb() -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else float("nan")


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        torch.cuda.synchronize()


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def one_epoch(out: Path, precision: str, data: Any, device: str, max_steps: int, max_sentences: int,
              extra: list[str], label: str) -> Any:
    """Train one epoch at ``precision``; returns the run's configuration (its model is in the run folder)."""
    from textvae.tasks import run_training
    from textvae.tasks.runconfig import parse_run_config

    cfg, _ = parse_run_config([str(REPO / "textvae/recipes/ptb/vae.yaml"), "--name", f"{precision}{label}",
                               "--out_dir", str(out / "runs"),
                               "--train.device", device, "--train.precision", precision, "--train.epochs", "1",
                               "--train.iw_samples_final", "0", "--train.progress", "false",
                               "--train.tensorboard", "false", "--train.seed", "1",
                               *(["--train.max_steps", str(max_steps)] if max_steps else []),
                               *(["--data.max_sentences", str(max_sentences)] if max_sentences else []), *extra])
    reset_peak()
    start = time.perf_counter()
    report = run_training(cfg, data=data)
    wall = time.perf_counter() - start
    emit(out, section="epoch", precision=precision, settings=" ".join(extra), train_seconds=report["train_seconds"],
         wall_seconds=wall,
         tokens_per_s=report["train_tokens_per_s"], steps=report["train_steps"], peak_mb=peak_mb(),
         test_neg_elbo=report.get("neg_elbo"), test_kl=report.get("kl"))
    return cfg


def test_report(out: Path, cfg: Any, data: Any) -> None:
    """The run's own final evaluation (K = 500, every test metric), timed."""
    import dataclasses

    from textvae.tasks import create_task
    from textvae.training.train import evaluation_rng

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, iw_samples_final=500))
    task = create_task(cfg)
    device = torch.device(cfg.train.device)
    reset_peak()
    start = time.perf_counter()
    with evaluation_rng(device):
        report = task.test_report(data, Path(cfg.out_dir) / cfg.name / "model", device)
    sync()
    seconds = time.perf_counter() - start
    emit(out, section="test_report", precision=cfg.train.precision, seconds=seconds, iw_nll=report["iw_nll"],
         neg_elbo=report["neg_elbo"], kl=report["kl"], sentences=report.get("n_sentences"), peak_mb=peak_mb())


def iw_budgets(out: Path, cfg: Any, data: Any, budgets: list[int], limit: int) -> None:
    """iw_nll alone at each decoder budget, the same samples each time."""
    from textvae.metrics.likelihood import iw_nll
    from textvae.models.textvae import TextVAE
    from textvae.training.train import precision_autocast

    device = torch.device(cfg.train.device)
    model = TextVAE.from_pretrained(Path(cfg.out_dir) / cfg.name / "model", device)
    split = data.splits["test"]

    def batches():
        return (b.to(device) for b in split.batches(cfg.data.eval_batch_size, shuffle=False, limit=limit or None))

    for budget in budgets:
        reset_peak()
        start = time.perf_counter()
        with precision_autocast(device, cfg.train.precision):
            result = iw_nll(model, batches, 500, max_tokens=budget,
                            generator=torch.Generator().manual_seed(7))
        sync()
        seconds = time.perf_counter() - start
        n = len(result.nll)
        emit(out, section="iw_nll", precision=cfg.train.precision, max_tokens=budget, sentences=n, seconds=seconds,
             sentences_per_s=n / seconds, iw_nll=result.nll_mean, peak_mb=peak_mb())


def guarded(out: Path, name: str, fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:
        emit(out, section=name, error=traceback.format_exc())
        if STOP_ON_ERROR:
            raise SystemExit(f"gpu_ptb.py: {name} failed (--stop-on-error)")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--iw-budgets", nargs="+", type=int, default=[65536])
    parser.add_argument("--iw-sentences", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script (with --max-steps)")
    parser.add_argument("--max-steps", type=int, default=0, help="end the epoch after this many steps (0: whole)")
    parser.add_argument("--max-sentences", type=int, default=0, help="cap every split (0: whole; for a dry run)")
    parser.add_argument("--stop-on-error", action="store_true")
    parser.add_argument("--epochs-only", action="store_true", help="no test report, no iw_nll")
    parser.add_argument("--skip-test-report", action="store_true", help="only iw_nll after the epochs")
    parser.add_argument("--variants", nargs="+", default=[""],
                        help="settings of one epoch each, per precision (e.g. '' '--train.sparse_gradients false')")
    args = parser.parse_args()
    global STOP_ON_ERROR
    STOP_ON_ERROR = args.stop_on_error
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_ptb.py: no CUDA device")
    from textvae.config import DataConfig
    from textvae.data.datasets import load_dataset

    emit(out, section="device", name=torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
         torch=torch.__version__, cudnn=torch.backends.cudnn.version())
    data = load_dataset(DataConfig(name="ptb", batch_size=32, max_length=200,
                                   max_sentences=args.max_sentences or None))
    # epochs first, then evaluations: if device time runs out, what is left undone is the least needed
    cfgs = [guarded(out, f"epoch {p} {v}", one_epoch, out, p, data, args.device, args.max_steps,
                    args.max_sentences, v.split(), f"-{i}" if i else "")
            for p in args.precisions for i, v in enumerate(args.variants)]
    trained = [cfg for cfg in cfgs if cfg is not None] if not args.epochs_only else []
    for cfg in trained if not args.skip_test_report else []:
        guarded(out, f"test_report {cfg.train.precision}", test_report, out, cfg, data)
    for cfg in trained:
        guarded(out, f"iw_nll {cfg.train.precision}", iw_budgets, out, cfg, data, args.iw_budgets,
                args.iw_sentences)

if __name__ == "__main__":
    main()
