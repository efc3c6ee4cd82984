"""Dense Jacobians from an operator, and their spectra.

dense_jacobian builds every J_n (D x D) from D products: J = matmat(I) with basis directions,
J = (J Q) Q^T with orthogonal directions Q (Haar: [V]'s Algorithms 1 and 2), or
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
    n, d = op.n_points, op.dim
    dtype, device = op.points.dtype, op.points.device
    if adjoint:
        if directions is not None:
            raise ValueError("reverse-mode Jacobians use basis directions")
        eye = torch.eye(d, dtype=dtype, device=device).expand(n, d, d)
        return op.rmatmat(eye).transpose(1, 2)
    if directions is None:
        return op.matmat(torch.eye(d, dtype=dtype, device=device).expand(n, d, d))
    return op.matmat(directions) @ directions.transpose(1, 2)


@dataclass
class DenseSpectra:
    """Spectra of N Jacobians: singular_values, sym_eigenvalues (N, D) descending; asymmetry (N,)."""

    singular_values: np.ndarray
    sym_eigenvalues: np.ndarray
    asymmetry: np.ndarray


def dense_spectra(jac: torch.Tensor) -> DenseSpectra:
    """Spectra of jac (N, D, D), computed in float64."""
    j = jac.detach().to(torch.float64)
    sv = torch.linalg.svdvals(j)
    sym = torch.linalg.eigvalsh((j + j.transpose(1, 2)) / 2).flip(-1)
    norm = torch.linalg.matrix_norm(j)
    skew = torch.linalg.matrix_norm(j - j.transpose(1, 2))
    asym = torch.where(norm > 0, skew / norm, torch.zeros_like(norm))
    return DenseSpectra(sv.cpu().numpy(), sym.cpu().numpy(), asym.cpu().numpy())
