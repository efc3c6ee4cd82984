"""Representation quality across noise levels: Li et al.'s SNR (docs/theory.md 3.6, 3.8). numpy only.

Li, Zhang, Li, Chen, Zhu, Wang, Qu, "Understanding Representation Dynamics of Diffusion Models via
Low-Dimensional Modeling" (NeurIPS 2025, arXiv:2502.05743), [L] in theory.md. Features f (N, p)
with class labels (N,), one orthonormal basis U_k (p, r_k) per class; Definition 1 is

    SNR = mean_k  sum_{i in k} ||U_k^T f_i||^2 / sum_{i in k} ||f_i - U_k U_k^T f_i||^2

(`class_snr`, the ratio of the class-wise sums). On a network's features the bases are learned
(`feature_snr`): features scaled to unit norm, the mean of the training split removed, U_k the top
`rank` right singular vectors of class k's rows. On MoLRG data (class k: x0 = U_k a + delta Ut_k e,
zero mean, equal weights) the optimal denoiser at VE noise sigma weighs class l by the exact
posterior w = softmax_l((zeta - xi)/(2 sigma^2) ||U_l^T y||^2), zeta = 1/(1+sigma^2),
xi = delta^2/(delta^2+sigma^2), y = x0 + sigma eps (`molrg_posterior`), and Theorem 1 replaces w by
w+ on the true class and w- = (1 - w+)/(K-1) on each other:

    SNR ~ C_t/(K-1) [(1 + (sigma^2/delta^2) h(w+)) / (1 + (sigma^2/delta^2) h(w-))]^2,
    h(w) = (1 - delta^2) w + delta^2,  C_t = (1 + sigma^2)/(delta^2 + sigma^2)   (`theorem1_snr`)

with limits 1/((K-1) delta^2) as sigma -> 0 and 1/(K-1) as sigma -> infinity (w+ -> 1/K).
`curve_shape` tells a unimodal curve over noise levels from a monotone one. Bad inputs raise
ValueError with a one-line message.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from spectra.theory.checks import positive

#: residual energy, relative to the signal, below which a class lies in its subspace (rounding)
_ROUNDING = 1e-12
#: the relative fall from the maximum, on each side, that makes a curve unimodal (curve_shape)
MARGIN = 0.05


def _features(features: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(features as float64 (N, p), labels as (N,)), checked to match and be finite."""
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if f.ndim != 2 or y.shape != (f.shape[0],) or f.shape[0] == 0:
        raise ValueError(f"features must be (N, p) with N labels (got {f.shape} and {y.shape})")
    if not np.all(np.isfinite(f)):
        raise ValueError("features contain NaN or infinite values")
    return f, y


def class_snr(features: ArrayLike, labels: ArrayLike, bases: dict[int, np.ndarray]) -> float:
    """Definition 1 of [L]: the mean over the classes k of the keys of `bases` (each a (p, r_k)
    array of orthonormal columns U_k) of sum ||U_k^T f||^2 / sum ||f - U_k U_k^T f||^2 over the
    rows f of `features` (N, p) labelled k; inf for a class whose rows lie in their subspace (up
    to rounding)."""
    f, y = _features(features, labels)
    ratios = []
    for k, u in bases.items():
        rows = f[y == k]
        if len(rows) == 0:
            raise ValueError(f"class {k} has no features")
        coords = rows @ np.asarray(u, dtype=np.float64)
        signal = float(np.sum(coords**2))
        noise = float(np.sum((rows - coords @ np.asarray(u, dtype=np.float64).T) ** 2))
        ratios.append(signal / noise if noise > _ROUNDING * signal else np.inf)
    return float(np.mean(ratios))


def class_bases(features: ArrayLike, labels: ArrayLike, rank: int) -> dict[int, np.ndarray]:
    """{k: U_k (p, min(rank, n_k, p))}: the top `rank` right singular vectors of the n_k rows of
    `features` (N, p) labelled k, for each class k (sorted): the top eigenvectors of the Gram
    matrix (p, p) when n_k >= p, else of the SVD."""
    f, y = _features(features, labels)
    if isinstance(rank, bool) or int(rank) != rank or rank < 1:
        raise ValueError(f"rank must be a positive integer (got {rank!r})")
    out = {}
    for k in np.unique(y):
        rows = f[y == k]
        if len(rows) >= f.shape[1]:
            vectors = np.linalg.eigh(rows.T @ rows)[1][:, ::-1]
        else:
            vectors = np.linalg.svd(rows, full_matrices=False)[2].T
        out[k.item()] = vectors[:, : int(rank)]
    return out


def feature_snr(features: ArrayLike, labels: ArrayLike, rank: int = 5) -> float:
    """[L]'s SNR of a network's features (N, p) on the training split: rows scaled to unit norm,
    their mean removed, U_k = class_bases(.., rank) of the result, then class_snr."""
    f, y = _features(features, labels)
    norms = np.linalg.norm(f, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("a feature vector is zero (it has no direction to normalize)")
    centred = f / norms
    centred -= centred.mean(axis=0)
    return class_snr(centred, y, class_bases(centred, y, rank))


def molrg_posterior(y: ArrayLike, bases: list[np.ndarray], delta: float, sigma: float) -> np.ndarray:
    """(N, K) exact posterior class weights of MoLRG data at VE noise sigma: softmax over l of
    (zeta - xi)/(2 sigma^2) ||U_l^T y||^2 for y (N, D) = x0 + sigma eps, `bases` the K class
    subspaces U_l (D, d) (zero means, equal weights, covariances U_l U_l^T + delta^2 Ut_l Ut_l^T)."""
    sigma, delta = positive(sigma, "sigma"), positive(delta, "delta")
    y = np.asarray(y, dtype=np.float64)
    zeta, xi = 1 / (1 + sigma**2), delta**2 / (delta**2 + sigma**2)
    energy = np.stack([np.sum((y @ u) ** 2, axis=1) for u in bases], axis=1)
    logits = (zeta - xi) / (2 * sigma**2) * energy
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=1, keepdims=True)


def theorem1_snr(sigma: ArrayLike, delta: float, n_classes: int, w_plus: ArrayLike) -> np.ndarray:
    """Theorem 1 of [L] (module docstring): the SNR of the MoLRG optimal denoiser at VE noise sigma
    with weight w+ on the true class and (1 - w+)/(K-1) on each other; sigma and w+ broadcast."""
    s2 = positive(sigma, "sigma") ** 2
    delta = positive(delta, "delta")
    if isinstance(n_classes, bool) or int(n_classes) != n_classes or n_classes < 2:
        raise ValueError(f"n_classes must be an integer >= 2 (got {n_classes!r})")
    w_plus = np.asarray(w_plus, dtype=np.float64)
    if not np.all((w_plus >= 0) & (w_plus <= 1)):
        raise ValueError("w+ must lie in [0, 1]")
    w_minus = (1 - w_plus) / (n_classes - 1)
    h_plus, h_minus = (1 - delta**2) * w_plus + delta**2, (1 - delta**2) * w_minus + delta**2
    c_t = (1 + s2) / (delta**2 + s2)
    ratio = (1 + s2 / delta**2 * h_plus) / (1 + s2 / delta**2 * h_minus)
    return c_t / (n_classes - 1) * ratio**2


def curve_shape(x: ArrayLike, y: ArrayLike, margin: float = MARGIN) -> dict:
    """The shape of a curve y (n,) over increasing x (n,): {"shape", "direction", "argmax", "max"}.
    Unimodal (direction None) when the maximum is interior and y falls below (1 - margin) max
    (by margin |max|) on both sides of it; monotone, "increasing" or "decreasing", when it falls
    on one side only (the maximum at or near an end); flat (direction None) when on neither."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.shape != x.shape or len(x) < 2:
        raise ValueError(f"a curve needs x and y of one shape (n,), n >= 2 (got {x.shape}, {y.shape})")
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("a curve must be finite")
    if np.any(np.diff(x) <= 0):
        raise ValueError("a curve's x must increase")
    i = int(np.argmax(y))
    top = y[i]
    drop = margin * abs(top)
    left = i > 0 and top - y[:i].min() > drop
    right = i < len(y) - 1 and top - y[i + 1 :].min() > drop
    if left and right:
        shape, direction = "unimodal", None
    elif left or right:
        shape, direction = "monotone", "increasing" if left else "decreasing"
    else:
        shape, direction = "flat", None
    return {"shape": shape, "direction": direction, "argmax": float(x[i]), "max": float(top)}
