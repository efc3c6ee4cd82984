"""Matrix-free top-k singular values of Jacobian operators, with residual certificates.

Block Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization (Golub, Luk & Overton
1981), run for N points at once on an operator that only multiplies (operators.py). With a block
size b and an orthonormal start block V_1 (D x b):

    J V_1 = U_1 A_1                                   (QR)
    J^T U_j - V_j A_j^T = V_{j+1} B_j                 (QR, after reorthogonalizing against V)
    J V_{j+1} - U_j B_j^T = U_{j+1} A_{j+1}           (QR, after reorthogonalizing against U)

so J [V_1..V_j] = [U_1..U_j] T_j with T_j block upper bidiagonal (A_i on the diagonal, B_i^T above
it). With T_j = X S Y^T, the Ritz triples (s_i, u_i = U X_i, v_i = V Y_i) satisfy J v_i = s_i u_i
and J^T u_i - s_i v_i = V_{j+1} B_j X_i[last block], whose norm is the convergence test
(<= tol s_i for the top k). On exit every value is certified explicitly with k more JVPs and VJPs:

    residual_i = sqrt(||J v_i - s_i u_i||^2 + ||J^T u_i - s_i v_i||^2)

and some singular value of J lies within residual_i of s_i. Each iteration costs b JVPs and
b VJPs per point; the subspace found at one time can warm-start the next (`start`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from spectra.jacobian.operators import JacobianOperator


@dataclass
class TopKResult:
    """Top-k singular triples of N operators.

    singular_values (N, k) descending; residuals (N, k) (see module docstring); right_vectors
    (N, D, k) (to warm-start the next time); n_jvp, n_vjp (N,) products spent per point;
    converged (N,) whether every value met the tolerance before the product budget ran out.
    """

    singular_values: np.ndarray
    residuals: np.ndarray
    right_vectors: torch.Tensor
    n_jvp: np.ndarray
    n_vjp: np.ndarray
    converged: np.ndarray


def _orthonormalize(z: torch.Tensor, basis: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorthogonalize z (n, D, b) against basis (n, D, m) twice (classical Gram–Schmidt, 'twice
    is enough'), then QR: z_reorth = Q R. Returns Q (n, D, b) orthogonal to basis, and R."""
    if basis is not None and basis.shape[-1] > 0:
        for _ in range(2):
            z = z - basis @ (basis.transpose(1, 2) @ z)
    q, r = torch.linalg.qr(z)
    if basis is not None and basis.shape[-1] > 0:
        # columns of q born from round-off (rank-deficient z) must not re-enter the basis
        q = q - basis @ (basis.transpose(1, 2) @ q)
        q, r2 = torch.linalg.qr(q)
        r = r2 @ r
    return q, r


def topk_svd(
    op: JacobianOperator,
    k: int,
    tol: float = 1e-6,
    block_size: int | None = None,
    max_products: int | None = None,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> TopKResult:
    """The k largest singular values of each of the op's N Jacobians (see module docstring).

    Args:
        op: the operator (needs matmat and rmatmat).
        k: number of values, 1 <= k <= D.
        tol: relative residual at which a value counts as converged (values below sqrt(eps)
            times the largest are held to that floor instead).
        block_size: b, vectors per block [default: k + 8, at most D]. With b < k a cluster of
            more than b equal values can be misranked (each certificate stays true).
        max_products: budget of JVPs plus VJPs per point, the 2 k of the certificates included
            [default: 2 D + 2 k: enough for a Krylov space of all R^D, hence exact values].
        start: (N, D, k0) vectors to start from (e.g. the previous time's right vectors).
        generator: torch generator for the random part of the start block.
    """
    n, d = op.n_points, op.dim
    if not 1 <= k <= d:
        raise ValueError(f"k must be between 1 and D = {d}, got {k}")
    dtype, device = op.points.dtype, op.points.device
    b = min(block_size or k + 8, d)
    budget = 2 * d + 2 * k if max_products is None else max_products
    v1 = torch.randn(n, d, b, dtype=dtype, device=device, generator=generator)
    if start is not None:
        k0 = min(start.shape[-1], b)
        v1[:, :, :k0] = start[:, :, :k0].to(v1)
    v1, _ = torch.linalg.qr(v1)

    sv = np.full((n, k), np.nan)
    right = torch.zeros(n, d, k, dtype=dtype, device=device)
    left = torch.zeros(n, d, k, dtype=dtype, device=device)
    n_jvp, n_vjp = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)

    active = np.arange(n)
    sub = op.subset(active)
    big_v = v1
    w = sub.matmat(v1)
    n_jvp += b
    big_u, a = torch.linalg.qr(w)
    t = a
    while True:
        z = sub.rmatmat(big_u[:, :, -b:]) - big_v[:, :, -b:] @ a.transpose(1, 2)
        n_vjp[active] += b
        v_next, b_mat = _orthonormalize(z, big_v)
        x, s, yt = torch.linalg.svd(t)
        kk = min(k, s.shape[-1])
        est = torch.linalg.vector_norm(b_mat @ x[:, -b:, :kk], dim=1)  # (n_active, kk)
        # relative to each value, with a floor sqrt(eps) s_1 so exact zeros (rank < k) converge
        floor = s[:, :1] * torch.finfo(dtype).eps ** 0.5
        done_now = (kk == k) & (est <= tol * torch.maximum(s[:, :kk], floor)).all(1)
        spent = n_jvp[active] + n_vjp[active]
        out_of_budget = torch.as_tensor(spent + 2 * b + 2 * k > budget, device=device)
        finish = (done_now | out_of_budget | (big_v.shape[-1] + b > d)).cpu().numpy()
        if finish.any():
            rows = torch.as_tensor(np.nonzero(finish)[0], device=device)
            idx = torch.as_tensor(active[finish], device=device)
            sv[active[finish], :kk] = s[rows, :kk].cpu().numpy()
            m = t.shape[-1]
            right[idx, :, :kk] = big_v[rows, :, :m] @ yt[rows].transpose(1, 2)[:, :, :kk]
            left[idx, :, :kk] = big_u[rows] @ x[rows, :, :kk]
            converged[active[finish]] = done_now[rows].cpu().numpy()
        if finish.all():
            break
        keep = torch.as_tensor(np.nonzero(~finish)[0], device=device)
        active = active[~finish]
        sub = op.subset(active)
        big_v, big_u, t, a = big_v[keep], big_u[keep], t[keep], a[keep]
        v_next, b_mat = v_next[keep], b_mat[keep]
        w = sub.matmat(v_next) - big_u[:, :, -b:] @ b_mat.transpose(1, 2)
        n_jvp[active] += b
        u_next, a = _orthonormalize(w, big_u)
        m = t.shape[-1]
        grown = torch.zeros(len(active), m + b, m + b, dtype=dtype, device=device)
        grown[:, :m, :m] = t
        grown[:, m - b : m, m:] = b_mat.transpose(1, 2)
        grown[:, m:, m:] = a
        t = grown
        big_v = torch.cat([big_v, v_next], dim=2)
        big_u = torch.cat([big_u, u_next], dim=2)

    # explicit certificates: k JVPs and k VJPs per point
    s_t = torch.as_tensor(np.nan_to_num(sv), dtype=dtype, device=device)[:, None, :]
    r1 = op.matmat(right) - left * s_t
    r2 = op.rmatmat(left) - right * s_t
    n_jvp += k
    n_vjp += k
    res = torch.sqrt(torch.linalg.vector_norm(r1, dim=1) ** 2 + torch.linalg.vector_norm(r2, dim=1) ** 2)
    res = np.where(np.isnan(sv), np.nan, res.cpu().numpy())  # values the budget never reached
    return TopKResult(sv, res, right, n_jvp, n_vjp, converged)
