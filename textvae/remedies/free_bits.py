"""Free bits: KL below a threshold costs nothing (and gets no gradient), so the optimiser has no
reason to push it further towards zero. The published variants differ in *what* is clamped:

* ``free_bits_kingma2016`` (Kingma et al. 2016, "Improved Variational Inference with Inverse
  Autoregressive Flow"): the latent dimensions are split into groups G_j of ``group_size``; per
  group, the KL averaged over the minibatch is clamped:

      K = beta * Σ_j max(lambda, E_b[KL_{b,j}]),     KL_{b,j} = Σ_{d in G_j} KL_{b,d}

* ``free_bits_li2019`` (Li et al. 2019, "A Surprisingly Effective Fix for Deep Latent Variable
  Modeling of Text"; ``--fb 2`` of their code, the published recipe): per example and dimension,

      K_b = beta * Σ_d max(lambda, KL_{b,d}),        lambda = target_kl / latent_dim

  (their target 8 nats with 32 dimensions gives 0.25 nats per dimension).
* ``free_bits_li2019_total`` (their code's ``--fb 1``): per example, on its total KL,

      K_b = beta * max(target_kl, Σ_d KL_{b,d})

* ``target_kl`` (their code's ``--fb 3``): the total KL averaged over the minibatch,

      K = beta * max(target, E_b[Σ_d KL_{b,d}])

  i.e. Kingma's rule with a single group of all dimensions.

Li et al.'s code writes each rule as a mask, ``mask · KL`` with mask = [KL > threshold]: the same
gradient, a value lower by the threshold where the mask is 0 (here the clamp's value counts, so the
term is a bound on what the KL may cost). Below its threshold a KL gets no gradient at all: an
encoder whose KL starts under the floor and whose reconstruction gradient is tiny (He et al.'s
U(-0.01, 0.01) init under SGD) stays there; Li et al. pair the rule with a pretrained encoder.

Where the KL has no closed form (a flow prior or posterior) it reaches the hook as one column [B, 1],
the one-sample estimate log q(z|x) - log p(z); only the rules on the total take it. The clamp then
acts on each example's draw, not its KL: a low draw holds an example at the floor, the term's
expectation E[max(lambda, draw)] is above max(lambda, KL) (Jensen), and a learned prior learns only
from the draws above the floor.

The hook returns per-sentence values whose batch mean is K and has K's gradient: a batch-level
clamp that is active (E_b > lambda) contributes each sentence's own KL (gradient 1/B each); an
inactive one contributes the constant lambda to every sentence (gradient 0). Where a value equals
its threshold exactly, the clamp is taken as inactive.
"""
from __future__ import annotations

import torch

from textvae.config import COUNT
from textvae.errors import TextVAEError
from textvae.remedies.base import Remedy, register_remedy


def batch_free_bits(kl_groups: torch.Tensor, threshold: float) -> torch.Tensor:
    """kl_groups [B, G] -> [B] with mean_b = Σ_j max(threshold, mean_b kl_groups[:, j])."""
    active = kl_groups.detach().mean(0) > threshold  # [G]
    return torch.where(active, kl_groups, torch.full_like(kl_groups, threshold)).sum(-1)


def example_free_bits(kl: torch.Tensor, threshold: float) -> torch.Tensor:
    """kl [B, D] -> [B]: Σ_d max(threshold, kl[b, d]), no gradient where kl <= threshold."""
    return torch.where(kl.detach() > threshold, kl, torch.full_like(kl, threshold)).sum(-1)


def per_dimension(name: str, kl: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """``kl`` [B, D] itself; a one-line error where the model gives one sampled column [B, 1] instead (a
    posterior or prior without a closed-form KL: iaf, flow, mog), whose floor would then be one
    dimension's on the whole KL (0.25 nats instead of 8 at D = 32, target 8)."""
    if kl.shape[-1] != latent_dim:
        raise TextVAEError(f"remedy {name!r} floors the KL of each latent dimension (or group), but this model's "
                           f"KL is one sampled column: its posterior or prior (iaf, flow, mog) has no closed-form "
                           f"KL per dimension; use free_bits_li2019_total or target_kl, which floor the total")
    return kl


def _non_negative(name: str, value: float) -> float:
    if value < 0:
        raise TextVAEError(f"remedy {name!r}: the threshold must be >= 0, got {value}")
    return float(value)


@register_remedy("free_bits_kingma2016")
class FreeBitsKingma(Remedy):
    """Free bits (Kingma et al. 2016): K = beta Σ_groups max(lambda_, E_batch[KL_group]); a last group
    smaller than ``group_size`` holds the remaining dimensions."""

    replaces_kl = True

    RANGES = {"group_size": COUNT}

    def __init__(self, latent_dim: int, lambda_: float = 0.25, group_size: int = 1):
        super().__init__()
        self.threshold = _non_negative("free_bits_kingma2016", lambda_)
        self.group_size, self.latent_dim = group_size, latent_dim

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        if self.group_size < self.latent_dim:  # one group of every dimension takes a total too
            per_dimension("free_bits_kingma2016", kl, self.latent_dim)
        groups = torch.stack([g.sum(-1) for g in kl.split(self.group_size, dim=-1)], dim=-1)  # [B, G]
        return beta * batch_free_bits(groups, self.threshold)


@register_remedy("free_bits_li2019")
class FreeBitsLi(Remedy):
    """Free bits (Li et al. 2019, ``--fb 2``): K_b = beta Σ_d max(target_kl / latent_dim, KL_{b,d})."""

    replaces_kl = True

    def __init__(self, latent_dim: int, target_kl: float = 8.0):
        super().__init__()
        self.threshold = _non_negative("free_bits_li2019", target_kl) / max(latent_dim, 1)
        self.latent_dim = latent_dim

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        return beta * example_free_bits(per_dimension("free_bits_li2019", kl, self.latent_dim), self.threshold)


@register_remedy("free_bits_li2019_total")
class FreeBitsLiTotal(Remedy):
    """Free bits on the total (Li et al. 2019, ``--fb 1``): K_b = beta max(target_kl, Σ_d KL_{b,d})."""

    replaces_kl = True

    def __init__(self, target_kl: float = 8.0):
        super().__init__()
        self.threshold = _non_negative("free_bits_li2019_total", target_kl)

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        return beta * example_free_bits(kl.sum(-1, keepdim=True), self.threshold)


@register_remedy("target_kl")
class TargetKL(Remedy):
    """Target KL (Li et al. 2019, ``--fb 3``): K = beta max(target, E_batch[Σ_d KL]); the whole KL is
    free until its batch mean exceeds ``target``."""

    replaces_kl = True

    def __init__(self, target: float = 8.0):
        super().__init__()
        self.threshold = _non_negative("target_kl", target)

    def kl_term(self, kl: torch.Tensor, beta: float, step: int) -> torch.Tensor:
        return beta * batch_free_bits(kl.sum(-1, keepdim=True), self.threshold)
