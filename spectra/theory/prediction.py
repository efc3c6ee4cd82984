"""Predictions of the linear (Gaussian) theory on a tau grid (theory.md 3.2-3.4). numpy/scipy only.

A prediction is fixed by the D eigenvalues lambda_1 >= ... >= lambda_D >= 0 of the data
covariance C (m of them nonzero), and, for a random Gaussian embedding, by the variance profile
and aspect ratio c = m/D of the asymptotic law. Everything is a function of the VE-equivalent
variance tau = sigma^2/alpha^2, so one prediction fits a run under any schedule:

* normalized eigenvalues (eigenvalues of sigma^2 J_score): mu_i(tau) = -tau/(lambda_i + tau),
  which is -1 on the D - m normal directions (theory.md 3.2);
* the continuous density of mu (Silverstein law mapped by mu = -tau/(lambda + tau)) and the atom
  of mass (D - m)/D at -1 (theory.md 3.3);
* the phases at resolution Delta (theory.md 3.4): the trivial phase ends at
  tau = lambda_max (1 - Delta)/Delta; the manifold gap (between the smallest tangent value and the
  atom at -1, width gamma_min/(gamma_min + tau)) opens at tau = gamma_min (1 - Delta)/Delta; the gap
  between consecutive eigenvalues b = lambda_i > a = lambda_{i+1} (0-based, descending) is
  mu_i - mu_{i+1} = W(tau) = tau (b - a)/((a + tau)(b + tau)), visible for tau_off < tau < tau_on
  (gaps.gap_visibility), widest at tau_max = sqrt(a b). Its `index` is i + 1: the number of
  normalized eigenvalues above it (sorted descending), equivalently the number of denoiser
  singular values above it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike

from spectra.theory.gaps import gap_tau_max, gap_visibility, gap_width_max
from spectra.theory.linear import linear_manifold_singular_values
from spectra.theory.manifold import LinearManifold
from spectra.theory.random_matrix import (
    StieltjesSolution,
    normalized_jacobian_density,
    solve_stieltjes,
)

#: eigenvalues below this fraction of the largest count as zero (normal directions)
RANK_RTOL = 1e-10


@dataclass
class LinearTheory:
    """The linear theory of data with covariance eigenvalues `covariance_eigenvalues` (D,).

    profile: (variances, weights) of Sigma_z for a random Gaussian embedding, which has the
    asymptotic Silverstein density; None when the spectrum is taken as exact and discrete
    (orthonormal embedding, or a data covariance).
    """

    covariance_eigenvalues: np.ndarray
    profile: tuple[np.ndarray, np.ndarray] | None = None
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        lam = np.sort(np.asarray(self.covariance_eigenvalues, dtype=np.float64).ravel())[::-1]
        if lam.size == 0 or not np.all(np.isfinite(lam)):
            raise ValueError("covariance eigenvalues must be finite and non-empty")
        if lam[0] <= 0:
            raise ValueError("the data covariance is zero: no theory to predict")
        lam = np.where(lam > RANK_RTOL * lam[0], lam, 0.0)
        self.covariance_eigenvalues = lam

    @classmethod
    def from_manifold(cls, manifold: LinearManifold) -> LinearTheory:
        """Exact finite-D theory of a linear manifold (its seed's embedding), with the
        asymptotic density of the gaussian embedding."""
        profile = manifold.variance_profile() if manifold.embedding == "gaussian" else None
        desc = {"kind": "linear-manifold", "ambient_dim": manifold.ambient_dim, "m": manifold.m,
                "embedding": manifold.embedding, "seed": manifold.seed}
        return cls(manifold.covariance_eigenvalues(), profile, desc)

    @classmethod
    def from_samples(cls, samples: ArrayLike) -> LinearTheory:
        """Gaussian-equivalent theory: the eigenvalues of the sample covariance of (N, D) data
        (centered, divided by N - 1); the right reference at high noise for any dataset."""
        x = np.asarray(samples, dtype=np.float64)
        x = x.reshape(len(x), -1)
        if len(x) < 2:
            raise ValueError("need at least two data samples for a covariance")
        xc = x - x.mean(0)
        sv = np.linalg.svd(xc, compute_uv=False)
        lam = np.zeros(x.shape[1])
        lam[: sv.size] = sv**2 / (len(x) - 1)
        return cls(lam, None, {"kind": "gaussian-equivalent", "n_samples": len(x)})

    # --- sizes -----------------------------------------------------------------------------
    @property
    def ambient_dim(self) -> int:
        return self.covariance_eigenvalues.size

    @property
    def m(self) -> int:
        """Number of nonzero covariance eigenvalues (tangent directions)."""
        return int(np.count_nonzero(self.covariance_eigenvalues))

    @property
    def tangent_eigenvalues(self) -> np.ndarray:
        return self.covariance_eigenvalues[: self.m]

    # --- spectra ---------------------------------------------------------------------------
    def eigenvalues(self, tau: ArrayLike) -> np.ndarray:
        """Normalized eigenvalues mu = -tau/(lambda + tau), (T, D), each row sorted descending."""
        tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        lam = self.covariance_eigenvalues
        return -tau[:, None] / (lam[None, :] + tau[:, None])

    def singular_values(self, alpha: ArrayLike, sigma: ArrayLike, target: str) -> np.ndarray:
        """Singular values (T, D) of the target's Jacobian (score, denoiser, eps) at schedule
        values alpha, sigma (T,), sorted descending (theory.md 3.2)."""
        alpha, sigma = np.atleast_1d(alpha), np.atleast_1d(sigma)
        return np.stack([
            linear_manifold_singular_values(self.tangent_eigenvalues, self.ambient_dim, a, s, target)
            for a, s in zip(alpha, sigma, strict=True)
        ])

    # --- asymptotic density ----------------------------------------------------------------
    @property
    def has_density(self) -> bool:
        return self.profile is not None

    @cached_property
    def covariance_density(self) -> StieltjesSolution:
        """The Silverstein density of the m nonzero eigenvalues on a grid fine in both linear and
        log scale (solved once; every tau maps onto it)."""
        if self.profile is None:
            raise ValueError("this theory has no asymptotic density (no random embedding)")
        values, weights = self.profile
        c = self.m / self.ambient_dim
        hi = values.max() * (1 + np.sqrt(c)) ** 2 * 1.05
        lo = values.min() * max(1 - np.sqrt(c), 1e-3) ** 2 * 0.5
        grid = np.unique(np.concatenate([np.linspace(0, hi, 6000)[1:], np.geomspace(lo, hi, 6000)]))
        return solve_stieltjes(grid, values, weights, c)

    def density(self, tau: ArrayLike, grid: ArrayLike) -> np.ndarray:
        """Continuous density (T, G) of the normalized eigenvalues on `grid` (values in (-1, 0)),
        normalized over all D eigenvalues; zero when the theory has no asymptotic density."""
        tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        grid = np.asarray(grid, dtype=np.float64)
        if self.profile is None:
            return np.zeros((tau.size, grid.size))
        sol = self.covariance_density
        c = self.m / self.ambient_dim
        return np.stack([normalized_jacobian_density(grid, t, sol.grid, sol.density, c) for t in tau])

    def atom(self, tau: ArrayLike) -> np.ndarray:
        """Mass (T,) of the atom at -1: the fraction (D - m)/D of normal directions."""
        tau = np.atleast_1d(np.asarray(tau, dtype=np.float64))
        return np.full(tau.shape, (self.ambient_dim - self.m) / self.ambient_dim)

    # --- phases ----------------------------------------------------------------------------
    def phase_labels(self, tau: ArrayLike, delta: float) -> list[str]:
        """The phase at each tau (theory.md 3.4): `trivial` for tau >= trivial_end_tau,
        `consolidation` while the manifold gap is visible (tau < manifold_gap_open_tau), and
        `manifold coverage` in between. The two boundaries never cross: a visible manifold gap
        puts a tangent value more than delta above -1."""
        ph = self.phases(delta)
        opened = ph["manifold_gap_open_tau"]
        return [
            "trivial" if t >= ph["trivial_end_tau"]
            else "consolidation" if opened is not None and t < opened
            else "manifold coverage"
            for t in np.atleast_1d(np.asarray(tau, dtype=np.float64))
        ]

    def phases(self, delta: float) -> dict:
        """Predicted phase boundaries at resolution delta (same keys as metrics.json's phases):
        trivial_end_tau, manifold_gap_open_tau (None when m = D: no normal directions) and the
        intermediate gaps, each {index, tau_open, tau_max, tau_close, width_max}, by index."""
        if not 0 < delta < 1:
            raise ValueError(f"resolution must be in (0, 1), got {delta}")
        lam = self.tangent_eigenvalues
        gaps = []
        for i in range(lam.size - 1):
            b, a = lam[i], lam[i + 1]
            window = gap_visibility(a, b, delta) if b > a else None
            if window is not None:
                gaps.append({"index": i + 1, "tau_open": window[1], "tau_max": gap_tau_max(a, b),
                             "tau_close": window[0], "width_max": gap_width_max(a, b)})
        manifold_open = lam[-1] * (1 - delta) / delta if self.m < self.ambient_dim else None
        return {
            "trivial_end_tau": float(lam[0] * (1 - delta) / delta),
            "manifold_gap_open_tau": None if manifold_open is None else float(manifold_open),
            "manifold_gap_index": self.m if manifold_open is not None else None,
            "intermediate_gaps": gaps,
        }
