"""The edge of memorization: where memorizing beats generalizing (theory.md 3.7). numpy only.

Buchanan, Pai, Ma, De Bortoli, "On the Edge of Memorization in Diffusion Models" (NeurIPS 2025,
arXiv:2508.17689), [B] in theory.md. For an isotropic Gaussian mixture (K clusters of variance
s*^2 in dimension d) and N training points, with psi_t = alpha_t^2 / sigma_t^2 the SNR, the excess
training losses against the memorizing (empirical) denoiser are

    generalizing denoiser:        d s*^2 / (psi_t s*^2 + 1)                 (per time t)
    memorizes M of the N points:  C (1 - M/N) d s*^2,    C in [1, 2]

and the lambda-weighted losses (E_t the mean over a time grid) cross at

    M*/N = 1 - E_t[lambda(t) / (psi_t s*^2 + 1)] / (C E_t[lambda(t)])       (d cancels)

so M* is linear in N. [B] uses the VP-sqrt schedule (sigma_t = t, alpha_t = sqrt(1 - t^2)) on the
grid t_l = 0.999 - 0.998 l/25, l = 0..25 (`paper_grid`, `vp_sqrt`); the functions take any alpha,
sigma arrays. Check (uniform lambda, s*^2 = 1): M*/N = 1 - mean(t^2)/C = 0.660, 0.774, 0.830 for
C = 1, 1.5, 2. Bad inputs raise ValueError with a one-line message.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

from spectra.schedules import Schedule
from spectra.theory.checks import positive


def _alpha_sigma(alpha: ArrayLike, sigma: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, s = positive(alpha, "alpha"), positive(sigma, "sigma")
    if a.shape != s.shape:
        raise ValueError(f"alpha and sigma must have the same shape (got {a.shape} and {s.shape})")
    return a, s


def psi(alpha: ArrayLike, sigma: ArrayLike) -> np.ndarray:
    """The SNR psi_t = alpha_t^2 / sigma_t^2; alpha, sigma positive, of one shape (returned)."""
    a, s = _alpha_sigma(alpha, sigma)
    return a**2 / s**2


def generalizing_excess_loss(alpha: ArrayLike, sigma: ArrayLike, variance: float = 1.0,
                             dim: float = 1) -> np.ndarray:
    """d s*^2 / (psi_t s*^2 + 1): the excess training loss, per time, of the generalizing
    isotropic-GMM denoiser over the memorizing one ([B]; theory.md 3.7). alpha, sigma: the
    schedule at the grid times, one shape, which the result has; variance s*^2 and dim d > 0."""
    p = psi(alpha, sigma)
    v, d = float(positive(variance, "variance")), float(positive(dim, "dim"))
    return d * v / (p * v + 1.0)


def memorizing_excess_loss(fraction: ArrayLike, variance: float = 1.0, dim: float = 1,
                           C: ArrayLike = 1.0) -> np.ndarray:
    """C (1 - M/N) d s*^2: the excess training loss of a model that memorizes a fraction M/N of
    the N training points ([B]; theory.md 3.7; [B] bound C in [1, 2]). fraction in [0, 1] and C > 0
    broadcast together; the result has their broadcast shape."""
    f = np.asarray(fraction, dtype=np.float64)
    if f.size == 0 or not np.all((f >= 0) & (f <= 1)):
        raise ValueError("fraction M/N must lie in [0, 1]")
    c = positive(C, "C")
    v, d = float(positive(variance, "variance")), float(positive(dim, "dim"))
    return c * (1.0 - f) * d * v


def critical_fraction(alpha: ArrayLike, sigma: ArrayLike, variance: float = 1.0,
                      C: ArrayLike = 1.0, weights: ArrayLike | None = None) -> np.ndarray:
    """M*/N = 1 - E_t[lambda(t) / (psi_t s*^2 + 1)] / (C E_t[lambda(t)]), where the weighted
    generalizing and memorizing training losses cross ([B]; theory.md 3.7; d cancels).

    alpha, sigma: (T,) the schedule on the time grid; E_t is the mean over it. weights: (T,)
    lambda(t) >= 0 with positive sum, None for uniform. C: scalar or array (> 0); the result has
    C's shape (0-d for a scalar C), one fraction per C.
    """
    a, s = _alpha_sigma(alpha, sigma)
    if a.ndim != 1:
        raise ValueError(f"alpha and sigma must be 1-D time grids (got shape {a.shape})")
    v = float(positive(variance, "variance"))
    c = positive(C, "C")
    if weights is None:
        lam = np.ones_like(a)
    else:
        lam = np.asarray(weights, dtype=np.float64)
        if lam.shape != a.shape:
            raise ValueError(f"weights must have the grid's shape {a.shape} (got {lam.shape})")
        if not np.all(np.isfinite(lam)) or np.any(lam < 0) or lam.sum() <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
    ratio = np.mean(lam / (a**2 / s**2 * v + 1.0)) / np.mean(lam)
    return 1.0 - ratio / c


def critical_count(n_train: int, alpha: ArrayLike, sigma: ArrayLike, variance: float = 1.0,
                   C: ArrayLike = 1.0, weights: ArrayLike | None = None) -> float | np.ndarray:
    """M* = N (M*/N), not rounded: the number of memorized points at the crossover (see
    `critical_fraction`). A float for a scalar C, else an array of C's shape."""
    if isinstance(n_train, bool) or int(n_train) != n_train or n_train < 1:
        raise ValueError(f"n_train must be a positive integer (got {n_train!r})")
    out = n_train * critical_fraction(alpha, sigma, variance=variance, C=C, weights=weights)
    return float(out) if out.ndim == 0 else out


def paper_grid(n: int = 26, t_max: float = 0.999, t_min: float = 0.001) -> np.ndarray:
    """(n,) times t_l = t_max - (t_max - t_min) l/(n - 1), l = 0..n-1, descending; [B]'s grid is
    the default, t_l = 0.999 - 0.998 l/25."""
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"n must be an integer >= 2 (got {n!r})")
    if not (np.isfinite(t_min) and np.isfinite(t_max) and t_min < t_max):
        raise ValueError(f"need finite t_min < t_max (got {t_min!r}, {t_max!r})")
    return t_max - (t_max - t_min) * np.arange(int(n)) / (int(n) - 1)


def vp_sqrt(t: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, sigma) = (sqrt(1 - t^2), t) of the VP-sqrt schedule (theory.md 1), t in (0, 1);
    both of t's shape."""
    sched = Schedule("vp-sqrt")
    arr = np.asarray(t, dtype=np.float64)
    sched.validate(arr)  # SpectraError, a ValueError, for t outside (0, 1)
    return sched.alpha(arr), sched.sigma(arr)
