"""The ``sentences`` task: a sentence VAE (or the LSTM language model) on a corpus of sentences."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from textvae.config import RunConfig
from textvae.data.datasets import DataBundle, load_dataset
from textvae.models.textvae import TextVAE
from textvae.tasks.base import register_task
from textvae.training.task import Task
from textvae.training.train import evaluation

EPOCH_METRICS = ("elbo", "mi_batch", "au")
PERIODIC_METRICS = ("elbo", "mi_batch", "mi_dataset", "au")
TEST_METRICS = ("elbo", "mi_batch", "mi_dataset", "au", "diagnostics")


@register_task("sentences")
class SentenceTask(Task):
    config_class = RunConfig

    def load_data(self) -> DataBundle:
        return load_dataset(self.cfg.data)

    def build_model(self, data: DataBundle) -> TextVAE:
        return TextVAE(self.cfg.model, data.tokenizer.vocab_size, self.cfg.objective)

    def validate(self, model: TextVAE, split: Any, device: torch.device) -> dict[str, float]:
        return evaluation(model, self._batches(split), device, metrics=("elbo",) if model.is_lm else EPOCH_METRICS)

    def periodic_metrics(self, model: TextVAE, split: Any, device: torch.device,
                         limit: int) -> Optional[dict[str, float]]:
        if model.is_lm:  # the language model has no latent figures; its NLL comes at each epoch end
            return None
        return evaluation(model, self._batches(split, limit), device, metrics=PERIODIC_METRICS)

    def test_report(self, data: DataBundle, best_dir: Path, device: torch.device) -> dict[str, Any]:
        """Test-set figures of the best model, and the ground truth when the corpus is synthetic."""
        model = TextVAE.from_pretrained(best_dir, device)
        metrics = ("elbo",) if model.is_lm else TEST_METRICS
        if self.cfg.train.iw_samples_final > 0 and not model.is_lm:
            metrics += ("iw",)
        report = evaluation(model, self._batches(data.splits["test"]), device, metrics=metrics,
                            n_samples=self.cfg.train.iw_samples_final)
        if data.truth is not None:
            report.update(truth_figures(data.truth, "test"))
        return report

    def _batches(self, split: Any, limit: Optional[int] = None):
        return lambda: split.batches(self.cfg.data.eval_batch_size, shuffle=False, limit=limit)


def truth_figures(truth: dict[str, Any], split: str) -> dict[str, float]:
    """The synthetic corpus' true NLL, PPL and mutual information, to set beside the model's."""
    figures = truth["splits"][split]
    return {"true_nll": figures["nll"], "true_ppl": figures["ppl"], "true_mi": truth["mi"]}
