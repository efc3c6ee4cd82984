"""The linear manifold of [V] as data: x0 = B z, z ~ N(0, diag(v)) (theory.md 3.2-3.3). numpy only.

Embeddings:
* `orthonormal`: B has Haar-random orthonormal columns, so the nonzero eigenvalues of
  C = B diag(v) B^T are the variances v themselves;
* `gaussian`: B = F with iid N(0, 1/D) entries, so C = F diag(v) F^T has the eigenvalues of a
  random matrix, which for D, m -> infinity follow the Silverstein law of the profile v with
  aspect ratio c = m/D (Marchenko–Pastur for equal variances).

One construction serves both the analytic score model (spectra.models) and the exact finite-D
theory, so a prediction made from a spec and its seed is the spectrum of the model that spec builds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

EMBEDDINGS = ("orthonormal", "gaussian")


def random_orthonormal(d: int, m: int, rng: np.random.Generator) -> np.ndarray:
    """(D, m) matrix with orthonormal columns, Haar-distributed (QR with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((d, m)))
    return q * np.sign(np.diag(r))[None, :]


def eigen_factor(basis: np.ndarray, variances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal eigen-form of C = B diag(v) B^T (B: D x m, any columns): the thin SVD
    B diag(sqrt v) = U S W^T gives C = U diag(S^2) U^T. Returns U (D, m) and S^2 (m,), descending."""
    u, s, _ = np.linalg.svd(basis * np.sqrt(variances)[None, :], full_matrices=False)
    return u, s**2


@dataclass(frozen=True)
class LinearManifold:
    """[V]'s linear manifold in D = ambient_dim dimensions with m = len(variances) tangent
    variances (the diagonal of Sigma_z), embedded by `embedding` drawn from `seed`."""

    ambient_dim: int
    variances: np.ndarray
    embedding: str = "orthonormal"
    seed: int = 0
    _factor: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        v = np.asarray(self.variances, dtype=np.float64).ravel()
        object.__setattr__(self, "variances", v)
        if v.size == 0 or v.size > self.ambient_dim:
            raise ValueError(
                f"need 1 <= m <= D tangent variances (got m = {v.size}, D = {self.ambient_dim})"
            )
        if np.any(~np.isfinite(v)) or np.any(v <= 0):
            raise ValueError("tangent variances must be positive and finite")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.embedding not in EMBEDDINGS:
            raise ValueError(f"unknown embedding {self.embedding!r} (expected orthonormal or gaussian)")

    @property
    def m(self) -> int:
        return self.variances.size

    @property
    def aspect_ratio(self) -> float:
        """c = m/D."""
        return self.m / self.ambient_dim

    def factor(self) -> tuple[np.ndarray, np.ndarray]:
        """(U (D, m), eigenvalues (m,)) with C = U diag(eigenvalues) U^T, U orthonormal.
        Drawn once from np.random.default_rng(seed)."""
        if "u" not in self._factor:
            rng = np.random.default_rng(self.seed)
            if self.embedding == "orthonormal":
                u, e = random_orthonormal(self.ambient_dim, self.m, rng), self.variances
            else:
                f = rng.standard_normal((self.ambient_dim, self.m)) / np.sqrt(self.ambient_dim)
                u, e = eigen_factor(f, self.variances)
            self._factor.update(u=u, e=e)
        return self._factor["u"], self._factor["e"]

    def covariance_eigenvalues(self) -> np.ndarray:
        """All D eigenvalues of C, sorted descending: the m tangent ones, then D - m zeros."""
        e = np.sort(self.factor()[1])[::-1]
        return np.concatenate([e, np.zeros(self.ambient_dim - self.m)])

    def variance_profile(self) -> tuple[np.ndarray, np.ndarray]:
        """The distinct variances and their fractions (H = sum_k w_k delta_{v_k}), for the
        random-matrix law of the gaussian embedding."""
        values, counts = np.unique(self.variances, return_counts=True)
        return values, counts / counts.sum()
