"""Few-label classification from posterior means: how much label information z carries.

The experiment of BN-VAE (Zhu et al. 2020) on Yelp: fit a logistic regression on the means of
q(z|x) of n labelled sentences per class, report test accuracy, for growing n.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from textvae.errors import TextVAEError


@dataclass
class ProbeResult:
    accuracies: list[float]  # one per random draw of the labelled subset
    mean: float
    std: float  # population std over the draws (0.0 for a single draw)


def _array(x: Any) -> np.ndarray:
    """numpy view of a tensor or array-like (tensors are detached and moved to the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def latent_probe(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any,
                 n_per_class: int, seed: int = 0, n_repeats: int = 1) -> ProbeResult:
    """Logistic regression (scikit-learn defaults: L2, C = 1) on ``n_per_class`` labelled training
    sentences drawn at random from each class, scored by accuracy on all test sentences.

    feats: posterior means [N, D] (tensors or arrays); labels [N]. Draws are repeated
    ``n_repeats`` times from one generator seeded with ``seed``; mean ± std over the draws.
    """
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise TextVAEError("latent_probe needs scikit-learn: pip install 'textvae[eval]'") from None
    x, y = _array(train_feats), _array(train_labels)
    x_test, y_test = _array(test_feats), _array(test_labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise TextVAEError(f"latent_probe: need at least 2 classes, got {len(classes)}")
    if counts.min() < n_per_class:
        raise TextVAEError(f"latent_probe: n_per_class={n_per_class} but class "
                           f"{classes[counts.argmin()]!r} has only {counts.min()} training examples")
    rng = np.random.default_rng(seed)
    accuracies = []
    for _ in range(n_repeats):
        chosen = np.concatenate([rng.choice(np.flatnonzero(y == c), n_per_class, replace=False)
                                 for c in classes])
        clf = LogisticRegression(max_iter=1000).fit(x[chosen], y[chosen])
        accuracies.append(float(clf.score(x_test, y_test)))
    return ProbeResult(accuracies=accuracies, mean=float(np.mean(accuracies)),
                       std=float(np.std(accuracies)))
