"""Theory of Gaussian-mixture data (theory.md 3.1, 3.6): the exact posterior-mean Jacobian at
given points, and the confident-regime levels and class gap over tau. numpy only.

Data p_0 = sum_k pi_k N(mu_k, C_k), C_k = V_k diag(e_k) V_k^T (V_k: D x R orthonormal columns,
zero-padded). At time t (x = alpha x0 + sigma eps, tau = sigma^2/alpha^2) the posterior of
component k is r_k(x) = softmax_k(log pi_k + log N(x; alpha mu_k, S_k)), S_k = alpha^2 C_k +
sigma^2 I, and within it x0 | x, k ~ N(m_k, Sigma_k) with

    Sigma_k = C_k - alpha^2 C_k S_k^{-1} C_k = V_k diag(e_k tau / (e_k + tau)) V_k^T
    m_k     = mu_k + alpha C_k S_k^{-1} (x - alpha mu_k)
            = mu_k + (1/alpha) V_k diag(e_k / (e_k + tau)) V_k^T (x - alpha mu_k).

Tweedie's second-order formula gives the denoiser's (posterior mean's) Jacobian

    J_x0(x) = (alpha / sigma^2) Cov[x0 | x],  Cov[x0 | x] = sum_k r_k (Sigma_k + m_k m_k^T) - m m^T,

symmetric positive semi-definite, m = sum_k r_k m_k. (The analytic models compute the same
Jacobian from the score's, J_x0 = (I + sigma^2 J_score)/alpha; this module's route is
independent of theirs.) Its normalized eigenvalues, the eigenvalues of sigma^2 J_score, are
alpha eig(J_x0) - 1.

Where the posterior is confident (r one-hot on component k) J_x0 = (alpha/sigma^2) Sigma_k: the
linear theory of C_k (theory.md 3.2), normalized eigenvalues -tau/(e + tau). For [L]'s MoLRG
(C_k = U_k U_k^T + delta^2 Ut_k Ut_k^T) these are the levels zeta = 1/(1 + tau) on the own class
(x d) and xi = delta^2/(delta^2 + tau) on the other classes (x (K-1) d) in units of alpha J_x0,
and -1 elsewhere: the **class gap** zeta - xi sits at index d, between the own class's values and
the others' (theory.md 3.6).

[L] Li, Zhang, Li, Chen, Zhu, Wang, Qu, "Understanding Representation Dynamics of Diffusion
Models via Low-Dimensional Modeling" (NeurIPS 2025).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from spectra.theory.prediction import RANK_RTOL, LinearTheory

#: the posterior counts as confident where its largest weight is at least this
CONFIDENT = 1 - 1e-9


@dataclass
class MixtureTheory:
    """The theory of a Gaussian mixture: weights (K,), means (K, D), bases (K, D, R) and
    eigenvalues (K, R) in the eigen-form of the module docstring; `description` says where it
    came from."""

    weights: np.ndarray
    means: np.ndarray
    bases: np.ndarray
    eigenvalues: np.ndarray
    description: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.weights = np.asarray(self.weights, dtype=np.float64)
        self.weights = self.weights / self.weights.sum()
        self.means = np.asarray(self.means, dtype=np.float64)
        self.bases = np.asarray(self.bases, dtype=np.float64)
        self.eigenvalues = np.asarray(self.eigenvalues, dtype=np.float64)
        k, d = self.means.shape
        if self.weights.shape != (k,) or self.bases.shape[:2] != (k, d) \
                or self.eigenvalues.shape != (k, self.bases.shape[2]):
            raise ValueError("a mixture needs weights (K,), means (K, D), bases (K, D, R) and "
                             "eigenvalues (K, R)")

    # --- sizes -----------------------------------------------------------------------------
    @property
    def ambient_dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @property
    def m(self) -> int:
        """The rank of the data's support: the dimension of the span of every component's
        directions and the means' differences (D - m normal directions end at -1)."""
        cols = [self.bases[k][:, self.eigenvalues[k] > 0] for k in range(self.n_components)]
        cols.append((self.means - self.means[:1]).T)
        stacked = np.concatenate(cols, axis=1)
        if stacked.size == 0:
            return 0
        s = np.linalg.svd(stacked, compute_uv=False)
        return int(np.count_nonzero(s > RANK_RTOL ** 0.5 * max(s[0], 1e-300)))

    def component_theory(self, k: int) -> LinearTheory:
        """The linear theory of C_k: the confident regime inside component k."""
        lam = np.zeros(self.ambient_dim)
        lam[: self.eigenvalues.shape[1]] = self.eigenvalues[k]
        return LinearTheory(lam, None, {"kind": "mixture-component", "component": k})

    def class_rank(self, k: int) -> int | None:
        """d: the number of C_k's eigenvalues at its largest level (the own class of a MoLRG
        component), where the class gap sits; None when C_k has a single nonzero level (no
        class gap, e.g. an isotropic component)."""
        e = np.sort(self.eigenvalues[k][self.eigenvalues[k] > 0])[::-1]
        if e.size == 0:
            return None
        top = int(np.count_nonzero(e >= e[0] * (1 - 1e-9)))
        return top if top < e.size else None

    # --- the exact posterior and Jacobian at points ----------------------------------------
    def _log_joint(self, x: np.ndarray, alpha: float, sigma: float) -> np.ndarray:
        """log pi_k + log N(x; alpha mu_k, S_k) up to a constant, (N, K), for flat x (N, D)."""
        s2 = sigma**2
        a2e = alpha**2 * self.eigenvalues  # (K, R)
        c = a2e / (s2 * (a2e + s2))
        diff = x[:, None, :] - alpha * self.means[None]  # (N, K, D)
        proj = np.einsum("nkd,kdr->nkr", diff, self.bases)
        maha = (diff * diff).sum(-1) / s2 - (c * proj * proj).sum(-1)
        logdet = np.log(a2e + s2).sum(-1) + (self.ambient_dim - self.bases.shape[2]) * np.log(s2)
        return np.log(self.weights) - 0.5 * (maha + logdet)

    def posterior(self, x: ArrayLike, alpha: float, sigma: float) -> np.ndarray:
        """r_k(x), (N, K), at flat points x (N, D)."""
        lj = self._log_joint(np.asarray(x, dtype=np.float64), alpha, sigma)
        lj -= lj.max(axis=1, keepdims=True)
        r = np.exp(lj)
        return r / r.sum(axis=1, keepdims=True)

    def denoiser_jacobian(self, x: ArrayLike, alpha: float, sigma: float) -> np.ndarray:
        """J_x0(x) = (alpha/sigma^2) Cov[x0 | x], (N, D, D), at flat points x (N, D) (module
        docstring)."""
        x = np.asarray(x, dtype=np.float64)
        tau = sigma**2 / alpha**2
        r = self.posterior(x, alpha, sigma)
        shrink = self.eigenvalues / (self.eigenvalues + tau)  # (K, R)
        diff = x[:, None, :] - alpha * self.means[None]
        proj = np.einsum("nkd,kdr->nkr", diff, self.bases)
        m_k = self.means[None] + np.einsum("kdr,kr,nkr->nkd", self.bases, shrink, proj) / alpha
        sigma_k = np.einsum("kdr,kr,ker->kde", self.bases, self.eigenvalues * tau / (self.eigenvalues + tau),
                            self.bases)
        m = np.einsum("nk,nkd->nd", r, m_k)
        cov = (np.einsum("nk,kde->nde", r, sigma_k) + np.einsum("nk,nkd,nke->nde", r, m_k, m_k)
               - m[:, :, None] * m[:, None, :])
        return alpha / sigma**2 * cov

    def normalized_eigenvalues(self, points: ArrayLike, alpha: ArrayLike, sigma: ArrayLike) -> np.ndarray:
        """Eigenvalues of sigma^2 J_score = alpha J_x0 - I at points (N, T, D) (the point of
        anchor n at time i), schedule values alpha, sigma (T,): (N, T, D), descending."""
        points = np.asarray(points, dtype=np.float64)
        out = np.empty(points.shape)
        for i, (a, s) in enumerate(zip(np.atleast_1d(alpha), np.atleast_1d(sigma), strict=True)):
            jac = self.denoiser_jacobian(points[:, i], float(a), float(s))
            out[:, i] = np.linalg.eigvalsh(a * jac)[:, ::-1] - 1
        return out

    def singular_values(self, points: ArrayLike, alpha: ArrayLike, sigma: ArrayLike, target: str
                        ) -> np.ndarray:
        """Singular values (N, T, D), descending, of the target's Jacobian at points (N, T, D)
        (target_singular_values of the normalized eigenvalues)."""
        lam = self.normalized_eigenvalues(points, alpha, sigma)
        return target_singular_values(lam, alpha, sigma, target)

    # --- the confident regime --------------------------------------------------------------
    def confident_levels(self, tau: ArrayLike, k: int) -> np.ndarray:
        """Normalized eigenvalues (T, D), descending, inside component k where the posterior is
        confident: -tau/(e + tau) for C_k's eigenvalues e, -1 on the rest (theory.md 3.6)."""
        return self.component_theory(k).eigenvalues(tau)


def target_singular_values(lam: np.ndarray, alpha: ArrayLike, sigma: ArrayLike, target: str) -> np.ndarray:
    """Singular values (N, T, D), descending, of the target's Jacobian whose normalized
    eigenvalues are lam (N, T, D) at schedule values alpha, sigma (T,): the magnitudes of its
    eigenvalues, J_x0's (lambda + 1)/alpha, J_score's lambda/sigma^2, J_eps's -lambda/sigma (all
    three are symmetric)."""
    alpha = np.asarray(alpha, dtype=np.float64)[None, :, None]
    sigma = np.asarray(sigma, dtype=np.float64)[None, :, None]
    if target == "denoiser":
        values = (lam + 1) / alpha
    elif target == "score":
        values = lam / sigma**2
    elif target == "eps":
        values = -lam / sigma
    else:
        raise ValueError(f"unknown target {target!r}")
    return -np.sort(-np.abs(values), axis=-1)
