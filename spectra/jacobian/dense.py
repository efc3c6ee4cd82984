"""Dense Jacobians from an operator, and their spectra.

dense_jacobian builds every J_n (F x D; D x D but for a feature) from D products: J = matmat(I)
with basis directions, J = (J Q) Q^T with orthogonal directions Q (Haar: [V]'s Algorithms 1 and 2), or
J = (rmatmat(I))^T with reverse mode. dense_spectra returns what a run stores per (anchor, time):
singular values of J, eigenvalues of its symmetric part (J + J^T)/2 (both sorted descending) and
the asymmetry ||J - J^T||_F / ||J||_F (theory.md 2). Spectra are computed in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spectra.jacobian.operators import JacobianOperator


def dense_jacobian(
    op: JacobianOperator, directions: torch.Tensor | None = None, adjoint: bool = False
) -> torch.Tensor:
    """All N Jacobians, shape (N, D, D).

    Args:
        op: the operator.
        directions: None for the standard basis, or (N, D, D) orthogonal matrices Q_n whose
            columns are the probe directions (then J_n = (J_n Q_n) Q_n^T).
        adjoint: build J^T from reverse-mode products (basis directions only).
    """
    n, d, f = op.n_points, op.dim, op.out_dim
    dtype, device = op.points.dtype, op.points.device
    if adjoint:
        if directions is not None:
            raise ValueError("reverse-mode Jacobians use basis directions")
        eye = torch.eye(f, dtype=dtype, device=device).expand(n, f, f)
        return op.rmatmat(eye).transpose(1, 2)
    if directions is None:
        return op.matmat(torch.eye(d, dtype=dtype, device=device).expand(n, d, d))
    return op.matmat(directions) @ directions.transpose(1, 2)


@dataclass
class DenseSpectra:
    """Spectra of N Jacobians (F x D each): singular_values (N, min(F, D)) and, for square ones,
    sym_eigenvalues (N, D), both descending, and asymmetry (N,) (NaN for rectangular Jacobians,
    which have no symmetric part); with vectors, the top V right singular vectors (N, V, D) and
    left ones (N, V, F), J v_i = s_i u_i, each pair's sign fixed (sign_fixed)."""

    singular_values: np.ndarray
    sym_eigenvalues: np.ndarray
    asymmetry: np.ndarray
    right_vectors: np.ndarray | None = None
    left_vectors: np.ndarray | None = None


def sign_fixed(right: torch.Tensor, left: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular vector pairs (..., V, D) and (..., V, F) with the sign that makes each right
    vector's largest-magnitude entry positive (a pair is defined up to a common sign; this one
    does not depend on the solver)."""
    pivot = right.gather(-1, right.abs().argmax(-1, keepdim=True))
    sign = torch.where(pivot < 0, -1.0, 1.0).to(right.dtype)
    return right * sign, left * sign


def dense_spectra(jac: torch.Tensor, n_vectors: int = 0, same_space: bool = True) -> DenseSpectra:
    """Spectra of jac (N, F, D), computed in float64, with the top `n_vectors` singular vector
    pairs when n_vectors > 0. A Jacobian has a symmetric part only when it is square and maps a
    space into itself (`same_space`: not a feature's, whose F values live elsewhere even when
    F = D)."""
    j = jac.detach().to(torch.float64)
    n, f, d = j.shape
    right = left = None
    if n_vectors > 0:
        u, sv, vh = torch.linalg.svd(j, full_matrices=False)
        r, l_ = sign_fixed(vh[:, :n_vectors], u[:, :, :n_vectors].transpose(1, 2))
        right, left = r.cpu().numpy(), l_.cpu().numpy()
    else:
        sv = torch.linalg.svdvals(j)
    if f != d or not same_space:
        nan = np.full((n, min(f, d)), np.nan)
        return DenseSpectra(sv.cpu().numpy(), nan, np.full(n, np.nan), right, left)
    sym = torch.linalg.eigvalsh((j + j.transpose(1, 2)) / 2).flip(-1)
    norm = torch.linalg.matrix_norm(j)
    skew = torch.linalg.matrix_norm(j - j.transpose(1, 2))
    asym = torch.where(norm > 0, skew / norm, torch.zeros_like(norm))
    return DenseSpectra(sv.cpu().numpy(), sym.cpu().numpy(), asym.cpu().numpy(), right, left)
