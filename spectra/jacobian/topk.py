"""Matrix-free top-k singular values of Jacobian operators, with certificates from the products.

Block Golub–Kahan–Lanczos bidiagonalization with full reorthogonalization (Golub, Luk & Overton
1981), thick-restarted when the basis reaches `max_basis` columns (Baglama & Reichel 2005,
"Augmented implicitly restarted Lanczos bidiagonalization methods", SIAM J. Sci. Comput. 27;
the restart of PROPACK and irlba), run for N points at once on an operator that only multiplies
(operators.py). With a block size b and an orthonormal start block V_1 (D x b):

    J V_1 = U_1 A_1                                   (QR)
    J^T U_j - V_j A_j^T = V_{j+1} B_j                 (QR, after reorthogonalizing against V)
    J V_{j+1} - U_j B_j^T = U_{j+1} A_{j+1}           (QR, after reorthogonalizing against U)

so J V = U T with T (m x m) the projected matrix and J^T U = V T^T + V_{j+1} B_j E_j^T. With
T = X S Y^T, the Ritz triples (s_i, u_i = U X_i, v_i = V Y_i) satisfy J v_i = s_i u_i and
||J^T u_i - s_i v_i|| = ||B_j X_i[last block]|| in exact arithmetic. A thick restart keeps the
l best triples: V <- V Y_l, U <- U X_l, T <- diag(s_1..s_l), and couples them to the next
block V_{j+1} by C = B_j X_l[last block] (b x l): J^T U_l = V_l S_l + V_{j+1} C, so the next
step is J V_{j+1} - U_l C^T = U' A'.

Certificates cost no products: the raw products J V and J^T U are kept, and by linearity
J v_i = (J V) Y_i and J^T u_i = (J^T U) X_i, so

    residual_i = sqrt(||J v_i - s_i u_i||^2 + ||J^T u_i - s_i v_i||^2)

is computed from what the operator returned, not from the recurrences (which lose accuracy
with orthogonality); some singular value of J lies within residual_i of s_i. A point finishes
when every one of its k certificates is below tol times its value, or when its basis spans R^D
(at most 2 D products without restarts, max_basis = D): T is then J in two orthonormal bases and
its values are J's to rounding, which the certificates bound (a top-k that has not converged
before is a dense problem, and this is its dense solution).
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
    and left_vectors (N, D, k); n_jvp, n_vjp (N,) products spent per point; converged (N,)
    whether every certificate met the tolerance or the basis spanned R^D; restarts (N,) thick
    restarts per point.
    """

    singular_values: np.ndarray
    residuals: np.ndarray
    right_vectors: torch.Tensor
    left_vectors: torch.Tensor
    n_jvp: np.ndarray
    n_vjp: np.ndarray
    converged: np.ndarray
    restarts: np.ndarray


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


class _State:
    """The Lanczos state of the active points: V (n, D, m) with its products JV = J V, U (n, D, m)
    with JtU = J^T U, T (n, m, m) with J V = U T, and the next block v_next (n, D, b) with its
    coupling to U, coup (n, b, m): J^T U = V T^T + v_next coup (only the last block's rows are
    nonzero between restarts)."""

    def __init__(self, v, jv, u, jtu, t, v_next, coup):
        self.v, self.jv, self.u, self.jtu, self.t = v, jv, u, jtu, t
        self.v_next, self.coup = v_next, coup

    def keep(self, rows: torch.Tensor) -> _State:
        return _State(*(getattr(self, a)[rows] for a in ("v", "jv", "u", "jtu", "t", "v_next", "coup")))

    @property
    def m(self) -> int:
        return self.t.shape[-1]


def _ritz(st: _State, k: int):
    """Ritz values s (n, m), the top kk = min(k, m) right and left Ritz vectors (n, D, kk) and
    their certificates (n, kk) from the raw products."""
    x, s, yt = torch.linalg.svd(st.t)
    kk = min(k, s.shape[-1])
    y = yt.transpose(1, 2)[:, :, :kk]
    right, left = st.v @ y, st.u @ x[:, :, :kk]
    s_k = s[:, None, :kk]
    r1 = st.jv @ y - left * s_k
    r2 = st.jtu @ x[:, :, :kk] - right * s_k
    cert = torch.sqrt(torch.linalg.vector_norm(r1, dim=1) ** 2 + torch.linalg.vector_norm(r2, dim=1) ** 2)
    return s, right, left, cert, kk


def topk_svd(
    op: JacobianOperator,
    k: int,
    tol: float = 1e-6,
    block_size: int | None = None,
    max_products: int | None = None,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    max_basis: int | None = None,
) -> TopKResult:
    """The k largest singular values of each of the op's N Jacobians (see module docstring).

    Args:
        op: the operator (needs matmat and rmatmat).
        k: number of values, 1 <= k <= D.
        tol: relative certificate at which a value counts as converged (values below sqrt(eps)
            times the largest are held to that floor instead).
        block_size: b, vectors per block [default: max(1, k // 10), tuning.fastest_block's
            largest on a CPU]. With b < k a cluster of more than
            b equal values can be misranked (each certificate stays true).
        max_products: budget of JVPs plus VJPs per point [default: unlimited without restarts
            (the basis spans R^D within 2 D products), 4 D with them]; the first step (2 b
            products) always runs.
        start: (N, D, b0) vectors to start from; the first b columns start the block.
        generator: torch generator for the random part of the start block.
        max_basis: columns of V kept before a thick restart [default: D, no restart]; at least
            k + 2 b, and D when it comes within a block of D.
    """
    n, d = op.n_points, op.dim
    if not 1 <= k <= d:
        raise ValueError(f"k must be between 1 and D = {d}, got {k}")
    dtype, device = op.points.dtype, op.points.device
    b = min(block_size or max(1, k // 10), d)
    cap = d if max_basis is None else min(d, max(max_basis, k + 2 * b))
    if cap > d - b:  # a basis that would reach within a block of D spans it: no restarts
        cap = d
    budget = max_products if max_products is not None else (None if cap == d else 4 * d)
    v1 = torch.randn(n, d, b, dtype=dtype, device=device, generator=generator)
    if start is not None:
        k0 = min(start.shape[-1], b)
        v1[:, :, :k0] = start[:, :, :k0].to(v1)
    v1, _ = torch.linalg.qr(v1)

    sv, res = np.full((n, k), np.nan), np.full((n, k), np.nan)
    right = torch.zeros(n, d, k, dtype=dtype, device=device)
    left = torch.zeros(n, d, k, dtype=dtype, device=device)
    n_jvp, n_vjp = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    converged = np.zeros(n, dtype=bool)
    restarts = np.zeros(n, dtype=np.int64)
    eps_floor = torch.finfo(dtype).eps ** 0.5

    active = np.arange(n)
    sub = op.subset(active)
    empty = v1[:, :, :0]
    st = _State(empty, empty, empty, empty, torch.zeros(n, 0, 0, dtype=dtype, device=device), v1,
                torch.zeros(n, b, 0, dtype=dtype, device=device))
    while True:
        # extend: J v_next (after subtracting U coup^T) -> new U block; J^T of it -> next V block
        nb = st.v_next.shape[-1]
        jv_new = sub.matmat(st.v_next)
        n_jvp[active] += nb
        u_new, a = _orthonormalize(jv_new - st.u @ st.coup.transpose(1, 2), st.u)
        jtu_new = sub.rmatmat(u_new)
        n_vjp[active] += nb
        m = st.m
        grown = torch.zeros(len(active), m + nb, m + nb, dtype=dtype, device=device)
        grown[:, :m, :m] = st.t
        grown[:, :m, m:] = st.coup.transpose(1, 2)
        grown[:, m:, m:] = a
        v = torch.cat([st.v, st.v_next], 2)
        u = torch.cat([st.u, u_new], 2)
        room = d - v.shape[-1]
        v_next, b_mat = _orthonormalize(jtu_new - st.v_next @ a.transpose(1, 2), v)
        b_next = min(b, room)
        v_next, b_mat = v_next[:, :, :b_next], b_mat[:, :b_next]
        coup = torch.zeros(len(active), b_next, m + nb, dtype=dtype, device=device)
        coup[:, :, m:] = b_mat
        st = _State(v, torch.cat([st.jv, jv_new], 2), u, torch.cat([st.jtu, jtu_new], 2), grown,
                    v_next, coup)

        s, r_vec, l_vec, cert, kk = _ritz(st, k)
        floor = s[:, :1] * eps_floor
        bound = tol * torch.maximum(s[:, :kk], floor)
        done_now = (kk == k) & (cert <= bound).all(1)
        spanned = b_next == 0  # the basis spans R^D: T is J in two orthonormal bases, exact
        done_now = done_now | spanned
        spent = n_jvp[active] + n_vjp[active]
        exhausted = np.zeros(len(active), dtype=bool)
        if budget is not None:
            exhausted = spent + 2 * b > budget
        finish = done_now.cpu().numpy() | exhausted
        if finish.any():
            rows = torch.as_tensor(np.nonzero(finish)[0], device=device)
            idx = active[finish]
            sv[idx, :kk] = s[rows, :kk].cpu().numpy()
            res[idx, :kk] = cert[rows].cpu().numpy()
            t_idx = torch.as_tensor(idx, device=device)
            right[t_idx, :, :kk], left[t_idx, :, :kk] = r_vec[rows], l_vec[rows]
            converged[idx] = done_now[rows].cpu().numpy()
        if finish.all():
            break
        keep = torch.as_tensor(np.nonzero(~finish)[0], device=device)
        active = active[~finish]
        sub = op.subset(active)
        st = st.keep(keep)
        if cap < d and st.m + b > cap:
            st = _restart(st, k, b, cap)
            restarts[active] += 1
    return TopKResult(sv, res, right, left, n_jvp, n_vjp, converged, restarts)


def _restart(st: _State, k: int, b: int, cap: int) -> _State:
    """Thick restart (module docstring) keeping the l = max(k, (cap + k) // 2 - b) largest Ritz
    triples of T = X S Y^T."""
    x, s, yt = torch.linalg.svd(st.t)
    keep = min(st.m - 1, max(k, (cap + k) // 2 - b))
    xl, yl = x[:, :, :keep], yt.transpose(1, 2)[:, :, :keep]
    return _State(st.v @ yl, st.jv @ yl, st.u @ xl, st.jtu @ xl, torch.diag_embed(s[:, :keep]),
                  st.v_next, st.coup @ xl)
