"""Jacobian operators: objects that only know how to multiply (after curvlinops).

An operator holds a batched function F: (B, *shape) -> (B, *out_shape) whose samples are
independent (the target of a ScoreModel at one time t, called as fn(x, *inputs): `inputs` are
tensors that carry t when F is written for compiled products) and N points x_1..x_N. It multiplies
the N Jacobians J_n = dF/dx (x_n) (each F x D, D = prod(shape), F = prod(out_shape); square,
F = D, for the score, denoiser and eps; rectangular for an internal feature) with blocks of vectors:

    matmat(V):  V (N, D, k) -> (N, F, k),   out[n] = J_n V[n]
    rmatmat(U): U (N, F, k) -> (N, D, k),   out[n] = J_n^T U[n]

Products are computed inside `around()` (a context manager factory: safety.entered for the
forward-AD-safe context), in chunks of at most `batch_size` (point, vector) pairs so memory stays
bounded; the chunk layout depends only on batch_size and k, so results do not depend on N.
Algorithms (dense spectra, top-k) take operators and never look inside them.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar

import numpy as np
import torch
from torch.func import jvp, vjp, vmap

from spectra.errors import first_line

BatchedFn = Callable[..., torch.Tensor]

#: called with the number of products each chunk took (progress inside a Jacobian), or None
_on_products: ContextVar[Callable[[int], object] | None] = ContextVar("on_products", default=None)


@contextlib.contextmanager
def reporting(callback: Callable[[int], object]) -> Iterator[None]:
    """Within the block, every operator calls callback(n) after each chunk of n products."""
    token = _on_products.set(callback)
    try:
        yield
    finally:
        _on_products.reset(token)


class JacobianOperator(ABC):
    """N Jacobians of F at `points` (N, *shape), applied to blocks of vectors."""

    #: which derivative path the products use (recorded in run files)
    path: str = ""

    def __init__(self, fn: BatchedFn, points: torch.Tensor, batch_size: int,
                 inputs: tuple[torch.Tensor, ...] = (),
                 around: Callable[[], AbstractContextManager] = nullcontext,
                 out_shape: tuple[int, ...] | None = None) -> None:
        self.fn = fn
        self.inputs = inputs
        self.around = around
        self.points = points
        self.shape = tuple(points.shape[1:])
        self.dim = points[0].numel()
        #: F's output shape per sample (the input's unless given) and its size F
        self.out_shape = self.shape if out_shape is None else tuple(out_shape)
        self.out_dim = math.prod(self.out_shape)
        self.batch_size = max(1, int(batch_size))
        self.n_products = 0

    def size_in(self, product: str) -> int:
        """The length of the vectors `product` ("matmat" or "rmatmat") takes: D or F."""
        return self.dim if product == "matmat" else self.out_dim

    def subset(self, idx: np.ndarray) -> JacobianOperator:
        """The same operator restricted to the points self.points[idx]."""
        new = copy.copy(self)
        new.points = self.points[torch.as_tensor(idx, device=self.points.device)]
        new.n_products = 0
        return new

    @property
    def n_points(self) -> int:
        return self.points.shape[0]

    def _chunks(self, k: int) -> list[tuple[slice, slice]]:
        """Rectangular (points, vectors) chunks of at most batch_size pairs."""
        if k >= self.batch_size:
            vec = [slice(j, min(j + self.batch_size, k)) for j in range(0, k, self.batch_size)]
            return [(slice(n, n + 1), s) for n in range(self.n_points) for s in vec]
        per = max(1, self.batch_size // k)
        return [(slice(n, min(n + per, self.n_points)), slice(0, k))
                for n in range(0, self.n_points, per)]

    @torch.no_grad()
    def _apply(self, v: torch.Tensor, block: Callable, shape_in: tuple[int, ...], dim_out: int
               ) -> torch.Tensor:
        """Products chunk by chunk, of vectors of shape `shape_in` into vectors of size
        `dim_out`. Under no_grad: the torch.func transforms inside still differentiate, but no
        autograd graph through the model's parameters is recorded (it would keep every chunk's
        activations alive)."""
        n, d, k = v.shape
        if n != self.n_points or d != math.prod(shape_in):
            raise ValueError(f"expected vectors of shape ({self.n_points}, {math.prod(shape_in)}, k)")
        vt = v.transpose(1, 2)  # (N, k, D): one row per vector
        out = vt.new_empty((n, k, dim_out))
        report = _on_products.get()
        with self.around():
            for pts, vec in self._chunks(k):
                rows = vt[pts, vec]
                rows = rows.reshape(rows.shape[0], rows.shape[1], *shape_in)
                out[pts, vec] = block(pts, rows).reshape(rows.shape[0], rows.shape[1], dim_out)
                self.n_products += rows.shape[0] * rows.shape[1]
                if report is not None:
                    report(rows.shape[0] * rows.shape[1])
        return out.transpose(1, 2)

    def _single(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x[None], *self.inputs)[0]

    def _batched(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x, *self.inputs)

    def matmat(self, v: torch.Tensor) -> torch.Tensor:
        """J_n V[n] for every point n; V of shape (N, D, k), the result (N, F, k)."""
        return self._apply(v, self._jv_block, self.shape, self.out_dim)

    def rmatmat(self, u: torch.Tensor) -> torch.Tensor:
        """J_n^T U[n] for every point n; U of shape (N, F, k), the result (N, D, k)."""
        return self._apply(u, self._vjp_block, self.out_shape, self.dim)

    @abstractmethod
    def _jv_block(self, pts: slice, v: torch.Tensor) -> torch.Tensor:
        """Points self.points[pts] (n of them), v (n, k, *shape) -> J v (n, k, *out_shape)."""

    def _vjp_block(self, pts: slice, u: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} has no adjoint product")


def _point_jvp(fn: BatchedFn, x: torch.Tensor, v: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
    """J(x) v for one point x (*shape) and vectors v (k, *shape): jvp under one vmap (a single
    vector without it: vmap's batching of every op costs a small network 10-20%). Eager products
    vmap it over the points of a chunk; compiled ones call it point by point."""
    def single(w: torch.Tensor) -> torch.Tensor:
        return jvp(lambda y: fn(y[None], *inputs)[0], (x,), (w,))[1]

    return single(v[0])[None] if v.shape[0] == 1 else vmap(single)(v)


#: graphs torch.compile keeps for _point_jvp (torch's default, 8 per function, is reached by a
#: process that estimates a few models, targets or dtypes; each needs its own graph)
GRAPH_LIMIT = 64


def _graph_limit() -> AbstractContextManager:
    """torch.compile's limit of graphs per function raised to GRAPH_LIMIT while inside."""
    import torch._dynamo.config as config

    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    return config.patch(**{name: GRAPH_LIMIT})


@functools.cache
def _compiled_point_jvp() -> Callable[..., torch.Tensor]:
    """_point_jvp through torch.compile: whole graphs with static shapes, one per chunk width
    (and per model, target and dtype), reused across points and times since t arrives as
    inputs."""
    return torch.compile(_point_jvp, fullgraph=True, dynamic=False)


class CompileFallbackWarning(RuntimeWarning):
    """Compiled products failed where the probe's had run: eager products take over. Filtered
    into an error while a path is probed, so that a probe never passes on eager products."""


def dual_level_open() -> bool:
    """Whether a forward-AD dual level is open in torch's process-wide state (no public API
    tells: try to enter one)."""
    try:
        level = torch._C._enter_dual_level()
    except RuntimeError:
        return True
    torch._C._exit_dual_level(level=level)
    return False


def close_leaked_dual_level() -> None:
    """Close the dual level (level 0) that a failed torch.compile of forward mode can leave open
    in torch's C++ state (seen with torch 2.13 after two failed compiles in one process), after
    which every jvp raises "Nested forward mode AD is not supported". Call only when no level
    was open before the compile: it cannot tell a leaked level from one a caller opened."""
    if dual_level_open():
        torch._C._exit_dual_level(level=0)


def _is_compile_error(exc: Exception) -> bool:
    """Whether exc comes from torch.compile itself (tracing, guards, the recompile limit) rather
    than from the model, which eager products would raise again."""
    from torch._dynamo import exc as dynamo

    # the recompile limit's error is no TorchDynamoException in torch 2.13
    limit = getattr(dynamo, "FailOnRecompileLimitHit", dynamo.TorchDynamoException)
    return isinstance(exc, (dynamo.TorchDynamoException, limit))


class AutodiffJacobian(JacobianOperator):
    """Exact products: forward mode (torch.func.jvp) for J v, reverse mode (torch.func.vjp) for
    J^T u, both under vmap over points and vectors; each point's primal pass is shared by its
    vectors; a chunk of one point keeps its pullback (up to KEPT_PULLBACKS points) for every later
    chunk and call, so each J^T u after the first costs one backward pass (as torch.func.jacrev's
    chunks and a Lanczos iteration's repeated products share it).

    compiled=True computes J v with torch.compile, one point at a time (a compiled vmap over
    points fails in torch: pytorch issues 151196 and 160508), from fn(x, *inputs) with t in the
    inputs, so that one graph serves every time. It removes the CPU cost of dispatching forward
    mode op by op, which bounds a GPU's speed at small D (benchmarks/jvp_overhead.py). Should
    compiling fail after the path probe succeeded (a new chunk width that does not trace, or
    torch's limit of graphs per function in a long-lived process), this operator warns and takes
    eager products, equal to rounding."""

    path = "jvp"

    def __init__(self, fn: BatchedFn, points: torch.Tensor, batch_size: int,
                 inputs: tuple[torch.Tensor, ...] = (),
                 around: Callable[[], AbstractContextManager] = nullcontext,
                 compiled: bool = False, out_shape: tuple[int, ...] | None = None) -> None:
        super().__init__(fn, points, batch_size, inputs, around, out_shape)
        self.compiled = compiled

    def _jv_block(self, pts: slice, v: torch.Tensor) -> torch.Tensor:
        if self.compiled:
            block = _compiled_point_jvp()
            level_was_open = dual_level_open()
            try:
                with _graph_limit():
                    return torch.stack([block(self.fn, xi.contiguous(), vi.contiguous(), *self.inputs)
                                        for xi, vi in zip(self.points[pts], v, strict=True)])
            except Exception as exc:
                if not _is_compile_error(exc):
                    raise
                if not level_was_open:
                    close_leaked_dual_level()
                warnings.warn(f"{type(exc).__name__}: {first_line(exc)}", CompileFallbackWarning,
                              stacklevel=2)
                self.compiled = False
        return _over_points(lambda xi, vi: _point_jvp(self.fn, xi, vi, *self.inputs), self.points[pts], v)

    #: pullbacks kept for chunks of one point, by point index (a point's primal pass, done once)
    KEPT_PULLBACKS = 8

    def subset(self, idx: np.ndarray) -> AutodiffJacobian:
        new = super().subset(idx)
        new._pullbacks = {}
        return new

    def _vjp_block(self, pts: slice, u: torch.Tensor) -> torch.Tensor:
        if pts.stop - pts.start == 1:  # one point: its primal pass once, for every chunk and call
            kept = self.__dict__.setdefault("_pullbacks", {})
            if pts.start not in kept:
                if len(kept) >= self.KEPT_PULLBACKS:  # each holds a primal pass's activations
                    kept.clear()
                kept[pts.start] = vjp(self._single, self.points[pts.start])[1]
            pullback = kept[pts.start]
            return (pullback(u[0, 0])[0][None] if u.shape[1] == 1 else vmap(pullback)(u[0])[0])[None]

        def per_point(xi: torch.Tensor, ui: torch.Tensor) -> torch.Tensor:
            _, pullback = vjp(self._single, xi)
            return vmap(pullback)(ui)[0]

        return vmap(per_point)(self.points[pts], u)


def _over_points(per_point: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], points: torch.Tensor,
                 vectors: torch.Tensor) -> torch.Tensor:
    """per_point(x_n, vectors[n]) for every point: under vmap, or called directly for a chunk of
    one point, where an outer vmap would only add its dispatch to every op of the model (10-20%
    of a small network's products, benchmarks/peers.py)."""
    if points.shape[0] == 1:
        return per_point(points[0], vectors[0])[None]
    return vmap(per_point)(points, vectors)


class AutogradJacobian(JacobianOperator):
    """Exact products with classic torch.autograd on the model's own batch dimension, for models
    that torch.func cannot transform (autograd.Functions without vmap or jvp rules, ops without
    forward-mode formulas). Each (point, vector) pair is one sample of a batched call:
    J^T u is one backward pass; J v differentiates that pullback, which is linear in its
    cotangent w, once more: J v = d/dw <J^T w, v> (double backward). Every product re-runs the
    primal pass, so this costs about 2x (J^T u) and 3x (J v) a forward pass per vector."""

    path = "autograd"

    def _replicated(self, pts: slice, k: int) -> torch.Tensor:
        x = self.points[pts]
        rows = x[:, None].expand(x.shape[0], k, *self.shape).reshape(-1, *self.shape)
        return rows.detach().clone().requires_grad_(True)

    def _vjp_block(self, pts: slice, u: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = self._replicated(pts, u.shape[1])
            y = self._batched(x)
            (grad,) = torch.autograd.grad(y, x, u.reshape(y.shape))
        return grad.reshape(u.shape[0], u.shape[1], *self.shape)

    def _jv_block(self, pts: slice, v: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():
            x = self._replicated(pts, v.shape[1])
            y = self._batched(x)
            w = torch.zeros_like(y, requires_grad=True)
            (pullback,) = torch.autograd.grad(y, x, w, create_graph=True)
            (jv,) = torch.autograd.grad(pullback, w, v.reshape(x.shape))
        return jv.reshape(v.shape[0], v.shape[1], *self.out_shape)


class AutogradRowsJacobian(JacobianOperator):
    """Exact products with classic torch.autograd, one vector at a time: per point one primal
    pass with its graph kept, then one backward pass per vector (J^T u; the loop of
    torch.autograd.functional.jacobian with vectorize=False), or per vector one backward pass of
    the pullback, which is linear in its cotangent w: J v = d/dw <J^T w, v> (double backward,
    the pullback's graph built once per point). Single-sample passes keep the model's kernels
    at batch 1, where a CPU runs conv nets fastest and forward-mode rules (GroupNorm) are not
    needed; the chunk size does not matter here."""

    path = "autograd-rows"

    def _graph(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x[None].detach().clone().requires_grad_(True)
        return x, self._batched(x)

    def _vjp_block(self, pts: slice, u: torch.Tensor) -> torch.Tensor:
        out = u.new_empty((u.shape[0], u.shape[1], *self.shape))
        with torch.enable_grad():
            for i, xi in enumerate(self.points[pts]):
                x, y = self._graph(xi)
                for j in range(u.shape[1]):
                    out[i, j] = torch.autograd.grad(y, x, u[i, j][None], retain_graph=True)[0][0]
        return out

    def _jv_block(self, pts: slice, v: torch.Tensor) -> torch.Tensor:
        out = v.new_empty((v.shape[0], v.shape[1], *self.out_shape))
        with torch.enable_grad():
            for i, xi in enumerate(self.points[pts]):
                x, y = self._graph(xi)
                w = torch.zeros_like(y, requires_grad=True)
                (pullback,) = torch.autograd.grad(y, x, w, create_graph=True)
                for j in range(v.shape[1]):
                    out[i, j] = torch.autograd.grad(pullback, w, v[i, j][None], retain_graph=True)[0][0]
        return out


class FiniteDifferenceJacobian(JacobianOperator):
    """J v by finite differences with a per-point step h (N,) (theory.md 4):
    forward (F(x + h v) - F(x)) / h, central (F(x + h v) - F(x - h v)) / (2 h).
    Round-off limits relative accuracy to about sqrt(eps) (forward) and eps^(2/3) (central)."""

    def __init__(
        self,
        fn: BatchedFn,
        points: torch.Tensor,
        batch_size: int,
        step: torch.Tensor,
        scheme: str = "central",
        out_shape: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__(fn, points, batch_size, out_shape=out_shape)
        if scheme not in ("forward", "central"):
            raise ValueError(f"unknown finite-difference scheme {scheme!r}")
        self.scheme = scheme
        self.path = f"fd-{scheme}"
        self.step = step.to(points)
        self._base: torch.Tensor | None = None

    def _jv_block(self, pts: slice, v: torch.Tensor) -> torch.Tensor:
        n, k = v.shape[:2]
        x = self.points[pts]
        h = self.step[pts].reshape(n, 1, *([1] * len(self.shape)))
        flat_h = h.reshape(n, 1, 1)
        flat = (n, k, self.out_dim)
        plus = self._batched((x[:, None] + h * v).reshape(n * k, *self.shape)).reshape(flat)
        if self.scheme == "central":
            minus = self._batched((x[:, None] - h * v).reshape(n * k, *self.shape)).reshape(flat)
            return (plus - minus) / (2 * flat_h)
        if self._base is None:
            self._base = self._batched(self.points).reshape(self.n_points, self.out_dim)
        return (plus - self._base[pts, None]) / flat_h

    def subset(self, idx: np.ndarray) -> FiniteDifferenceJacobian:
        new = super().subset(idx)
        new.step = self.step[torch.as_tensor(idx, device=self.step.device)]
        new._base = None
        return new
