"""Spectral gaps and phases of the linear-manifold model, in tau (theory.md 3.4). numpy only.

In normalized units (sigma^2 J_score, eigenvalues mu = -tau/(lambda + tau)), for the upper edge a
of a lower-variance bulk and the lower edge b > a of the next higher-variance bulk:

    intermediate gap width  W(tau) = tau (b - a) / ((a + tau)(b + tau)),
    maximal at tau_max = sqrt(a b) with W_max = (sqrt b - sqrt a)/(sqrt b + sqrt a);
    visible at resolution Delta for tau_off < tau < tau_on, the roots of
    Delta tau^2 + (Delta (a + b) - (b - a)) tau + Delta a b = 0   (tau_on tau_off = tau_max^2);
    manifold gap width  gamma_min / (gamma_min + tau), visible once tau < gamma_min (1 - Delta)/Delta;
    trivial phase (all mu within Delta of -1) for tau >= lambda_max (1 - Delta)/Delta.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike


def intermediate_gap_width(tau: ArrayLike, a: float, b: float) -> np.ndarray:
    """W(tau) = tau (b - a) / ((a + tau)(b + tau)), the gap between the images of edges a < b."""
    tau = np.asarray(tau, dtype=np.float64)
    return tau * (b - a) / ((a + tau) * (b + tau))


def gap_tau_max(a: float, b: float) -> float:
    """tau at which the intermediate gap is widest: sqrt(a b)."""
    return float(np.sqrt(a * b))


def gap_width_max(a: float, b: float) -> float:
    """The widest intermediate gap: (sqrt b - sqrt a)/(sqrt b + sqrt a)."""
    return float((np.sqrt(b) - np.sqrt(a)) / (np.sqrt(b) + np.sqrt(a)))


def gap_visibility(a: float, b: float, delta: float) -> tuple[float, float] | None:
    """(tau_off, tau_on): the gap is wider than delta for tau_off < tau < tau_on, the roots of
    delta tau^2 + (delta (a + b) - (b - a)) tau + delta a b = 0; None if it never is."""
    if delta >= gap_width_max(a, b):
        return None
    roots = np.sort(np.roots([delta, delta * (a + b) - (b - a), delta * a * b]).real)
    return float(roots[0]), float(roots[1])


def manifold_gap_width(tau: ArrayLike, gamma_min: float) -> np.ndarray:
    """gamma_min / (gamma_min + tau): the gap between the tangent values and the atom at -1."""
    return gamma_min / (gamma_min + np.asarray(tau, dtype=np.float64))


def manifold_gap_open_tau(gamma_min: float, delta: float) -> float:
    """The manifold gap is wider than delta for tau < gamma_min (1 - delta)/delta."""
    return gamma_min * (1 - delta) / delta


def trivial_end_tau(lambda_max: float, delta: float) -> float:
    """All normalized eigenvalues lie within delta of -1 for tau >= lambda_max (1 - delta)/delta."""
    return lambda_max * (1 - delta) / delta
