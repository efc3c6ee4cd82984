"""Choose and run a Jacobian method for a model's target at one time (theory.md 4).

Methods: `jvp` (forward mode), `vjp` (reverse mode), `fd-forward`, `fd-central` (step `auto`,
`sigma` or a number; perturbations of unit-norm directions times the step), and `auto`, which
probes forward mode on one product and falls back to reverse mode, then to central differences,
when the model does not support it. The method that ran is reported. `topk` (top-k singular
values without a dense Jacobian, topk.py) is run by topk_at.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from spectra.errors import SpectraError, first_line
from spectra.jacobian.dense import DenseSpectra, dense_jacobian, dense_spectra
from spectra.jacobian.operators import AutodiffJacobian, FiniteDifferenceJacobian
from spectra.jacobian.topk import TopKResult, topk_svd
from spectra.models.base import ScoreModel
from spectra.theory.manifold import random_orthonormal

METHODS = ("auto", "jvp", "vjp", "fd-forward", "fd-central", "topk")
#: methods that build dense D x D Jacobians
DENSE_METHODS = METHODS[1:5]


def finite_difference_step(
    step: str | float, points: torch.Tensor, sigma: float, scheme: str
) -> torch.Tensor:
    """Per-point step h (N,) for unit-norm directions.

    `auto`: the round-off-optimal step for the dtype, eps^(1/2) (forward) or eps^(1/3) (central),
    times the characteristic input scale max(1, sqrt(mean(x_n^2) + sigma^2)), the typical size of
    x_t = alpha x0 + sigma eps; `sigma`: the noise scale sigma(t) ([V]'s Algorithms 1 and 2);
    a number: that step.
    """
    n = points.shape[0]
    if step == "auto":
        eps = torch.finfo(points.dtype).eps
        base = math.sqrt(eps) if scheme == "forward" else eps ** (1 / 3)
        scale = (points.reshape(n, -1).pow(2).mean(1) + sigma**2).sqrt()
        return base * torch.clamp(scale, min=1.0)
    if step == "sigma":
        value = sigma
    else:
        value = float(step)
    if not value > 0 or not math.isfinite(value):
        raise SpectraError(f"finite-difference step must be a positive number, got {step!r}")
    return torch.full((n,), value, dtype=points.dtype, device=points.device)


def probe_method(model: ScoreModel, point: torch.Tensor, t: float, target: str) -> str:
    """First of jvp, vjp, fd-central whose derivative runs on the model at one point."""
    fn = _target_fn(model, t, target)
    x = point[None]
    for method in ("jvp", "vjp"):
        op = AutodiffJacobian(fn, x, batch_size=1)
        probe = torch.zeros(1, op.dim, 1, dtype=x.dtype, device=x.device)
        probe[0, 0, 0] = 1
        try:
            (op.matmat if method == "jvp" else op.rmatmat)(probe)
            return method
        except SpectraError:
            raise
        except Exception:  # the model's ops lack this autodiff mode: try the next one
            continue
    return "fd-central"


def haar_directions(dim: int, rng: np.random.Generator) -> np.ndarray:
    """A Haar-distributed D x D orthogonal matrix (QR of a Gaussian matrix with sign fix)."""
    return random_orthonormal(dim, dim, rng)


def _target_fn(model: ScoreModel, t: float, target: str):
    return lambda x: model.target(x, t, target)


def jacobian_at(
    model: ScoreModel,
    points: torch.Tensor,
    t: float,
    target: str,
    method: str,
    step: str | float = "auto",
    directions: torch.Tensor | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Dense Jacobians (N, D, D) of `target` at `points` (N, *shape), time t, by `method`
    (not `auto`: resolve it with probe_method first). directions: None (basis) or (N, D, D)
    orthogonal matrices."""
    fn = _target_fn(model, t, target)
    if method in ("jvp", "vjp"):
        op = AutodiffJacobian(fn, points, batch_size)
        if method == "vjp" and directions is not None:
            jt = op.rmatmat(directions)  # J^T Q  =>  J = Q (J^T Q)^T
            return directions @ jt.transpose(1, 2)
        return dense_jacobian(op, directions, adjoint=method == "vjp")
    if method in ("fd-forward", "fd-central"):
        scheme = method.removeprefix("fd-")
        sigma = float(model.schedule.sigma(t))
        h = finite_difference_step(step, points, sigma, scheme)
        op = FiniteDifferenceJacobian(fn, points, batch_size, h, scheme)
        return dense_jacobian(op, directions)
    raise SpectraError(f"unknown dense method {method!r} (expected one of {', '.join(DENSE_METHODS)})")


def topk_at(
    model: ScoreModel,
    points: torch.Tensor,
    t: float,
    target: str,
    k: int,
    tol: float = 1e-6,
    batch_size: int = 256,
    block_size: int | None = None,
    start: torch.Tensor | None = None,
) -> TopKResult:
    """The k largest singular values of `target`'s Jacobian at `points` (N, *shape), time t, by
    block Golub–Kahan–Lanczos on exact JVPs and VJPs, each value with its residual certificate.
    Raises SpectraError naming t when the model produces non-finite products."""
    op = AutodiffJacobian(_target_fn(model, t, target), points, batch_size)
    result = topk_svd(op, k, tol=tol, block_size=block_size, start=start)
    if not (np.all(np.isfinite(result.singular_values)) and np.all(np.isfinite(result.residuals))):
        raise SpectraError(f"top-k products are NaN or infinite at t={t:g}")
    return result


def evaluate_checked(
    model: ScoreModel, points: torch.Tensor, t: float, target: str, offset: int = 0
) -> torch.Tensor:
    """The target at `points` (N, *shape), without gradients. Raises a one-line SpectraError
    naming t when the model fails, returns the wrong shape, or returns NaN/inf (naming the first
    bad point, numbered from `offset`)."""
    try:
        with torch.no_grad():
            value = model.target(points, t, target)
    except SpectraError:
        raise
    except Exception as exc:  # user model code
        raise SpectraError(f"model failed at t={t:g}: {type(exc).__name__}: {first_line(exc)}") from exc
    finite = torch.isfinite(value.reshape(len(points), -1)).all(1)
    if not bool(finite.all()):
        bad = offset + int(torch.nonzero(~finite)[0])
        raise SpectraError(f"model returned NaN or infinite values at t={t:g} (anchor {bad})")
    return value


def jacobian_spectra(
    model: ScoreModel,
    points: torch.Tensor,
    t: float,
    target: str,
    method: str,
    step: str | float = "auto",
    directions: torch.Tensor | None = None,
    batch_size: int = 256,
) -> DenseSpectra:
    """Spectra of the dense Jacobians built by `method` (see jacobian_at); raises SpectraError
    naming t when a Jacobian has NaN/inf entries. Does not check the model's values first."""
    jac = jacobian_at(model, points, t, target, method, step, directions, batch_size)
    if not torch.all(torch.isfinite(jac)):
        raise SpectraError(f"Jacobian has NaN or infinite entries at t={t:g} (method {method})")
    return dense_spectra(jac)


def spectra_at(
    model: ScoreModel,
    points: torch.Tensor,
    t: float,
    target: str,
    method: str,
    step: str | float = "auto",
    directions: torch.Tensor | None = None,
    batch_size: int = 256,
) -> DenseSpectra:
    """Check the model's output at `points` (evaluate_checked), build the Jacobians and return
    their spectra (jacobian_spectra)."""
    evaluate_checked(model, points, t, target)
    return jacobian_spectra(model, points, t, target, method, step, directions, batch_size)
