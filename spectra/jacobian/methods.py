"""Choose and run a Jacobian method for a model's target at one time (theory.md 4).

Methods: `jvp` (forward mode), `vjp` (reverse mode), `fd-forward`, `fd-central` (step `auto`,
`sigma` or a number; perturbations of unit-norm directions times the step), and `auto`, the
fastest exact route: every autodiff path that runs on the model is timed (spectra.jacobian.tuning)
and the fastest kept, or central differences when none runs. `topk` (top-k singular values
without a dense Jacobian, topk.py) is run by topk_at.

Autodiff products run on an `AutodiffPath`: an engine (torch.func transforms under vmap; classic
torch.autograd on the model's batch dimension, for models torch.func cannot transform; or
torch.autograd one vector at a time, `torch.autograd-rows`) and a context (as it is, or
safety.forward_ad_safe: math attention, group_norm by definition). probe_path tries them in
order of preference on one product and reports every failure; runnable_paths returns every one
that runs, for auto to time. The path that ran is recorded in the run file.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import numpy as np
import torch

from spectra.errors import SpectraError, first_line
from spectra.jacobian.dense import DenseSpectra, dense_jacobian, dense_spectra
from spectra.jacobian.operators import (
    AutodiffJacobian,
    AutogradJacobian,
    AutogradRowsJacobian,
    CompileFallbackWarning,
    FiniteDifferenceJacobian,
    JacobianOperator,
)
from spectra.jacobian.safety import entered
from spectra.jacobian.topk import TopKResult, topk_svd
from spectra.models.base import ScoreModel
from spectra.names import COMPILABLE, DENSE_METHODS, FEATURE_PREFIX
from spectra.theory.manifold import random_orthonormal


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


ENGINES = ("torch.func", "torch.autograd", "torch.autograd-rows", "none")
_OPERATORS = {"torch.func": AutodiffJacobian, "torch.autograd": AutogradJacobian,
              "torch.autograd-rows": AutogradRowsJacobian}


@dataclass
class AutodiffPath:
    """How products are taken: `method` (jvp | vjp | topk | fd-forward | fd-central), `engine`
    (ENGINES; "none" for finite differences), `context` (safety.CONTEXTS), `compiled` (J v by
    torch.compile, operators.AutodiffJacobian), `tried`: the paths that failed before it, each
    {method, engine, context, compiled, error}, and `timings`: what was measured to choose it
    (spectra.jacobian.tuning: seconds per product of each path auto timed, by label)."""

    method: str
    engine: str = "torch.func"
    context: str = "default"
    tried: list[dict] = field(default_factory=list)
    compiled: bool = False
    timings: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """method/engine/context, with /compiled when it is."""
        return "/".join([self.method, self.engine, self.context] + (["compiled"] if self.compiled else []))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> AutodiffPath:
        return cls(d["method"], d.get("engine", "torch.func"), d.get("context", "default"),
                   list(d.get("tried", [])), bool(d.get("compiled", False)), dict(d.get("timings", {})))


#: the operator products each method takes: J V (matmat), J^T U (rmatmat) or both
PRODUCTS = {"jvp": ("matmat",), "vjp": ("rmatmat",), "topk": ("matmat", "rmatmat"),
            "fd-forward": ("matmat",), "fd-central": ("matmat",)}

#: candidate (method, engine, context) in order of preference, per requested method
_CANDIDATES = {
    "jvp": [("jvp", "torch.func", "default"), ("jvp", "torch.func", "forward-ad-safe")],
    "vjp": [("vjp", e, c) for e in ("torch.func", "torch.autograd")
            for c in ("default", "forward-ad-safe")],
    "topk": [("topk", e, c) for e in ("torch.func", "torch.autograd")
             for c in ("default", "forward-ad-safe")],
}
_CANDIDATES["vjp"].append(("vjp", "torch.autograd-rows", "default"))
_CANDIDATES["auto"] = _CANDIDATES["jvp"] + _CANDIDATES["vjp"]


def make_operator(
    model: ScoreModel, points: torch.Tensor, t: float, target: str, path: AutodiffPath,
    batch_size: int,
) -> JacobianOperator:
    """The exact-product operator of `target` at `points` (N, *shape), time t, on `path`, whose
    products run inside path.context; on a compiled path the target is model.target_from with t
    passed as model.time_inputs."""
    around = partial(entered, path.context)
    if path.compiled:
        fn, inputs = partial(model.target_from, target=target), model.time_inputs(t, points)
        return AutodiffJacobian(fn, points, batch_size, inputs, around, compiled=True)
    return _OPERATORS[path.engine](_target_fn(model, t, target), points, batch_size, around=around,
                                   out_shape=output_shape(model, points, t, target))


def output_shape(model: ScoreModel, points: torch.Tensor, t: float, target: str) -> tuple[int, ...] | None:
    """The shape of one sample of `target`'s value: None (the input's) for the score, denoiser and
    eps; a feature's own shape, from one evaluation at the first point."""
    if not target.startswith(FEATURE_PREFIX):
        return None
    with torch.no_grad():
        return tuple(model.target(points[:1], t, target).shape[1:])


def runnable_paths(model: ScoreModel, point: torch.Tensor, t: float, target: str, method: str,
                   compile: bool = False, every: bool = True) -> tuple[list[AutodiffPath], list[dict]]:
    """The paths on which `method`'s products run at one point (shape *shape), in order of
    preference, each probed on one product, and the failures ({method, engine, context,
    compiled, error}). For jvp: forward mode; for vjp: reverse mode; for topk: both; for auto:
    forward, then reverse mode. With `compile` (methods COMPILABLE, models with time_inputs),
    compiled forward mode comes first, in the forward-AD-safe context. `every`: one path per
    (method, engine, compiled) (its first context that runs); else only the first path."""
    x = point[None]
    candidates = [(*c, False) for c in _CANDIDATES[method]]
    if compile and method in COMPILABLE and model.time_inputs(t, x) is not None:
        # one compiled try, in the context where GroupNorm and attention trace (torch's own
        # forward-mode group_norm fails under a compiled vmap); after a failed compile torch can
        # fail the next one, so a second try would tell nothing
        candidates.insert(0, ("topk" if method == "topk" else "jvp", "torch.func", "forward-ad-safe", True))
    found: list[AutodiffPath] = []
    tried: list[dict] = []
    for name, engine, context, compiled in candidates:
        if any((p.method, p.engine, p.compiled) == (name, engine, compiled) for p in found):
            continue
        path = AutodiffPath(name, engine, context, compiled=compiled)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", CompileFallbackWarning)
                # one point alone, and two in one chunk: a sweep's chunks take either form
                for n in (1, 2):
                    points = x.expand(n, *x.shape[1:]).contiguous()
                    op = make_operator(model, points, t, target, path, batch_size=n)
                    for product in PRODUCTS[name]:
                        probe = torch.zeros(n, op.size_in(product), 1, dtype=x.dtype, device=x.device)
                        probe[:, 0, 0] = 1
                        getattr(op, product)(probe)
        except SpectraError:
            raise
        except Exception as exc:  # the model's ops lack this autodiff mode: try the next path
            tried.append({"method": name, "engine": engine, "context": context,
                          "compiled": compiled, "error": f"{type(exc).__name__}: {first_line(exc)}"})
            continue
        found.append(path)
        if not every:
            break
    for path in found:
        path.tried = list(tried)
    return found, tried


def probe_path(model: ScoreModel, point: torch.Tensor, t: float, target: str, method: str,
               compile: bool = False) -> AutodiffPath:
    """The first path on which `method`'s products run at one point (runnable_paths); for auto,
    central differences when none does (auto's measured choice: tuning.fastest_path). Raises
    SpectraError listing the failures when none runs."""
    if method in ("fd-forward", "fd-central"):
        return AutodiffPath(method, "none")
    found, tried = runnable_paths(model, point, t, target, method, compile, every=False)
    if found:
        return found[0]
    if method == "auto":
        return AutodiffPath("fd-central", "none", tried=tried)
    last = tried[-1]["error"] if tried else ""
    raise SpectraError(
        f"method {method} cannot differentiate this model on any path ({len(tried)} tried; last: "
        f"{last}); try --method auto or fd-central"
    )


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
    path: AutodiffPath | None = None,
) -> torch.Tensor:
    """Dense Jacobians (N, F, D) of `target` at `points` (N, *shape), time t, by `method`
    (not `auto`: resolve it with probe_path first), on `path` (default: torch.func, as it is);
    F = D but for a feature target. directions: None (basis) or (N, D, D) orthogonal matrices
    (square Jacobians only)."""
    if method not in DENSE_METHODS:
        raise SpectraError(f"unknown dense method {method!r} (expected one of {', '.join(DENSE_METHODS)})")
    path = AutodiffPath(method) if path is None else replace(path, method=method)
    op = method_operator(model, points, t, target, path, batch_size, step)
    if method == "vjp" and directions is not None:
        jt = op.rmatmat(directions)  # J^T Q  =>  J = Q (J^T Q)^T
        return directions @ jt.transpose(1, 2)
    return dense_jacobian(op, directions, adjoint=method == "vjp")


def method_operator(
    model: ScoreModel, points: torch.Tensor, t: float, target: str, path: AutodiffPath,
    batch_size: int, step: str | float = "auto",
) -> JacobianOperator:
    """The operator whose products `path.method` takes: finite differences of `target` with the
    step `step` (finite_difference_step) for fd-forward and fd-central, else exact products
    (make_operator)."""
    if path.method in ("fd-forward", "fd-central"):
        scheme = path.method.removeprefix("fd-")
        h = finite_difference_step(step, points, float(model.schedule.sigma(t)), scheme)
        return FiniteDifferenceJacobian(_target_fn(model, t, target), points, batch_size, h, scheme,
                                        output_shape(model, points, t, target))
    return make_operator(model, points, t, target, path, batch_size)


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
    path: AutodiffPath | None = None,
    max_basis: int | None = None,
) -> TopKResult:
    """The k largest singular values of `target`'s Jacobian at `points` (N, *shape), time t, by
    block Golub–Kahan–Lanczos on exact JVPs and VJPs (on `path`), thick-restarted at `max_basis`
    columns, each value with its residual certificate (topk.topk_svd). Raises SpectraError
    naming t when the model produces non-finite products."""
    op = make_operator(model, points, t, target, path or AutodiffPath("topk"), batch_size)
    result = topk_svd(op, k, tol=tol, block_size=block_size, start=start, max_basis=max_basis)
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
    path: AutodiffPath | None = None,
    n_vectors: int = 0,
) -> DenseSpectra:
    """Spectra of the dense Jacobians built by `method` (see jacobian_at), with the top
    `n_vectors` singular vector pairs; raises SpectraError naming t when a Jacobian has NaN/inf
    entries. Does not check the model's values first."""
    jac = jacobian_at(model, points, t, target, method, step, directions, batch_size, path)
    if not torch.all(torch.isfinite(jac)):
        raise SpectraError(f"Jacobian has NaN or infinite entries at t={t:g} (method {method})")
    return dense_spectra(jac, n_vectors, same_space=not target.startswith(FEATURE_PREFIX))


def spectra_at(
    model: ScoreModel,
    points: torch.Tensor,
    t: float,
    target: str,
    method: str,
    step: str | float = "auto",
    directions: torch.Tensor | None = None,
    batch_size: int = 256,
    path: AutodiffPath | None = None,
) -> DenseSpectra:
    """Check the model's output at `points` (evaluate_checked), build the Jacobians and return
    their spectra (jacobian_spectra)."""
    evaluate_checked(model, points, t, target)
    return jacobian_spectra(model, points, t, target, method, step, directions, batch_size, path)
