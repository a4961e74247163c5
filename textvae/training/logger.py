"""Run logs: one JSON object per line in ``metrics.jsonl`` (and TensorBoard scalars when installed).

Only rank 0 writes. Each record carries ``step``, ``epoch`` and a ``split`` ("train", "valid", ...)
so curves of KL, MI, AU and NLL can be read back with :func:`read_jsonl`.

Resuming keeps the log consistent with the checkpoint: a checkpoint stores the log's length in
bytes (:meth:`RunLogger.offset`) and the resumed run truncates the file back to it, so records
written after the checkpoint (which the resumed run writes again) appear once.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any, Optional

LOG_FILE = "metrics.jsonl"  # in a run folder


class RunLogger:
    """Appends records to ``run_dir/metrics.jsonl``.

    truncate_to: cut the file to this many bytes first (the checkpoint's :meth:`offset` when
    resuming, 0 for a fresh run), keeping the complete records cut in ``cut``; purge_step: TensorBoard
    hides events from this step on, which the resumed run logs again.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = True, enabled: bool = True,
                 truncate_to: Optional[int] = None, purge_step: Optional[int] = None):
        self.enabled = enabled
        self.path = run_dir / LOG_FILE
        self.tb = None
        self.cut: list[dict[str, Any]] = []  # what a resume cut from the log (a stopped test report's start)
        if not enabled:
            return
        run_dir.mkdir(parents=True, exist_ok=True)
        if truncate_to is not None:
            with open(self.path, "a+") as f:  # creates the file when it is missing
                if f.tell() > truncate_to:
                    f.seek(truncate_to)
                    self.cut = complete_records(f.read())
                    f.truncate(truncate_to)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # the [tb] extra is optional; said, so that no one looks for the folder
                SummaryWriter = None
                logging.getLogger("textvae").info("train.tensorboard: tensorboard is not installed (pip install "
                                                  "'textvae[tb]'); the run logs to metrics.jsonl only")
            if SummaryWriter is not None:
                self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)

    def offset(self) -> int:
        """Bytes written so far (every record is complete: each is written and closed at once)."""
        return self.path.stat().st_size if self.enabled and self.path.is_file() else 0

    def log(self, split: str, step: int, epoch: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"split": split, "step": step, "epoch": epoch, "time": round(time.time(), 3), **values}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)):
                    self.tb.add_scalar(f"{split}/{key}", value, step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a log, or of a run folder's ``metrics.jsonl`` (none when there is no log yet). A last line
    without its newline -- a record cut short by a killed process, which ``--resume`` would truncate away -- is
    ignored."""
    path = Path(path) / LOG_FILE if Path(path).is_dir() else Path(path)
    if not path.is_file():
        return []
    return complete_records(path.read_text())


def final_report(records: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The last test record of a run's log records, without the log's bookkeeping (as the training
    loop returns it); None if there is none."""
    tests = [r for r in records if r.get("split") == "test"]
    if not tests:
        return None
    return {k: v for k, v in tests[-1].items() if k not in ("split", "step", "epoch", "time")}


def complete_records(text: str) -> list[dict[str, Any]]:
    """The records of a log's text, without a last line cut short."""
    complete = text.split("\n")[:-1]  # the part after the last newline is empty or an incomplete record
    return [json.loads(line) for line in complete if line.strip()]
