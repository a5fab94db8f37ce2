"""The numbers of a shift check, from arrays: how unusual each image is, whether a set differs as a whole, which
int8 ranges it overflows, and how accuracy compares.

- Per image: the Mahalanobis distance of its penultimate features to the nearest class mean, under one shared
  covariance fitted on the train split (Lee et al., 2018), shrunk by Ledoit-Wolf since a backbone has hundreds
  to thousands of features and a small data set fewer images. Its meaning comes from the val split: the share
  of new images above val's `quantile` percentile, against the (100 - quantile)% expected, and a rank test of
  the new scores against val's.
- Per set: the squared maximum mean discrepancy between the new features and val's (Gaussian kernel, median
  bandwidth, features standardized by the train split) with a permutation test (scipy's). Val, not train, is
  the reference sample: the model has fitted its train images, so even same-distribution images differ from
  them; val is held out as the new images are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Gaussian:
    """Class means and a shared precision matrix of the train split's features, and the standardization the
    MMD test uses."""

    means: np.ndarray  # (classes, features)
    precision: np.ndarray  # (features, features)
    center: np.ndarray
    scale: np.ndarray


def fit_gaussian(features: np.ndarray, labels: np.ndarray, n_classes: int) -> Gaussian:
    from sklearn.covariance import LedoitWolf

    features = features.astype(np.float64)
    present = [c for c in range(n_classes) if (labels == c).any()]
    means = np.full((n_classes, features.shape[1]), np.nan)
    for c in present:
        means[c] = features[labels == c].mean(0)
    residuals = features - means[labels]
    precision = LedoitWolf(assume_centered=True).fit(residuals).precision_
    scale = features.std(0)
    return Gaussian(means=means[present], precision=precision, center=features.mean(0),
                    scale=np.where(scale > 0, scale, 1.0))


def mahalanobis(features: np.ndarray, g: Gaussian) -> np.ndarray:
    """Each image's distance to the nearest class mean."""
    d = features.astype(np.float64)[:, None, :] - g.means[None, :, :]  # (images, classes, features)
    squared = np.einsum("icf,fg,icg->ic", d, g.precision, d)
    return np.sqrt(np.maximum(squared.min(1), 0.0))


def above_share(scores: np.ndarray, val_scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """The share of `scores` above `threshold`, and the one-sided Mann-Whitney p-value of the new scores being
    larger than val's: a rank test of both samples, so a threshold read off a small val split is not taken as
    exact."""
    from scipy.stats import mannwhitneyu

    p = mannwhitneyu(scores, val_scores, alternative="greater").pvalue
    return float((scores > threshold).mean()), float(p)


def spread(n: int, most: int, seed: int) -> np.ndarray:
    """At most `most` of `n` indices, a seeded random choice (all when n <= most), sorted."""
    if n <= most:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, most, replace=False))


def mmd_test(a: np.ndarray, b: np.ndarray, g: Gaussian, permutations: int, seed: int) -> tuple[float, float]:
    """(squared MMD, permutation p-value) between two feature sets. The kernel matrix of the pooled set is
    computed once; a permutation's statistic is then v'Kv with v = +1/m on one side and -1/n on the other
    (the biased estimate, exact under permutation)."""
    from scipy.spatial.distance import cdist
    from scipy.stats import permutation_test

    pooled = (np.concatenate([a, b]).astype(np.float64) - g.center) / g.scale
    sq = cdist(pooled, pooled, "sqeuclidean")
    bandwidth = np.median(sq[np.triu_indices(len(pooled), 1)]) or 1.0
    kernel = np.exp(-sq / bandwidth)
    m, n = len(a), len(b)

    def statistic(x, y, axis):  # x, y: indices into the pooled set, a batch of permutations along axis 0
        x, y = np.atleast_2d(x).astype(int), np.atleast_2d(y).astype(int)
        v = np.zeros((x.shape[0], m + n))
        np.put_along_axis(v, x, 1.0 / m, axis=1)
        np.put_along_axis(v, y, -1.0 / n, axis=1)
        return np.einsum("bi,ij,bj->b", v, kernel, v)

    result = permutation_test((np.arange(m), np.arange(m, m + n)), statistic, permutation_type="independent",
                              n_resamples=permutations, vectorized=True, alternative="greater",
                              random_state=np.random.default_rng(seed), batch=64)
    return float(np.ravel(result.statistic)[0]), float(np.ravel(result.pvalue)[0])


def accuracy_difference(new_right: np.ndarray, val_right: np.ndarray) -> float:
    """Fisher's exact test (two-sided) of top-1 on the new images against val's: two independent samples."""
    from scipy.stats import fisher_exact

    table = [[int(new_right.sum()), int((~new_right).sum())], [int(val_right.sum()), int((~val_right).sum())]]
    return float(fisher_exact(table).pvalue)


def tensor_outside(outside: np.ndarray) -> np.ndarray:
    """Each tensor's share of values outside its range over a whole set (images are the same size)."""
    return outside.mean(0) if len(outside) else np.zeros(outside.shape[1])


def uncovered(new: np.ndarray, reference: np.ndarray, limit: float) -> np.ndarray:
    """Tensors whose int8 range does not cover the new images: more than `limit` of the values saturate, and
    more than twice the reference's share (a percentile or entropy calibration clips a little on purpose)."""
    return (new > limit) & (new > 2 * reference)
