"""The sweep's one loop, with a strategy per method: dense spectra or top-k.

The loop takes this rank's anchor chunks in order and, within a chunk, the times in order: it
builds the evaluation points, asks the strategy for the values of every anchor of the chunk,
and writes those whose `done` is not set (values, flush, then `done`: spectra.store). A chunk
whose pairs are all done is skipped. The dense strategy computes a time only when some pair of it
is left; top-k replays every time of an unfinished chunk, since the right singular vectors at
one time start the next time's block, so a resumed chunk's values equal an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from spectra import distributed, store
from spectra.errors import SpectraError, first_line
from spectra.jacobian.dense import sign_fixed
from spectra.jacobian.methods import jacobian_spectra, topk_at
from spectra.jacobian.operators import CompileFallbackWarning, reporting
from spectra.sweep.inputs import SEED_DIRECTIONS, directions, points_at, rng
from spectra.sweep.options import EstimateOptions
from spectra.sweep.setup import Setup, per_chunk, topk_tolerance


class Dense:
    """Singular values, symmetric-part eigenvalues and asymmetry of dense Jacobians (by the
    recorded path's method), computed only at times where some pair of the chunk is left."""

    replays = False
    counts_products = True
    failure = "(try --method auto)"

    def __init__(self, setup: Setup, opts: EstimateOptions) -> None:
        self.setup, self.opts = setup, opts

    def begin(self, idx: np.ndarray) -> None:
        """A new chunk of anchors `idx` (dense Jacobians carry nothing from one to the next)."""

    def values(self, points: torch.Tensor, t: float, ti: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        s, opts = self.setup, self.opts
        dirs = directions(opts, idx, ti, s.dim, s.x0_t.dtype, s.x0_t.device)
        result = jacobian_spectra(s.model, points, t, opts.target, s.path.method, s.step, dirs,
                                  s.batch_size, s.path, opts.save_vectors)
        values = {"singular_values": result.singular_values[:, : s.k],
                  "sym_eigenvalues": result.sym_eigenvalues[:, : s.k], "asymmetry": result.asymmetry}
        if opts.save_vectors:
            values.update(right_vectors=result.right_vectors, left_vectors=result.left_vectors)
        return values

    def written(self, todo: np.ndarray) -> None:
        """The rows `todo` of the last values were written."""

    def finish(self) -> None:
        """Nothing to report."""


class TopK:
    """The k largest singular values by block Lanczos bidiagonalization with their certificates
    (setup's block size and basis). Each time's start block is keyed by (seed, anchor, time); from
    the second time of a chunk on, it is the previous time's k right singular vectors mixed by
    that random (k x b) matrix, so a block smaller than k still starts inside the subspace the
    values came from. Warns at the end about Jacobians that did not converge."""

    replays = True
    counts_products = False
    failure = "(top-k needs JVPs and VJPs)"

    def __init__(self, setup: Setup, opts: EstimateOptions) -> None:
        self.setup, self.opts = setup, opts
        self.tol = topk_tolerance(opts.tol, setup.x0_t.dtype)
        self.warm: torch.Tensor | None = None
        self.converged = np.zeros(0, dtype=bool)
        self.unconverged = 0

    def begin(self, idx: np.ndarray) -> None:
        self.warm = None

    def values(self, points: torch.Tensor, t: float, ti: int, idx: np.ndarray) -> dict[str, np.ndarray]:
        s, x0 = self.setup, self.setup.x0_t
        rows = s.dim if self.warm is None else self.warm.shape[-1]
        mix = np.stack([rng(self.opts.seed, SEED_DIRECTIONS, int(n), ti).standard_normal((rows, s.block))
                        for n in idx])
        start = torch.as_tensor(mix, dtype=x0.dtype, device=x0.device)
        if self.warm is not None:
            start = self.warm @ start
        res = topk_at(s.model, points, t, self.opts.target, s.k, self.tol, s.batch_size,
                      block_size=s.block, start=start, path=s.path, max_basis=s.max_basis)
        self.warm, self.converged = res.right_vectors, res.converged
        values = {"singular_values": res.singular_values, "residuals": res.residuals,
                  "jvp_products": res.n_jvp.astype(np.float64), "vjp_products": res.n_vjp.astype(np.float64)}
        kept = self.opts.save_vectors
        if kept:
            right, left = sign_fixed(res.right_vectors[:, :, :kept].transpose(1, 2),
                                     res.left_vectors[:, :, :kept].transpose(1, 2))
            values.update(right_vectors=right.cpu().numpy(), left_vectors=left.cpu().numpy())
        return values

    def written(self, todo: np.ndarray) -> None:
        """Count the unconverged Jacobians among the rows written (a replayed time counts once)."""
        self.unconverged += int((~self.converged[todo]).sum())

    def finish(self) -> None:
        if self.unconverged:
            warnings.warn(f"{self.unconverged} top-k Jacobians did not reach tol {self.tol:g} within the "
                          "budget of 4D products; their residuals say how far they got", stacklevel=4)


def oom_message(t: float, batch_size: int) -> str:
    return (f"out of GPU memory at t={t:g} with --batch-size {batch_size}: resume with "
            "--resume and a smaller --batch-size (what is done is kept)")


def _loop(target: Path, setup: Setup, opts: EstimateOptions, strategy: Dense | TopK, progress: bool,
          sweep: distributed.Sweep) -> None:
    """This rank's chunks into `target` (module docstring)."""
    n, chunk = len(setup.x0), per_chunk(setup)
    with store.TrajectoryWriter(target) as writer:
        done = writer.done
        bar = _progress(setup, done, progress)
        for start in range(0, n, chunk):
            idx = np.arange(start, min(start + chunk, n))
            if not sweep.owns(start // chunk) or done[idx].all():
                continue
            strategy.begin(idx)
            for ti, t in enumerate(setup.times):
                todo = ~done[idx, ti]
                if not (todo.any() or strategy.replays):
                    continue
                points = points_at(setup.x0_t[idx], opts, float(setup.alpha[ti]), float(setup.sigma[ti]),
                                   idx, ti)
                tick = time.perf_counter()
                with reporting(bar.update) if strategy.counts_products else contextlib.nullcontext():
                    values = _values(strategy, points, float(t), ti, idx)
                seconds = (time.perf_counter() - tick) / len(idx)
                if not todo.any():
                    continue
                kept: dict[str, Any] = {name: v[todo] for name, v in values.items()}
                kept["seconds"] = np.full(int(todo.sum()), seconds)
                saved = points[torch.as_tensor(todo, device=points.device)].cpu().numpy() \
                    if opts.save_points else None
                writer.write(idx[todo], ti, kept, saved)
                strategy.written(todo)
                if not strategy.counts_products:
                    bar.update(int(todo.sum()))
        bar.close()
        writer.finish()
    strategy.finish()


def _progress(setup: Setup, done: np.ndarray, shown: bool) -> tqdm:
    """The progress bar: in products, with tqdm's rate and ETA, for dense methods (D per Jacobian,
    so a long Jacobian shows progress inside it); in Jacobians for top-k, whose products are not
    known in advance."""
    if setup.path.method == "topk":
        return tqdm(total=done.size, initial=int(done.sum()), disable=not shown or None, unit="jac",
                    desc="spectra topk", leave=False)
    return tqdm(total=done.size * setup.dim, initial=int(done.sum()) * setup.dim, disable=not shown or None,
                unit="product", unit_scale=True, desc="spectra", leave=False)


def _values(strategy: Dense | TopK, points: torch.Tensor, t: float, ti: int, idx: np.ndarray
            ) -> dict[str, np.ndarray]:
    """The strategy's values at one time, with failures of the model turned into one line (the
    preflight checked the model's values; only its Jacobians remain)."""
    try:
        return strategy.values(points, t, ti, idx)
    except SpectraError:
        raise
    except torch.cuda.OutOfMemoryError:
        raise SpectraError(oom_message(t, strategy.setup.batch_size)) from None
    except Exception as exc:  # the model lacks forward- or reverse-mode AD
        method = strategy.setup.path.method
        raise SpectraError(f"method {method} failed on the model at t={t:g}: {type(exc).__name__}: "
                           f"{first_line(exc)} {strategy.failure}") from exc


def run(target: Path, setup: Setup, opts: EstimateOptions, progress: bool, sweep: distributed.Sweep) -> None:
    """The products of the run into `target`. Compiled products that fell back to eager ones
    during the sweep (operators.CompileFallbackWarning, shown as every warning is) are recorded
    in the file's `autodiff` as `fallback`, the first warning's text."""
    strategy = (TopK if setup.path.method == "topk" else Dense)(setup, opts)
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CompileFallbackWarning)
            _loop(target, setup, opts, strategy, progress, sweep)
    finally:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fallback = next((str(w.message) for w in caught if w.category is CompileFallbackWarning), None)
    if fallback is not None:
        with store.TrajectoryWriter(target) as writer:
            writer.set_attrs(autodiff={**setup.path.to_dict(), "fallback": fallback})
