"""Few-label classification from posterior means: how much label information z carries.

The experiment of BN-VAE (Zhu et al. 2020) on Yelp: fit a logistic regression on the means of
q(z|x) of n labelled sentences per class, report test accuracy, for growing n. :func:`latent_probe`
works on given features, :func:`probe_model` encodes the sentences itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from textvae.errors import TextVAEError
from textvae.metrics._common import Batches, eval_mode, iterate


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


def draw_labelled(labels: Any, n_per_class: int, n_repeats: int = 1, seed: int = 0) -> list[np.ndarray]:
    """``n_repeats`` random labelled subsets: positions of ``n_per_class`` examples drawn without
    replacement from each class of ``labels`` [N], from one generator seeded with ``seed``."""
    y = _array(labels)
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) < 2:
        raise TextVAEError(f"latent_probe: need at least 2 classes, got {len(classes)}")
    if counts.min() < n_per_class:
        raise TextVAEError(f"latent_probe: n_per_class={n_per_class} but class "
                           f"{classes[counts.argmin()]!r} has only {counts.min()} training examples")
    rng = np.random.default_rng(seed)
    return [np.concatenate([rng.choice(np.flatnonzero(y == c), n_per_class, replace=False)
                            for c in classes]) for _ in range(n_repeats)]


def _accuracy(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray) -> float:
    """Test accuracy of a logistic regression (scikit-learn defaults: L2, C = 1) fitted on x, y."""
    try:
        from sklearn.linear_model import LogisticRegression
    except ImportError:
        raise TextVAEError("latent_probe needs scikit-learn: pip install 'textvae[eval]'") from None
    return float(LogisticRegression(max_iter=1000).fit(x, y).score(x_test, y_test))


def _result(accuracies: list[float]) -> ProbeResult:
    return ProbeResult(accuracies=accuracies, mean=float(np.mean(accuracies)),
                       std=float(np.std(accuracies)))


def latent_probe(train_feats: Any, train_labels: Any, test_feats: Any, test_labels: Any,
                 n_per_class: int, seed: int = 0, n_repeats: int = 1) -> ProbeResult:
    """Logistic regression (scikit-learn defaults: L2, C = 1) on ``n_per_class`` labelled training
    sentences drawn at random from each class, scored by accuracy on all test sentences.

    feats: posterior means [N, D] (tensors or arrays); labels [N]. Draws are repeated
    ``n_repeats`` times (:func:`draw_labelled`); mean ± std over the draws.
    """
    x, y = _array(train_feats), _array(train_labels)
    x_test, y_test = _array(test_feats), _array(test_labels)
    return _result([_accuracy(x[d], y[d], x_test, y_test)
                    for d in draw_labelled(y, n_per_class, n_repeats, seed)])


def posterior_means(model: Any, batches: Batches) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Means of q(z|x) [N, D] (CPU), labels [N] (``batch.extras["labels"]``) and split positions
    [N] (``batch.index``) of every sentence of ``batches``, in eval mode."""
    means, labels, index = [], [], []
    with eval_mode(model):
        for batch in iterate(batches):
            if "labels" not in batch.extras:
                raise TextVAEError("latent probe: the data has no labels; it needs a labelled "
                                   "corpus such as yelp_short")
            means.append(model.encode(batch).mean.float().cpu())
            labels.append(_array(batch.extras["labels"]))
            index.append(_array(batch.index))
    if not means:
        raise TextVAEError("latent probe: no sentences to encode")
    return torch.cat(means), np.concatenate(labels), np.concatenate(index)


def probe_model(model: Any, train_labels: Any, train_batches: Callable[[np.ndarray], Batches],
                test_batches: Batches, n_per_class: int, n_repeats: int = 5,
                seed: int = 0) -> ProbeResult:
    """:func:`latent_probe` on posterior means (the BN-VAE experiment): the labelled training
    subsets are drawn from ``train_labels`` [N] first, so only the sentences they hold are encoded
    (``train_batches(positions)`` gives batches of those split positions, in any order); every
    sentence of ``test_batches`` is a test example."""
    draws = draw_labelled(train_labels, n_per_class, n_repeats, seed)
    pool = np.unique(np.concatenate(draws))
    feats, _, index = posterior_means(model, train_batches(pool))
    order = np.argsort(index)
    if not np.array_equal(index[order], pool):
        raise TextVAEError("latent probe: train_batches did not return the requested sentences")
    x, y = feats.numpy()[order], _array(train_labels)  # row r of x: split position pool[r]
    x_test, y_test, _ = posterior_means(model, test_batches)
    return _result([_accuracy(x[np.searchsorted(pool, d)], y[d], x_test.numpy(), y_test)
                    for d in draws])
