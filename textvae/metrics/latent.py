"""How much of the latent space is used: active units and per-dimension collapse diagnostics."""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch

from textvae.errors import TextVAEError

AU_THRESHOLD = 0.01


class ActiveUnits(NamedTuple):
    count: int
    variances: torch.Tensor  # [D] float64, unbiased Var_x(E_q[z_d|x])


def _variance(name: str, x: torch.Tensor) -> torch.Tensor:
    """Unbiased (N − 1) variance over the first axis of x [N, D], in float64."""
    if x.dim() != 2 or x.shape[0] < 2:
        raise TextVAEError(f"{name}: need a [N, D] tensor with N >= 2, got shape {tuple(x.shape)}")
    return x.detach().double().var(dim=0, correction=1)


def active_units(means: torch.Tensor, threshold: float = AU_THRESHOLD) -> ActiveUnits:
    """Active units (Burda et al. 2016; the text-VAE convention of He et al. 2019):

        A_d = Var_x(E_q[z_d|x])  (unbiased, N − 1, over the N evaluation sentences)
        AU  = #{d : A_d ≥ threshold},  threshold = 0.01

    means: posterior means [N, D]. Returns the count and the per-dimension variances.
    """
    var = _variance("active_units", means)
    return ActiveUnits(int((var >= threshold).sum()), var)


def collapse_verdict(n_active: int, n_dims: int) -> str:
    """"collapsed" (no active dimension), "healthy" (every dimension active), otherwise
    "partially collapsed: k/D dims active".

    Why "healthy" needs all dimensions: any inactive dimension is a collapsed coordinate (the
    decoder ignores it), and a fraction-based cut-off would be arbitrary. The count stays in the
    string so that a reader judges "31/32" and "3/32" for themselves.
    """
    if n_active == 0:
        return "collapsed"
    if n_active == n_dims:
        return "healthy"
    return f"partially collapsed: {n_active}/{n_dims} dims active"


@dataclass
class CollapseDiagnostics:
    var_mu: torch.Tensor  # [D], Var_x(mu_d), unbiased
    mean_sigma: Optional[torch.Tensor]  # [D], E_x[sigma_d]
    signal_to_noise: Optional[torch.Tensor]  # [D], Var_x(mu_d) / E_x[sigma_d²]
    kl_per_dim: Optional[torch.Tensor]  # [D], as given
    active: torch.Tensor  # [D] bool, var_mu >= threshold
    modes: list[str]  # [D]: "active", "signal too weak", "too noisy", or "inactive" (no sigma)
    verdict: str

    @property
    def n_active(self) -> int:
        return int(self.active.sum())


def collapse_diagnostics(mu: torch.Tensor, sigma: Optional[torch.Tensor],
                         kl_per_dim: Optional[torch.Tensor] = None,
                         threshold: float = AU_THRESHOLD,
                         noisy_sigma: float = 0.9) -> CollapseDiagnostics:
    """Per-dimension account of a Gaussian encoder over the N evaluation sentences.

    mu, sigma: posterior means and standard deviations [N, D] (sigma ``None`` for posteriors
    without one); kl_per_dim: mean KL per dimension [D], reported as given.

    * Var_x(mu_d) (unbiased) decides activity exactly as :func:`active_units`.
    * E_x[sigma_d]: the encoder's noise on that coordinate.
    * signal-to-noise Var_x(mu_d) / E_x[sigma_d²]. This ratio, rather than one over E_x[sigma_d],
      because by the law of total variance the aggregate posterior's variance splits as
      Var_q(z_d) = Var_x(mu_d) + E_x[sigma_d²] (between-sentence + within-sentence), and for a
      Gaussian channel with constant noise ½·log(1 + ratio) is that coordinate's mutual
      information. Unlike AU it is scale-free: a dimension that AU calls inactive because the
      model shrank its whole scale (small Var mu, smaller sigma) still shows a large ratio.

    Each inactive dimension gets the failure mode it shows (the prior is taken to be N(0, I)):
    "too noisy" when E_x[sigma_d] ≥ ``noisy_sigma`` (the posterior's noise is at the prior's
    scale: q(z_d|x) ≈ p(z_d), the classic KL collapse), otherwise "signal too weak" (the encoder
    is confident but mu_d barely moves across sentences).
    """
    var_mu = _variance("collapse_diagnostics", mu)
    active = var_mu >= threshold
    mean_sigma = snr = None
    if sigma is None:
        modes = ["active" if a else "inactive" for a in active.tolist()]
    else:
        if sigma.shape != mu.shape:
            raise TextVAEError(f"collapse_diagnostics: sigma shape {tuple(sigma.shape)} "
                               f"!= mu shape {tuple(mu.shape)}")
        sigma = sigma.detach().double()
        mean_sigma = sigma.mean(0)
        snr = var_mu / (sigma**2).mean(0)
        modes = ["active" if a else ("too noisy" if s >= noisy_sigma else "signal too weak")
                 for a, s in zip(active.tolist(), mean_sigma.tolist())]
    return CollapseDiagnostics(var_mu=var_mu, mean_sigma=mean_sigma, signal_to_noise=snr,
                               kl_per_dim=kl_per_dim, active=active, modes=modes,
                               verdict=collapse_verdict(int(active.sum()), mu.shape[1]))
