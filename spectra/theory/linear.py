"""Closed-form spectra of the linear-manifold model [V] (theory.md 3.2). numpy only.

C has nonzero eigenvalues lambda_1..lambda_m (tangent) and D - m zeros (normal). J is constant in
x and symmetric, with eigenvalues

    J_score:            -1/(alpha^2 lambda_i + sigma^2) (tangent),  -1/sigma^2 (normal, x (D-m))
    J_x0 (denoiser):    (1/alpha) lambda_i/(lambda_i + tau)  (tangent),  0  (normal)
    J_eps = -sigma J_score:  sigma/(alpha^2 lambda_i + sigma^2) (tangent),  1/sigma (normal)
    sigma^2 J_score:    -tau/(lambda_i + tau) (tangent),  -1 (normal)

with tau = sigma^2/alpha^2. Singular values are the absolute values.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def linear_manifold_eigenvalues(
    lambdas: ArrayLike, ambient_dim: int, alpha: float, sigma: float, target: str = "score"
) -> np.ndarray:
    """Eigenvalues (D,) of the target's Jacobian, sorted descending.

    Args:
        lambdas: the m nonzero eigenvalues of the data covariance C.
        ambient_dim: D.
        alpha, sigma: the schedule values at the time of interest.
        target: score | denoiser | eps | normalized (sigma^2 J_score).
    """
    lam = np.asarray(lambdas, dtype=np.float64)
    normal = ambient_dim - lam.size
    if normal < 0:
        raise ValueError(f"m = {lam.size} tangent eigenvalues exceed D = {ambient_dim}")
    s2, a2 = sigma**2, alpha**2
    if target == "score":
        tangent, norm = -1.0 / (a2 * lam + s2), -1.0 / s2
    elif target == "denoiser":
        tau = s2 / a2
        tangent, norm = lam / (lam + tau) / alpha, 0.0
    elif target == "eps":
        tangent, norm = sigma / (a2 * lam + s2), 1.0 / sigma
    elif target == "normalized":
        tau = s2 / a2
        tangent, norm = -tau / (lam + tau), -1.0
    else:
        raise ValueError(f"unknown target {target!r}")
    return np.sort(np.concatenate([tangent, np.full(normal, norm)]))[::-1]


def linear_manifold_singular_values(
    lambdas: ArrayLike, ambient_dim: int, alpha: float, sigma: float, target: str = "score"
) -> np.ndarray:
    """Singular values (D,) of the target's Jacobian, sorted descending (|eigenvalues|)."""
    ev = linear_manifold_eigenvalues(lambdas, ambient_dim, alpha, sigma, target)
    return np.sort(np.abs(ev))[::-1]
