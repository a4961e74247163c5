"""Issue 15: how often the published LM's plateau rule forces an early lr decay on PTB (docs/results/ptb/causes.md).

    TEXTVAE_DATA_DIR=/work/shared/data python benchmarks/lm_plateau_rule.py [--valid-nll 104]
        [--per-token 4.8 5.0 5.2 5.5] [--archive docs/results/ptb/archive.json --run lm/seed2]

Li et al. 2019's LM script (bohanli/vae-pretraining-encoder, ``lm.py``), after each lr decay, sets the
baseline that later validation NLLs are compared with to the last training batch's mean sentence loss, not
to a validation figure. Their batches hold sentences of one length L (at most ``--batch-size`` of them), so
that loss is about (L + 1) x the per-token training loss. When it lies below the validation NLL, the next
two epochs count as not improved whatever they reach, and the lr halves again two epochs after the decay.

Printed, from the training file's sentence lengths and their batching: for each per-token training loss,
the longest sentence whose batch loses less than ``--valid-nll``, and the share p of the epoch's batches
(the last batch of an epoch is any of them, in a random order) at or below it. Then, for a textvae run's
decay epochs (read from a study archive), the epoch the run would stop at (its 5th decay) if each decay
after the first were followed by another two epochs later with probability p, and otherwise came when it
did: d_1 + sum_i (2p + (1 - p) g_i) on average over the gaps g_i, and d_1 + 2k (k later decays) with
probability p^k. This holds the rest of the run fixed: an earlier decay changes what follows it, so the
figures say how often the rule fires, not what it costs in nats (that takes their script trained).
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def batch_lengths(train_file: Path, batch_size: int) -> Counter:
    """Number of one-length batches per sentence length (in words), as their ``create_data_batch`` makes
    them: the sentences sorted by length, each length cut into batches of at most ``batch_size``."""
    per_length = Counter(len(line.split()) for line in train_file.read_text().splitlines() if line.strip())
    return Counter({length: math.ceil(n / batch_size) for length, n in per_length.items()})


def forced_share(batches: Counter, valid_nll: float, per_token: float) -> tuple[int, float]:
    """The longest sentence length whose batch loses less than ``valid_nll`` per sentence ((L + 1) targets
    at ``per_token`` nats each), and the share of batches at or below it."""
    longest = math.ceil(valid_nll / per_token) - 2  # (L + 1) * per_token < valid_nll
    total = sum(batches.values())
    return longest, sum(n for length, n in batches.items() if length <= longest) / total


def decay_epochs(archive: Path, label: str) -> list[int]:
    """The epochs after which a run's lr was halved, from its archived validation records (each epoch's
    record carries the lr its plateau decision left, so a decay shows in the record of its epoch)."""
    variant, seed = label.split("/seed")
    runs = json.loads(archive.read_text())["runs"]
    run = next(r for r in runs if r["variant"] == variant and r["seed"] == int(seed))
    lrs = [(record["epoch"], record["lr"]) for record in run["valid"]]
    return [epoch for (_, before), (epoch, lr) in zip(lrs, lrs[1:]) if lr < before]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=os.environ.get("TEXTVAE_DATA_DIR", ""), help="holds ptb/ptb.train.txt")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--valid-nll", type=float, default=104.0, help="validation NLL at the decays (nats/sentence)")
    ap.add_argument("--per-token", type=float, nargs="+", default=[4.8, 5.0, 5.2, 5.5],
                    help="training loss per target token (nats), with dropout")
    ap.add_argument("--archive", default=str(REPO / "docs/results/ptb/archive.json"))
    ap.add_argument("--run", default="lm/seed2", help="the archived run whose decay epochs are used")
    args = ap.parse_args()
    train = Path(args.data_dir) / "ptb" / "ptb.train.txt"
    if not train.is_file():
        raise SystemExit(f"no {train}: set TEXTVAE_DATA_DIR or --data-dir")
    batches = batch_lengths(train, args.batch_size)
    decays = decay_epochs(Path(args.archive), args.run)
    first, gaps = decays[0], [b - a for a, b in zip(decays, decays[1:])]
    print(f"{sum(batches.values())} training batches of at most {args.batch_size}; validation NLL {args.valid_nll}; "
          f"{args.run} decayed after epochs {', '.join(map(str, decays))} (stopped after the last)")
    print(f"{'nats/token':>10} {'longest L':>9} {'p forced':>8} {'mean stop epoch':>15} {'earliest stop':>13} "
          f"{'P(earliest)':>11}")
    for per_token in args.per_token:
        longest, p = forced_share(batches, args.valid_nll, per_token)
        mean_stop = first + sum(2 * p + (1 - p) * g for g in gaps)
        print(f"{per_token:>10.2f} {longest:>9} {p:>8.3f} {mean_stop:>15.1f} {first + 2 * len(gaps):>13} "
              f"{p ** len(gaps):>11.3f}")


if __name__ == "__main__":
    main()
