"""What the training loop needs of a *task*: one kind of data and model (sentences, dialogue, ...).

A task is built from its run configuration and registered in :mod:`textvae.tasks`; the loop of
:mod:`textvae.training.train` runs any task, so time budgets, bf16, the sampled softmax, sparse
gradients, data-parallel training, checkpoints and resuming come with the loop, not the task.

The run configuration (a nested dataclass) has ``name``, ``out_dir``, ``objective``, ``optim``,
``train`` as in :class:`textvae.config.RunConfig`, a ``data`` section with ``batch_size``,
``eval_batch_size`` and ``bucket_pool``, a ``model`` section with ``latent_family()`` (what the remedies'
combination rules read of the model), and ``to_dict()`` (its ``config.yaml`` and checkpoint record). The data a task loads has ``tokenizer`` and ``splits``
(``train``, ``valid``, ``test``); a split has ``lengths`` [N] (padded lengths of what the model
reconstructs), ``batch(index)``, ``sampler(batch_size, shuffle, seed, pool_batches)`` and
``unigram(vocab_size)``. The model's ``forward(batch, step)`` returns a
:class:`~textvae.models.textvae.VAEOutput`; it mixes in :class:`~textvae.models.output_head.OutputHead`
and :class:`~textvae.models.textvae.PretrainedMixin` and has ``objective``,
``inference_parameters()``, ``prior_parameters()`` and ``reinit_decoder(optimizer)``.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from textvae.metrics.likelihood import IWProgress
from textvae.models.textvae import WEIGHTS_FILE


class Task:
    """Base class of the registered tasks; a subclass overrides every method (``warm_start`` where
    its runs can start from saved weights, ``report_settings`` where its report has settings of its own)."""

    # Whether the training stream is re-seeded per rank after the model is drawn. One process of a
    # task that says False keeps drawing from the initialisation stream (as its recorded runs did);
    # data-parallel runs always re-seed, each rank needing a stream of its own.
    reseed_after_init = True
    # what the figures are per, and counted in, in a study's report: nats per sentence, N test sentences
    item = "sentence"

    def __init__(self, cfg: Any):
        self.cfg = cfg

    def check(self) -> None:
        """What the run needs that only its end would find missing (an optional package of its test
        report), as a one-line error before any work; nothing by default."""

    def check_data(self) -> None:
        """A data setting that training would ignore (a ``data.data_dir`` its corpus is not read from), as a
        one-line error before any work; nothing by default. Training calls it, not the evaluation of a finished
        run, which reads its data as the run did."""

    def load_data(self) -> Any:
        """The tokenizer and the train / valid / test splits that ``cfg.data`` names."""
        raise NotImplementedError

    def build_model(self, data: Any) -> nn.Module:
        """A freshly initialised model for ``data`` (from torch's global random stream)."""
        raise NotImplementedError

    def warm_start(self, model: nn.Module, data: Any) -> dict[str, Any]:
        """Weights a new run starts from besides its draw (``model.encoder_from``: another run's
        encoder); nothing by default. Called once, when a run starts, never when it resumes. Returns what
        it started from, for the run's log (the start's ``data`` record), e.g. the md5 of those weights (None:
        nothing)."""
        return {}

    def validate(self, model: nn.Module, split: Any, device: torch.device) -> dict[str, float]:
        """Figures of the whole validation split at the end of an epoch; ``neg_elbo`` (the model
        selection criterion) and ``elbo_ppl`` among them."""
        raise NotImplementedError

    def periodic_metrics(self, model: nn.Module, split: Any, device: torch.device,
                         limit: int) -> Optional[dict[str, float]]:
        """Figures of ``limit`` validation items spread evenly over the split, every
        ``train.metrics_every`` steps (``None``: the task has none for this model)."""
        raise NotImplementedError

    def test_report(self, data: Any, best_dir: Path, device: torch.device,
                    progress: Optional[IWProgress] = None, split: str = "test") -> dict[str, Any]:
        """The final figures of the best model (saved in ``best_dir``) on ``split`` (the test split, or
        another that ``textvae evaluate --split`` names). ``progress``: where its IW pass keeps the batches
        it has finished (:meth:`iw_progress`, for the same weights and split), so that a report stopped
        part-way resumes there."""
        raise NotImplementedError

    def iw_progress(self, path: Optional[Path], best_dir: Path, device: torch.device,
                    split: str = "test") -> Optional[IWProgress]:
        """The IW progress in ``path`` (None: none) of the report on ``split``, for the weights in ``best_dir``
        and the settings that decide its figures: K, precision, device type, the data section (corpus,
        evaluation batch size, ...), and the task's own (:meth:`report_settings`)."""
        train = self.cfg.train
        if path is None or train.iw_samples_final == 0:  # 0: the report has no IW pass, so no key to hash
            return None
        return IWProgress(path, IWProgress.key_of(best_dir / WEIGHTS_FILE, samples=train.iw_samples_final,
                                                  precision=train.precision, device=device.type,
                                                  data=dataclasses.asdict(self.cfg.data),
                                                  **self.report_settings(split)))

    def report_settings(self, split: str) -> dict[str, Any]:
        """What besides the run's K, precision and data section decides the figures of the report on ``split``,
        for its IW progress key: the split (none for the test split, so that a report stopped by code that did
        not name it resumes under code that does)."""
        return {} if split == "test" else {"split": split}
