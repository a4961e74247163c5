"""The ``dialogue`` task: a (kg)CVAE of responses given their dialogue context (Zhao et al. 2017).

Its figures are the registered metrics of each stage (:mod:`textvae.metrics`: -ELBO at beta = 1 of
the responses given their contexts, its terms, MI, AU, and IW-NLL in the final report), computed
given each pair's context (:meth:`KgCVAE.given`); the final report adds the registered text metrics
(Zhao et al.'s BLEU precision / recall, distinct-n, self-BLEU) of responses generated to the test
contexts (:mod:`textvae.dialogue.metrics`), which decode and score text rather than read one
evaluation pass.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import torch

from textvae.dialogue.config import CVAERunConfig
from textvae.dialogue.data import DialogueData, DialogueSplit, check_dialogue_data_dir, load_dialogue_data
from textvae.dialogue.generation import SAMPLING_OPTIONS, check_response_options
from textvae.dialogue.metrics import respond_to_split
from textvae.dialogue.model import KgCVAE, check_likelihood_act
from textvae.errors import TextVAEError
from textvae.metrics import IWProgress, check_text_metrics, evaluate_model, list_metrics, score_texts
from textvae.remedies import REMEDIES, combines, transforms_posterior
from textvae.tasks.base import register_task
from textvae.training.progress import counted_progress
from textvae.training.task import Task
from textvae.training.train import EVAL_SEED, eval_seed

log = logging.getLogger("textvae")


@register_task("dialogue")
class DialogueTask(Task):
    config_class = CVAERunConfig
    reseed_after_init = False  # one process keeps the initialisation stream, as the recorded runs did
    item = "pair"  # a figure is the response's, given its context

    def check(self) -> None:
        check_text_metrics(instead="the test report scores the responses with them")
        check_likelihood_act(self.cfg.eval.likelihood_act)
        self.check_decoding()
        device = self.cfg.train.device  # by name: a device this machine lacks is the loop's error, not this check's
        on_cpu = device == "cpu" or device == "auto" and not torch.cuda.is_available()
        if self.cfg.train.precision == "bf16" and on_cpu:
            log.warning("train.precision bf16: on a CPU the dialogue CVAE runs slower in bf16 than in fp32 (oneDNN "
                        "builds a kernel for each new shape of its GRUs' per-step GEMMs; README, Dialogue)")
        family = self.cfg.model.latent_family()  # the transforms that combine with the CVAE's prior
        transforms = [n for n in REMEDIES.names()
                      if transforms_posterior(REMEDIES.get(n)) and combines([{"name": n}], **family)]
        wrong = [n for n in self.cfg.model.prior_remedies if n not in transforms]
        if wrong:  # a misspelt name would otherwise leave p(z|c) untransformed without a word
            raise TextVAEError(f"model.prior_remedies {wrong}: not a remedy that transforms the posterior's "
                               f"parameters; valid: {', '.join(transforms)}")

    def check_decoding(self) -> None:
        """The test report's decoding settings, refused before training rather than at its end: an unknown
        ``eval.method``, and a sampling option that another method would ignore (as ``textvae respond`` refuses it)."""
        ec, default = self.cfg.eval, type(self.cfg.eval)()
        changed = {name: getattr(ec, name) for name in SAMPLING_OPTIONS if getattr(ec, name) != getattr(default, name)}
        check_response_options(ec.method, lambda name: f"eval.{name}", **changed)

    def check_data(self) -> None:
        check_dialogue_data_dir(self.cfg.data)

    def load_data(self) -> DialogueData:
        return load_dialogue_data(self.cfg.data)

    def build_model(self, data: DialogueData) -> KgCVAE:
        dc = self.cfg.data
        text = {"context_turns": dc.context_turns, "max_turn_words": dc.max_turn_words}
        return KgCVAE(self.cfg.model, data.tokenizer.vocab_size, self.cfg.objective, data.act_names, text)

    def validate(self, model: KgCVAE, split: DialogueSplit, device: torch.device) -> dict[str, float]:
        return self._figures(model, split, device, "epoch")

    def periodic_metrics(self, model: KgCVAE, split: DialogueSplit, device: torch.device,
                         limit: int) -> Optional[dict[str, float]]:
        return self._figures(model, split, device, "periodic", limit)

    def test_report(self, data: DialogueData, best_dir: Path, device: torch.device,
                    progress: Optional[IWProgress] = None, split: str = "test") -> dict[str, Any]:
        """Figures of the best model on ``split``: the registered metrics (with IW-NLL), and the registered
        text metrics of its responses."""
        model = KgCVAE.from_pretrained(best_dir, device)
        test, ec = data.splits[split], self.cfg.eval
        k, n = self.cfg.train.iw_samples_final, len(test)
        log.info("%s report: %d pairs%s, then responses to %d contexts", split, min(ec.max_pairs or n, n),
                 f", IW-NLL with K = {k} samples" if k else "", min(ec.max_contexts or n, n))
        report = self._figures(model, test, device, "test", ec.max_pairs, k,
                               progress, bar=f"{split} report")
        texts = respond_to_split(model, data.tokenizer, test, ec.n_responses, ec.max_contexts, method=ec.method,
                                 max_len=ec.max_len, generator=torch.Generator(device=device).manual_seed(EVAL_SEED),
                                 temperature=ec.temperature, top_p=ec.top_p)
        report.update(score_texts(texts))
        if model.use_acts:  # which act its likelihood figures condition on, said beside them
            report["likelihood_act"] = ec.likelihood_act
        return report

    def report_settings(self, split: str) -> dict[str, Any]:
        """The pairs the report reads, and the act its likelihoods condition on (only when not the default, so
        that earlier reports resume)."""
        ec = self.cfg.eval
        act = {} if ec.likelihood_act == "predicted" else {"likelihood_act": ec.likelihood_act}
        return {"max_pairs": ec.max_pairs, **act, **super().report_settings(split)}

    def _figures(self, model: KgCVAE, split: DialogueSplit, device: torch.device, stage: str,
                 limit: Optional[int] = None, iw_samples: int = 0, iw_progress: Optional[IWProgress] = None,
                 bar: Optional[str] = None) -> dict[str, float]:
        """The metrics registered for ``stage`` on ``limit`` pairs spread evenly over ``split``, counted as
        ``n_pairs``, from a generator of their own (the stream the CVAE's recorded figures came from); with a
        progress bar named ``bar`` where one is given (and ``train.progress``)."""
        batches = counted_progress(
            lambda: (b.to(device) for b in split.batches(self.cfg.data.eval_batch_size, shuffle=False, limit=limit)),
            min(limit or len(split), len(split)), bar or stage, len, unit="pair",
            enabled=bar is not None and self.cfg.train.progress)()
        with model.likelihood_acts(self.cfg.eval.likelihood_act if model.use_acts else "predicted"):
            figures = evaluate_model(model, batches, list_metrics(stage), n_samples=iw_samples,
                                     generator=torch.Generator().manual_seed(eval_seed()), iw_progress=iw_progress)
        figures["n_pairs"] = figures.pop("n_sentences")
        return figures
