"""Gaps, dimension estimates and phases measured from spectra (theory.md 3.2-3.5). numpy only.

Measured values live on the same normalized scale as the theory: mu, the eigenvalues of
sigma^2 J_score (theory.md 2), sorted descending, in [-1, 0] for an exact score. From the
singular values s of a run's target (the eigenvalues' magnitudes for a symmetric Jacobian):

    score:     mu = -sigma^2 s        (sigma^2 J_score has eigenvalues in [-1, 0])
    eps:       mu = -sigma s          (J_eps = -sigma J_score)
    denoiser:  mu = alpha s - 1       (sigma^2 J_score = alpha J_x0 - I)

A gap at position p (1 <= p < K) is the spacing mu_{p-1} - mu_p between the p values above it and
the rest; it is visible at resolution Delta when it exceeds Delta. The dimension estimate is the
position of the largest gap when that gap is visible (Stanczuk et al.; [V]): in the consolidation
phase it is the manifold gap and the estimate is m, the number of singular values of J_score
below it (of J_x0 above it).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

NORMALIZED_TARGETS = ("score", "eps", "denoiser")


def normalized_spectrum(values: ArrayLike, target: str, alpha: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """mu (..., T, K) sorted descending (NaN last) from singular values (..., T, K) of `target`
    at schedule values alpha, sigma (T,)."""
    s = np.asarray(values, dtype=np.float64)
    alpha = np.asarray(alpha, dtype=np.float64)[:, None]
    sigma = np.asarray(sigma, dtype=np.float64)[:, None]
    if target == "score":
        mu = -(sigma**2) * s
    elif target == "eps":
        mu = -sigma * s
    elif target == "denoiser":
        mu = alpha * s - 1
    else:
        raise ValueError(f"unknown target {target!r} (expected one of {', '.join(NORMALIZED_TARGETS)})")
    return -np.sort(-mu, axis=-1)  # descending; NaN sorts last


def gap_widths(mu: ArrayLike) -> np.ndarray:
    """Spacings (..., K - 1) of a descending spectrum: entry p - 1 is the gap at position p."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu[..., :-1] - mu[..., 1:]


def dimension(mu: ArrayLike, delta: float) -> np.ndarray:
    """Position (...,) of the largest gap of each descending spectrum (..., K), or -1 where no gap
    exceeds delta (no visible gap: the estimate is undefined)."""
    widths = np.nan_to_num(gap_widths(mu), nan=-np.inf)
    pos = np.argmax(widths, axis=-1) + 1
    return np.where(np.max(widths, axis=-1) > delta, pos, -1)


def spectrum_distance(measured: ArrayLike, predicted: ArrayLike) -> np.ndarray:
    """Wasserstein-1 distance (...,) between two spectra of K points each (the mean absolute
    difference of the sorted values), over the positions where `measured` is not NaN."""
    a = -np.sort(-np.asarray(measured, dtype=np.float64), axis=-1)
    b = -np.sort(-np.asarray(predicted, dtype=np.float64), axis=-1)
    return np.nanmean(np.abs(a - b), axis=-1)


def median_spectrum(mu: ArrayLike) -> np.ndarray:
    """Position-wise median over anchors: (N, T, K) -> (T, K), ignoring NaN (unfinished) anchors."""
    mu = np.asarray(mu, dtype=np.float64)
    out = np.full(mu.shape[1:], np.nan)
    has = ~np.all(np.isnan(mu), axis=0)
    out[has] = np.nanmedian(mu[:, has], axis=0)
    return out


def phase_labels(mu: ArrayLike, delta: float, manifold_index: int | None) -> list[str]:
    """The phase of each descending spectrum in mu (T, K), as theory.md 3.4 defines them:
    `trivial` when every value lies within delta of -1, `consolidation` when the manifold gap (the
    gap at position manifold_index) is visible, `manifold coverage` otherwise."""
    mu = np.asarray(mu, dtype=np.float64)
    labels = []
    for row in mu:
        if np.all(np.isnan(row)):
            labels.append(None)
        elif np.nanmax(row) < -1 + delta:
            labels.append("trivial")
        elif manifold_index and row[manifold_index - 1] - row[manifold_index] > delta:
            labels.append("consolidation")
        else:
            labels.append("manifold coverage")
    return labels


def measured_phases(tau: ArrayLike, mu: ArrayLike, delta: float) -> dict:
    """Phase boundaries measured on a tau grid from descending spectra mu (T, K).

    * trivial_end_tau: the smallest grid tau of the run of large-tau times (from the largest
      down) at which every value lies within delta of -1; None if the largest tau is not trivial.
    * manifold_gap_index: the dimension estimate at the smallest tau (None if no visible gap);
      manifold_gap_open_tau: the largest grid tau of the run of small-tau times (from the
      smallest up) at which the gap at that position is visible.
    * intermediate_gaps: each position p below the manifold gap where a gap is visible at some
      time: {index: p, tau_open: largest such tau, tau_close: smallest, tau_max: the grid tau
      where it is widest, width_max}.
    Times with no finite spectrum are skipped.
    """
    tau = np.asarray(tau, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    keep = ~np.all(np.isnan(mu), axis=1)
    tau, mu = tau[keep], mu[keep]
    order = np.argsort(tau)
    tau, mu = tau[order], mu[order]
    empty = {"trivial_end_tau": None, "manifold_gap_open_tau": None, "manifold_gap_index": None,
             "intermediate_gaps": []}
    if tau.size == 0:
        return empty
    widths = np.nan_to_num(gap_widths(mu), nan=-np.inf)
    visible = widths > delta

    trivial = np.nanmax(mu, axis=1) < -1 + delta
    trivial_end = None
    for i in range(tau.size - 1, -1, -1):
        if not trivial[i]:
            break
        trivial_end = float(tau[i])

    p_star = int(dimension(mu[0], delta))
    manifold_open = None
    if p_star > 0:
        for i in range(tau.size):
            if not visible[i, p_star - 1]:
                break
            manifold_open = float(tau[i])

    gaps = []
    upper = p_star - 1 if p_star > 0 else 0
    for p in range(1, upper + 1):
        seen = visible[:, p - 1]
        if not seen.any():
            continue
        where = np.nonzero(seen)[0]
        widest = int(np.argmax(widths[:, p - 1]))
        gaps.append({"index": p, "tau_open": float(tau[where[-1]]), "tau_max": float(tau[widest]),
                     "tau_close": float(tau[where[0]]), "width_max": float(widths[widest, p - 1])})
    return {"trivial_end_tau": trivial_end, "manifold_gap_open_tau": manifold_open,
            "manifold_gap_index": p_star if p_star > 0 else None, "intermediate_gaps": gaps}
