"""Random-matrix spectra of random linear manifolds (theory.md 3.3). numpy/scipy only.

Data x0 = F z, F (D x m) with iid N(0, 1/D) entries, z ~ N(0, Sigma_z); C = F Sigma_z F^T.
For D, m -> infinity with c = m/D fixed, the m nonzero eigenvalues of C follow:

* isotropic Sigma_z = s^2 I: Marchenko–Pastur, edges gamma_pm = s^2 (1 pm sqrt c)^2, density
  rho(x) = sqrt((gamma_+ - x)(x - gamma_-)) / (2 pi s^2 c x) on [gamma_-, gamma_+];
* any discrete variance profile H = sum_k w_k delta_{v_k}: the Stieltjes transform
  g(z) = int dmu(lambda)/(lambda - z) solves g = sum_k w_k / (v_k (1 - c - c z g) - z), and
  rho(lambda) = Im g(lambda + i0) / pi.

The normalized score-Jacobian eigenvalues mu = -tau/(lambda + tau) then have the density
(m/D) rho(lambda(mu)) |d lambda/d mu| with lambda(mu) = -tau (1 + mu)/mu, d lambda/d mu = tau/mu^2,
plus an atom of mass (D - m)/D at -1.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike


def mp_edges(c: float, scale: float = 1.0) -> tuple[float, float]:
    """Marchenko–Pastur support edges (gamma_-, gamma_+) = scale (1 -+ sqrt c)^2, c = m/D <= 1."""
    if not 0 < c <= 1:
        raise ValueError(f"aspect ratio c = m/D must be in (0, 1], got {c}")
    r = np.sqrt(c)
    return scale * (1 - r) ** 2, scale * (1 + r) ** 2


@dataclass(frozen=True)
class MarchenkoPastur:
    """The Marchenko–Pastur law of the m nonzero eigenvalues of F diag(scale) F^T, c = m/D <= 1,
    in the style of scipy.stats distributions (pdf, cdf, ppf, rvs)."""

    c: float
    scale: float = 1.0

    @property
    def support(self) -> tuple[float, float]:
        return mp_edges(self.c, self.scale)

    def pdf(self, x: ArrayLike) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        lo, hi = self.support
        inside = (x > lo) & (x < hi)
        xs = np.where(inside, x, 1.0)
        dens = np.sqrt(np.clip((hi - xs) * (xs - lo), 0, None)) / (2 * np.pi * self.scale * self.c * xs)
        return np.where(inside, dens, 0.0)

    @cached_property
    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, cdf) on the support (computed once per law), integrating in theta with
        x = lo + (hi - lo)(1 - cos theta)/2: the integrand rho(x) dx/dtheta is smooth at both
        edges, so the trapezoid rule is accurate to ~1e-9 here."""
        lo, hi = self.support
        theta = np.linspace(0, np.pi, 20001)
        x = lo + (hi - lo) * (1 - np.cos(theta)) / 2
        integrand = self.pdf(x) * (hi - lo) / 2 * np.sin(theta)
        cdf = np.concatenate([[0.0], np.cumsum((integrand[1:] + integrand[:-1]) / 2 * np.diff(theta))])
        return x, cdf / cdf[-1]

    def cdf(self, x: ArrayLike) -> np.ndarray:
        grid, table = self._table
        return np.interp(np.asarray(x, dtype=np.float64), grid, table, left=0.0, right=1.0)

    def ppf(self, q: ArrayLike) -> np.ndarray:
        """Quantiles, inverting the cdf table."""
        grid, table = self._table
        return np.interp(np.asarray(q, dtype=np.float64), table, grid)

    def rvs(self, size: int, rng: np.random.Generator) -> np.ndarray:
        """iid draws from the law (inverse-cdf sampling)."""
        return self.ppf(rng.uniform(size=size))


@dataclass
class StieltjesSolution:
    """Solution of the Silverstein equation on a grid: g (G,) complex, density (G,) = Im g / pi,
    residual = max |g - sum_k w_k/(v_k (1 - c - c z g) - z)| over the grid."""

    grid: np.ndarray
    g: np.ndarray
    density: np.ndarray
    residual: float


def solve_stieltjes(
    grid: ArrayLike,
    variances: ArrayLike,
    weights: ArrayLike,
    c: float,
    eta: float = 1e-7,
    levels: int = 12,
    max_iter: int = 100,
    tol: float = 1e-13,
) -> StieltjesSolution:
    """Solve g = sum_k w_k / (v_k (1 - c - c z g) - z) at z = lambda + i eta for every lambda in
    grid, by Newton's method with continuation in eta: start at eta = 1 (where the root in the
    upper half plane is unique and -1/z is close), then lower eta geometrically to `eta`,
    warm-starting each level from the last. Vectorized over the grid."""
    lam = np.asarray(grid, dtype=np.float64)
    v = np.asarray(variances, dtype=np.float64)[:, None]
    w = np.asarray(weights, dtype=np.float64)
    w = (w / w.sum())[:, None]
    g = None
    for level_eta in np.geomspace(1.0, eta, levels):
        z = lam + 1j * level_eta
        if g is None:
            g = -1.0 / z
        for _ in range(max_iter):
            den = v * (1 - c - c * z * g) - z
            f = g - (w / den).sum(0)
            df = 1 - (w * v * c * z / den**2).sum(0)
            step = f / df
            g = g - step
            g = np.where(g.imag < 0, g.conj(), g)  # stay on the physical (upper) branch
            if np.max(np.abs(step) / (1 + np.abs(g))) < tol:
                break
    den = v * (1 - c - c * z * g) - z
    residual = float(np.max(np.abs(g - (w / den).sum(0))))
    return StieltjesSolution(lam, g, g.imag / np.pi, residual)


def bulks(grid: np.ndarray, density: np.ndarray, threshold: float | None = None) -> list[tuple]:
    """Connected intervals (lo, hi) of the grid where the density exceeds `threshold`
    (default 1e-3 of its maximum, above the eta-broadened tails eta/d^2 just outside an edge):
    the detached bulks of the spectrum."""
    threshold = 1e-3 * density.max() if threshold is None else threshold
    above = density > threshold
    out, start = [], None
    for i, flag in enumerate(above):
        if flag and start is None:
            start = i
        if start is not None and (not flag or i == len(above) - 1):
            end = i if flag else i - 1
            out.append((float(grid[start]), float(grid[end])))
            start = None
    return out


def normalized_jacobian_density(
    mu: ArrayLike, tau: float, lam_grid: np.ndarray, lam_density: np.ndarray, c: float
) -> np.ndarray:
    """Continuous part of the density of mu = -tau/(lambda + tau) (normalized score-Jacobian
    eigenvalues, theory.md 3.3) over all D eigenvalues: (m/D) rho(lambda(mu)) tau/mu^2 for mu in
    (-1, 0). The atom of mass 1 - c at -1 is not included."""
    mu = np.asarray(mu, dtype=np.float64)
    inside = (mu > -1) & (mu < 0)
    ms = np.where(inside, mu, -0.5)
    lam = -tau * (1 + ms) / ms
    dens = c * np.interp(lam, lam_grid, lam_density, left=0.0, right=0.0) * tau / ms**2
    return np.where(inside, dens, 0.0)
