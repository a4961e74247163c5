"""The ``sentences`` task: a sentence VAE (or the LSTM language model) on a corpus of sentences."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from textvae.config import RunConfig
from textvae.data.datasets import DataBundle, Split, check_data_dir, load_dataset
from textvae.metrics import IWProgress, iw_description, list_metrics
from textvae.files import file_md5
from textvae.models.textvae import WEIGHTS_FILE, TextVAE, check_model_config
from textvae.reduction import corpus_nll, token_counts
from textvae.remedies import REMEDIES
from textvae.tasks.base import register_task
from textvae.training.progress import counted_progress, token_count
from textvae.training.task import Task
from textvae.training.train import evaluation, precision_autocast

log = logging.getLogger("textvae")

@register_task("sentences")
class SentenceTask(Task):
    config_class = RunConfig

    def check(self) -> None:
        check_model_config(self.cfg.model)

    def check_data(self) -> None:
        check_data_dir(self.cfg.data)

    def load_data(self) -> DataBundle:
        return load_dataset(self.cfg.data)

    def build_model(self, data: DataBundle) -> TextVAE:
        return TextVAE(self.cfg.model, data.tokenizer.vocab_size, self.cfg.objective)

    def warm_start(self, model: TextVAE, data: DataBundle) -> dict[str, Any]:
        mc = self.cfg.model
        spread = [spec["name"] for spec in self.cfg.objective.remedies if REMEDIES.get(spec["name"]).needs_spread_means]
        if spread and mc.encoder_scheme() == "he2019" and not mc.encoder_from:
            # BN-VAE's KL floor holds once the posterior means vary over a batch by more than BatchNorm's eps
            log.warning(f"remedy {spread[0]} under He et al.'s U(-0.01, 0.01) encoder init starts the posterior "
                        f"means nearly equal over the batch, below what it acts on: the run may well collapse "
                        f"(BN-VAE's code keeps PyTorch's init there: --model.encoder_init torch)")
        if not mc.encoder_from:
            return {}
        # after the draw, so the decoder is the one a fresh run gets
        model.load_inference_network(self.cfg.model.encoder_from, data.tokenizer)
        # what it started from: a study checks it before resuming the run (textvae.study.folders.check_start)
        return {"encoder_from_md5": file_md5(Path(self.cfg.model.encoder_from) / WEIGHTS_FILE)}

    def validate(self, model: TextVAE, split: Any, device: torch.device) -> dict[str, float]:
        return evaluation(model, self._batches(split), device, metrics=list_metrics("epoch"))

    def periodic_metrics(self, model: TextVAE, split: Any, device: torch.device,
                         limit: int) -> Optional[dict[str, float]]:
        if model.is_lm:  # the language model has no latent figures; its NLL comes at each epoch end
            return None
        return evaluation(model, self._batches(split, limit), device, metrics=list_metrics("periodic"))

    def test_report(self, data: DataBundle, best_dir: Path, device: torch.device,
                    progress: Optional[IWProgress] = None, split: str = "test") -> dict[str, Any]:
        """Figures of the best model on ``split``, and the ground truth when the corpus is synthetic; in the
        run's precision (``eval_precision``)."""
        model = TextVAE.from_pretrained(best_dir, device)
        precision, test = self.cfg.train.precision, data.splits[split]
        said = iw_description(model, self.cfg.train.iw_samples_final)
        log.info("%s report: %d sentences (%d tokens)%s", split, len(test), int(token_counts(test.lengths).sum()),
                 f", {said}" if said else "")
        # A bf16 run is evaluated under the same autocast (its speed: benchmarks/throughput.py, iw), labelled so.
        report = split_figures(model, test, device, self.cfg.data.eval_batch_size, self.cfg.train.iw_samples_final,
                               precision, f"{split} report", metrics=list_metrics("test"),
                               iw_progress=progress,
                               bar=self.cfg.train.progress)
        report["eval_precision"] = precision
        if data.truth is not None:
            report.update(truth_figures(data.truth, data.splits[split]))
        return report

    def _batches(self, split: Any, limit: Optional[int] = None):
        return lambda: split.batches(self.cfg.data.eval_batch_size, shuffle=False, limit=limit)


def split_figures(model: TextVAE, split: Split, device: torch.device, batch_size: int, n_samples: int,
                  precision: str, label: str, limit: Optional[int] = None, bar: bool = True,
                  **options: Any) -> dict[str, Any]:
    """The registered metrics (``options``: :func:`~textvae.metrics.evaluate_model`'s) of ``model`` on ``limit``
    sentences spread over ``split`` (all when None), in evaluation order and batches of ``batch_size``, under
    ``precision``'s autocast and evaluation's own random stream, with a progress bar ``label`` counted in tokens:
    the run's test report and ``textvae evaluate`` alike, so that the second gives the first's figures."""
    n_tokens = int(token_counts(split.lengths[split.subset(limit)]).sum())
    batches = counted_progress(lambda: split.batches(batch_size, shuffle=False, limit=limit), n_tokens, label,
                               token_count, unit="tok", enabled=bar)
    with precision_autocast(device, precision):
        return evaluation(model, batches, device, n_samples=n_samples, **options)


def truth_figures(truth: dict[str, Any], split: Split, positions: Optional[np.ndarray] = None) -> dict[str, float]:
    """The synthetic corpus' true I(x; latent), and its true NLL and PPL on the evaluated sentences
    (``positions`` in ``split``, all when None), to set beside the model's.

    The split's sentences are truth.json's first ones (``data.max_sentences`` keeps a split's first
    sentences). Where reading dropped or cut lines (``data.max_length``) they are not, and the true NLL
    and PPL are left out, with a warning."""
    figures, stats = truth["splits"][split.name], split.stats
    mi = {"true_mi": float(truth["mi"])}
    if stats.blank or stats.long or stats.malformed or len(split) > figures["n_sentences"]:
        log.warning("%s: reading dropped or cut lines (%s): the true NLL and PPL are left out, as the "
                    "sentences no longer pair with the ground truth's", split.name, stats.summary())
        return mi
    positions = np.arange(len(split)) if positions is None else positions
    true_nll, true_ppl = corpus_nll(-np.asarray(figures["log_px"])[positions], token_counts(split.lengths[positions]))
    return {"true_nll": true_nll, "true_ppl": true_ppl, **mi}
