"""Analytic models with an exact score and a closed-form Jacobian (theory.md 3.1).

Every analytic model is a Gaussian mixture p_0 = sum_k pi_k N(mu_k, C_k), with each covariance
held in eigen-form C_k = V_k diag(e_k) V_k^T (V_k: D x R orthonormal columns, e_k >= 0; columns
padded with zeros where components have fewer than R nonzero eigenvalues). At time t,
S_k = alpha^2 C_k + sigma^2 I and

    P_k = S_k^{-1} = I/sigma^2 - V_k diag(c_k) V_k^T,  c_k = alpha^2 e_k / (sigma^2 (alpha^2 e_k + sigma^2))
    g_k(x) = -P_k (x - alpha mu_k),   r_k(x) = softmax_k(log pi_k + log N(x; alpha mu_k, S_k))
    s(x)   = sum_k r_k g_k
    J(x)   = sum_k r_k (-P_k + g_k g_k^T) - s s^T

Special cases (constructors below): the linear manifold of [V] (one component, mu = 0), the
empirical score of N training points (C_k = 0; a partially memorizing one keeps the first M of
them), MoLRG [L], the isotropic GMM [B] and [B]'s colored templates (`colored_templates`: K
components of rank c, C_i = s^2 A_i A_i^T with A_i = I_c (x) x*_i).

[B] Buchanan, Pai, Ma, De Bortoli, "On the Edge of Memorization in Diffusion Models" (NeurIPS 2025).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from spectra.errors import SpectraError
from spectra.models.base import ScoreModel
from spectra.models.parameterization import check_target
from spectra.schedules import Schedule
from spectra.theory.manifold import LinearManifold, random_orthonormal


class GaussianMixture(ScoreModel):
    """Exact score model of a Gaussian mixture. Native parameterization: score.

    Args:
        weights: (K,) mixture weights, positive, normalized here.
        means: (K, D).
        bases: (K, D, R) orthonormal eigenvector columns of each C_k (zero-padded).
        eigenvalues: (K, R) the matching eigenvalues (>= 0; zero for padding).
        schedule: the noise schedule.
        shape: the sample shape (prod(shape) = D); defaults to (D,).
    """

    parameterization = "score"

    def __init__(
        self,
        weights: np.ndarray,
        means: np.ndarray,
        bases: np.ndarray,
        eigenvalues: np.ndarray,
        schedule: Schedule,
        shape: tuple[int, ...] | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        bases = np.asarray(bases, dtype=np.float64)
        eigenvalues = np.asarray(eigenvalues, dtype=np.float64)
        k, d = means.shape
        if weights.shape != (k,) or np.any(weights <= 0):
            raise SpectraError("mixture weights must be positive, one per component")
        if bases.shape[:2] != (k, d) or eigenvalues.shape != (k, bases.shape[2]):
            raise SpectraError("component bases must be (K, D, R) and eigenvalues (K, R)")
        if np.any(eigenvalues < 0):
            raise SpectraError("covariance eigenvalues must be non-negative")
        self.weights = weights / weights.sum()
        self.means = means
        self.bases = bases
        self.eigenvalues = eigenvalues
        self.schedule = schedule
        self.dim = d
        self.shape = tuple(shape) if shape is not None else (d,)
        if math.prod(self.shape) != d:
            raise SpectraError(f"shape {self.shape} does not hold D = {d} values")
        self._config = config or {"kind": "gmm"}
        self.activation_factor = 4 * (k + bases.shape[2] + 1)
        self.to("cpu", torch.float64)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> GaussianMixture:
        kw = {"device": device, "dtype": dtype}
        self._log_w = torch.as_tensor(np.log(self.weights), **kw)
        self._mu = torch.as_tensor(self.means, **kw)
        self._v = torch.as_tensor(self.bases, **kw)
        self._e = torch.as_tensor(self.eigenvalues, **kw)
        return self

    def config(self) -> dict[str, Any]:
        return dict(self._config)

    def state(self) -> dict[str, np.ndarray]:
        return {"weights": self.weights, "means": self.means, "bases": self.bases,
                "eigenvalues": self.eigenvalues}

    # --- the math -----------------------------------------------------------------------------
    def _terms(self, x: torch.Tensor, t: float):
        """Per-component quantities at flat x (B, D): g (B,K,D), log-joint (B,K), c (K,R)."""
        alpha, sigma = self.alpha_sigma(t)
        s2 = sigma**2
        a2e = alpha**2 * self._e
        c = a2e / (s2 * (a2e + s2))
        diff = x[:, None, :] - alpha * self._mu[None]
        proj = torch.einsum("bkd,kdr->bkr", diff, self._v)
        p_diff = diff / s2 - torch.einsum("kdr,bkr->bkd", self._v, c * proj)
        maha = (diff * diff).sum(-1) / s2 - (c * proj * proj).sum(-1)
        logdet = torch.log(a2e + s2).sum(-1) + (self.dim - self._e.shape[1]) * math.log(s2)
        log_joint = self._log_w - 0.5 * (maha + logdet + self.dim * math.log(2 * math.pi))
        return -p_diff, log_joint, c

    def predict(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """Exact score s(x) = sum_k r_k g_k, x of shape (B, *shape)."""
        flat = x.reshape(x.shape[0], self.dim)
        g, log_joint, _ = self._terms(flat, t)
        r = torch.softmax(log_joint, dim=-1)
        return (r[..., None] * g).sum(1).reshape(x.shape)

    def log_density(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """log p_t(x), shape (B,)."""
        _, log_joint, _ = self._terms(x.reshape(x.shape[0], self.dim), t)
        return torch.logsumexp(log_joint, dim=-1)

    def jacobian(self, x: torch.Tensor, t: float, target: str = "score") -> torch.Tensor:
        """Closed-form Jacobian (B, D, D) of the target w.r.t. x at time t (theory.md 3.1, 2):
        J_score = sum_k r_k (-P_k + g_k g_k^T) - s s^T; J_x0 = (I + sigma^2 J_score) / alpha;
        J_eps = -sigma J_score."""
        check_target(target)
        alpha, sigma = self.alpha_sigma(t)
        flat = x.reshape(x.shape[0], self.dim)
        g, log_joint, c = self._terms(flat, t)
        r = torch.softmax(log_joint, dim=-1)
        eye = torch.eye(self.dim, dtype=flat.dtype, device=flat.device)
        p = eye / sigma**2 - torch.einsum("kdr,kr,ker->kde", self._v, c, self._v)
        s = (r[..., None] * g).sum(1)
        jac = (
            -torch.einsum("bk,kde->bde", r, p)
            + torch.einsum("bk,bkd,bke->bde", r, g, g)
            - s[:, :, None] * s[:, None, :]
        )
        if target == "score":
            return jac
        if target == "eps":
            return -sigma * jac
        return (eye + sigma**2 * jac) / alpha

    def covariance_eigenvalues(self, component: int = 0) -> np.ndarray:
        """Nonzero eigenvalues of C_k, sorted descending."""
        e = self.eigenvalues[component]
        return np.sort(e[e > 0])[::-1]

    def covariance(self) -> np.ndarray:
        """Covariance (D, D) of p_0: sum_k pi_k (C_k + mu_k mu_k^T) - mubar mubar^T."""
        second = np.einsum("k,kdr,kr,ker->de", self.weights, self.bases, self.eigenvalues, self.bases)
        second += np.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        mean = self.weights @ self.means
        return second - np.outer(mean, mean)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """x0 = mu_k + V_k (sqrt(e_k) * z), k ~ pi, z ~ N(0, I): sample_labeled's samples."""
        return self.sample_labeled(n, rng)[0]

    def sample_labeled(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(x0 (n, *shape), labels (n,) int64): x0 = mu_k + V_k (sqrt(e_k) * z), k ~ pi,
        z ~ N(0, I), labelled by its component k."""
        comp = rng.choice(len(self.weights), size=n, p=self.weights)
        z = rng.standard_normal((n, self.eigenvalues.shape[1]))
        scaled = torch.from_numpy(np.sqrt(self.eigenvalues[comp]) * z)
        x = torch.from_numpy(self.means[comp])
        # One matmul per component (no (n, D, r) copy of the bases), in torch: numpy's OpenBLAS
        # threads spin-wait against torch's and made each training step five times slower.
        for k in np.unique(comp):
            rows = torch.from_numpy(comp == k)
            x[rows] += scaled[rows] @ torch.from_numpy(self.bases[k]).T
        return x.numpy().reshape((n, *self.shape)), comp.astype(np.int64)


# --- constructors ---------------------------------------------------------------------------
def linear_manifold(
    ambient_dim: int,
    variances: np.ndarray,
    schedule: Schedule,
    embedding: str = "orthonormal",
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> GaussianMixture:
    """[V]'s linear manifold: x0 = B z, z ~ N(0, diag(variances)), one zero-mean component.
    embedding 'orthonormal': B has orthonormal columns (C's eigenvalues are the variances);
    'gaussian': B = F with iid N(0, 1/D) entries (Marchenko–Pastur bulks)."""
    try:
        manifold = LinearManifold(ambient_dim, variances, embedding, seed)
    except ValueError as exc:
        raise SpectraError(str(exc)) from None
    basis, eig = manifold.factor()
    return GaussianMixture(
        np.ones(1), np.zeros((1, ambient_dim)), basis[None], eig[None], schedule, config=config
    )


def empirical(
    points: np.ndarray, schedule: Schedule, config: dict[str, Any] | None = None
) -> GaussianMixture:
    """The empirical (memorizing) score of N training points (N, *shape): C_k = 0, mu_k = x_i,
    equal weights, so s(x) = sum_i r_i (alpha x_i - x)/sigma^2 with
    r = softmax_i(-||x - alpha x_i||^2 / (2 sigma^2)). Given the first M of [B]'s N training points
    it is [B]'s partially memorizing denoiser (a TOML spec's `memorized = M`)."""
    points = np.asarray(points, dtype=np.float64)
    if points.ndim < 2 or len(points) == 0:
        raise SpectraError("empirical points must be an array of shape (N, *shape) with N >= 1")
    n = len(points)
    flat = points.reshape(n, -1)
    d = flat.shape[1]
    return GaussianMixture(
        np.ones(n), flat, np.zeros((n, d, 0)), np.zeros((n, 0)), schedule,
        shape=points.shape[1:], config=config,
    )


def molrg(
    ambient_dim: int,
    n_classes: int,
    subspace_dim: int,
    delta: float,
    schedule: Schedule,
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> GaussianMixture:
    """[L]'s mixture of low-rank Gaussians: C_k = U_k U_k^T + delta^2 sum_{j != k} U_j U_j^T,
    U_k mutually orthogonal D x d blocks, zero means, equal weights."""
    total = n_classes * subspace_dim
    if total > ambient_dim:
        raise SpectraError(f"molrg needs K d <= D (got {total} > {ambient_dim})")
    u = random_orthonormal(ambient_dim, total, np.random.default_rng(seed))
    eig = np.full((n_classes, total), delta**2)
    for k in range(n_classes):
        eig[k, k * subspace_dim : (k + 1) * subspace_dim] = 1.0
    bases = np.broadcast_to(u, (n_classes, ambient_dim, total)).copy()
    return GaussianMixture(
        np.ones(n_classes), np.zeros((n_classes, ambient_dim)), bases, eig, schedule, config=config
    )


def isotropic_gmm(
    ambient_dim: int,
    n_components: int,
    variance: float,
    schedule: Schedule,
    radius: float | None = None,
    seed: int = 0,
    config: dict[str, Any] | None = None,
) -> GaussianMixture:
    """[B]'s isotropic GMM: C_k = s_*^2 I, means uniform on the sphere of radius sqrt(D)."""
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((n_components, ambient_dim))
    means *= (radius if radius is not None else math.sqrt(ambient_dim)) / np.linalg.norm(
        means, axis=1, keepdims=True
    )
    eye = np.broadcast_to(np.eye(ambient_dim), (n_components, ambient_dim, ambient_dim)).copy()
    eig = np.full((n_components, ambient_dim), float(variance))
    return GaussianMixture(np.ones(n_components), means, eye, eig, schedule, config=config)


def colored_templates(
    templates: np.ndarray,
    channels: int,
    variance: float,
    color_mean: np.ndarray,
    schedule: Schedule,
    config: dict[str, Any] | None = None,
) -> GaussianMixture:
    """[B]'s colored templates: a monochrome template x*_i (p pixels; `templates` (K, p) or images
    (K, H, W) with p = H W) colored by c ~ N(u*, s^2 I_c) (u* = `color_mean` (c,), s^2 = `variance`)
    is the image y = c (x) x*_i = A_i c, A_i = I_c (x) x*_i of shape (c p) x c: in the channel-major
    layout (c, p), channel j of y is c_j x*_i. Component i is therefore N(A_i u*, s^2 A_i A_i^T), of
    rank c; since A_i^T A_i = ||x*_i||^2 I_c its eigen-form is V_i = A_i / ||x*_i|| (orthonormal
    columns) with c eigenvalues s^2 ||x*_i||^2. The K templates give an equal-weight mixture in
    D = c p, of sample shape (c, H, W) for image templates, else (c p,).

    [B] Buchanan, Pai, Ma, De Bortoli, "On the Edge of Memorization in Diffusion Models" (NeurIPS 2025).
    """
    templates = np.asarray(templates, dtype=np.float64)
    if templates.ndim not in (2, 3) or len(templates) == 0 or templates[0].size == 0:
        raise SpectraError("templates must be an array (K, p) or (K, H, W) with K >= 1 and p >= 1")
    if channels < 1:
        raise SpectraError(f"colored templates need channels >= 1, got {channels}")
    if variance < 0:
        raise SpectraError(f"colored templates need variance >= 0, got {variance}")
    color_mean = np.asarray(color_mean, dtype=np.float64)
    if color_mean.shape != (channels,):
        raise SpectraError(f"color_mean must have channels = {channels} entries, got {color_mean.shape}")
    k = len(templates)
    flat = templates.reshape(k, -1)
    p = flat.shape[1]
    norms = np.linalg.norm(flat, axis=1)
    if np.any(norms == 0):
        raise SpectraError(f"template {int(np.argmin(norms))} is zero (it has no colored image)")
    # A_i u* = u* (x) x*_i (channel-major), and A_i / ||x*_i||: column j holds x*_i/||x*_i|| in block j
    means = (color_mean[None, :, None] * flat[:, None, :]).reshape(k, channels * p)
    bases = np.zeros((k, channels, p, channels))
    for j in range(channels):
        bases[:, j, :, j] = flat / norms[:, None]
    eig = np.repeat((variance * norms**2)[:, None], channels, axis=1)
    shape = (channels, *templates.shape[1:]) if templates.ndim == 3 else (channels * p,)
    return GaussianMixture(
        np.ones(k), means, bases.reshape(k, channels * p, channels), eig, schedule, shape=shape,
        config=config,
    )
