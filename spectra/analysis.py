"""Gaps, dimension estimates and phases measured from spectra (theory.md 3.2-3.5). numpy only.

Measured values live on the same normalized scale as the theory: mu, the eigenvalues of
sigma^2 J_score (theory.md 2), sorted descending, in [-1, 0] for the exact score of Gaussian
(linear-manifold) data; for mixtures sigma^2 J_score = (alpha^2 / sigma^2) Cov[x0 | x] - I can
have positive eigenvalues, which the mapping below, made for that sign, does not represent. From
the singular values s of a run's target (the eigenvalues' magnitudes for a symmetric Jacobian):

    score:     mu = -sigma^2 s        (Gaussian data: sigma^2 J_score has eigenvalues in [-1, 0])
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


def normalized_spectrum(
    values: ArrayLike, target: str, alpha: ArrayLike, sigma: ArrayLike, dim: int | None = None
) -> np.ndarray:
    """mu (..., T, D) sorted descending from singular values (..., T, K) of `target` at schedule
    values alpha, sigma (T,).

    Positions are absolute: a run keeping only the K < D largest singular values fills the end of
    the spectrum they come from (the bottom of mu for score and eps, whose largest values are the
    normal directions near -1; the top for the denoiser) and leaves NaN elsewhere. NaN rows
    (unfinished Jacobians) stay NaN."""
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
    mu = -np.sort(-mu, axis=-1)  # descending; NaN sorts last
    k = mu.shape[-1]
    dim = k if dim is None else dim
    if dim < k:
        raise ValueError(f"{k} values cannot come from a {dim}-dimensional Jacobian")
    if dim == k:
        return mu
    missing = np.full((*mu.shape[:-1], dim - k), np.nan)
    parts = [mu, missing] if target == "denoiser" else [missing, mu]
    return np.concatenate(parts, axis=-1)


def gap_widths(mu: ArrayLike) -> np.ndarray:
    """Spacings (..., K - 1) of a descending spectrum: entry p - 1 is the gap at position p."""
    mu = np.asarray(mu, dtype=np.float64)
    return mu[..., :-1] - mu[..., 1:]


def dimension(mu: ArrayLike, delta: float) -> np.ndarray:
    """Position (...,) of the largest gap of each descending spectrum (..., K), or -1 where no gap
    exceeds delta (no visible gap: the estimate is undefined). NaN positions never form gaps."""
    mu = np.asarray(mu, dtype=np.float64)
    if mu.shape[-1] < 2:
        return np.full(mu.shape[:-1], -1)
    widths = np.nan_to_num(gap_widths(mu), nan=-np.inf)
    pos = np.argmax(widths, axis=-1) + 1
    return np.where(np.max(widths, axis=-1) > delta, pos, -1)


def spectrum_distance(measured: ArrayLike, predicted: ArrayLike) -> np.ndarray:
    """Wasserstein-1 distance (...,) between two spectra of K points each, both sorted
    descending and aligned by position (the mean absolute difference of the sorted values), over
    the positions where `measured` is known; NaN where it knows none."""
    a = np.asarray(measured, dtype=np.float64)
    b = np.broadcast_to(np.asarray(predicted, dtype=np.float64), a.shape)
    known = ~np.isnan(a)
    count = known.sum(-1)
    total = np.where(known, np.abs(a - b), 0.0).sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def median_spectrum(mu: ArrayLike) -> np.ndarray:
    """Position-wise median over anchors: (N, T, K) -> (T, K), ignoring NaN (unfinished) anchors."""
    mu = np.asarray(mu, dtype=np.float64)
    out = np.full(mu.shape[1:], np.nan)
    has = ~np.all(np.isnan(mu), axis=0)
    out[has] = np.nanmedian(mu[:, has], axis=0)
    return out


def is_trivial(row: np.ndarray, delta: float) -> bool | None:
    """Every value within delta of -1 (theory.md 3.4); None when the top of the spectrum (the
    value that decides it) was not measured."""
    if np.isnan(row[0]):
        return None
    return bool(np.nanmax(np.abs(row + 1)) < delta)


def manifold_gap_position(row: np.ndarray, delta: float) -> int | None:
    """Position of the manifold gap in one descending spectrum: the widest visible gap whose known
    values below it are the normal directions. For an exact score these are the atom at -1
    (theory.md 3.2): if any value below the gap lies within delta of -1, all must. A trained
    network's normal directions form a bulk instead ([V]): when no value below the gap is within
    delta of -1, they count as normal if all lie below -1/2 (closer to -1 than to the tangent
    value 0) and spread over less than the gap's width. A trained bulk that reaches within delta
    of -1 is therefore read as exact normals with tangent values among them, and gives no manifold
    gap: the rule errs towards None rather than towards a wrong dimension. None if no gap
    qualifies."""
    widths = gap_widths(row)
    best, best_width = None, delta
    for p in np.nonzero(np.nan_to_num(widths, nan=-np.inf) > delta)[0] + 1:
        below = row[p:][~np.isnan(row[p:])]
        near = np.abs(below + 1) < delta
        if near.any():
            normal = bool(near.all())
        else:
            normal = below.max() < -0.5 and np.ptp(below) < widths[p - 1]
        if normal and widths[p - 1] > best_width:
            best, best_width = int(p), widths[p - 1]
    return best


def phase_labels(mu: ArrayLike, delta: float, manifold_index: int | None) -> list[str | None]:
    """The phase of each descending spectrum in mu (T, K), as theory.md 3.4 defines them:
    `trivial` when every value lies within delta of -1, `consolidation` when the manifold gap (the
    gap at position manifold_index) is visible, `manifold coverage` otherwise; None where the
    spectrum was not measured (or its top is missing and no manifold gap shows)."""
    labels: list[str | None] = []
    for row in np.asarray(mu, dtype=np.float64):
        if np.all(np.isnan(row)):
            labels.append(None)
        elif manifold_index and row[manifold_index - 1] - row[manifold_index] > delta:
            labels.append("consolidation")
        else:
            trivial = is_trivial(row, delta)
            labels.append(None if trivial is None else "trivial" if trivial else "manifold coverage")
    return labels


def measured_phases(tau: ArrayLike, mu: ArrayLike, delta: float) -> dict:
    """Phase boundaries measured on a tau grid from descending spectra mu (T, K).

    * trivial_end_tau: the smallest grid tau of the run of large-tau times (from the largest
      down) at which every value lies within delta of -1; None if the largest tau is not trivial
      (or its top values were not measured).
    * manifold_gap_index: the position of the manifold gap at the smallest tau (the widest
      visible gap with the normal directions below it, as `manifold_gap_position` reads them;
      None if there is none);
      manifold_gap_open_tau: the largest grid tau of the run of small-tau times (from the
      smallest up) at which the gap at that position is visible.
    * intermediate_gaps: each position p above the manifold gap where a gap is visible at some
      time: {index: p, tau_open: largest such tau, tau_close: smallest, tau_max: the grid tau
      where it is widest, width_max}. A gap still visible at an end of the grid reports that end.
    Times with no finite spectrum are skipped.
    """
    tau = np.asarray(tau, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    keep = ~np.all(np.isnan(mu), axis=1)
    tau, mu = tau[keep], mu[keep]
    order = np.argsort(tau)
    tau, mu = tau[order], mu[order]
    result = {"trivial_end_tau": None, "manifold_gap_open_tau": None, "manifold_gap_index": None,
              "intermediate_gaps": []}
    if tau.size == 0 or mu.shape[1] < 2:
        return result
    widths = np.nan_to_num(gap_widths(mu), nan=-np.inf)
    visible = widths > delta

    for i in range(tau.size - 1, -1, -1):
        if not is_trivial(mu[i], delta):
            break
        result["trivial_end_tau"] = float(tau[i])

    p_star = manifold_gap_position(mu[0], delta)
    if p_star is not None:
        result["manifold_gap_index"] = p_star
        for i in range(tau.size):
            if not visible[i, p_star - 1]:
                break
            result["manifold_gap_open_tau"] = float(tau[i])

    for p in range(1, p_star if p_star is not None else mu.shape[1]):
        seen = visible[:, p - 1]
        if not seen.any():
            continue
        where = np.nonzero(seen)[0]
        widest = int(np.argmax(widths[:, p - 1]))
        result["intermediate_gaps"].append({
            "index": p, "tau_open": float(tau[where[-1]]), "tau_max": float(tau[widest]),
            "tau_close": float(tau[where[0]]), "width_max": float(widths[widest, p - 1])})
    return result
