"""What a sweep evaluates at: the time grid, the anchors, the evaluation points and the
directions, every random draw keyed by (seed, purpose, anchor[, time]) with numpy's SeedSequence."""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

from spectra.arrays import load_array
from spectra.errors import SpectraError
from spectra.jacobian.methods import haar_directions
from spectra.limits import require_memory
from spectra.models.base import ScoreModel
from spectra.schedules import Schedule
from spectra.sweep.options import DEFAULT_N_SAMPLES, EstimateOptions

SEED_ANCHORS, SEED_NOISE, SEED_DIRECTIONS = 0, 1, 2


def time_grid(schedule: Schedule, opts: EstimateOptions) -> np.ndarray:
    """The validated, sorted time grid: --times, or n_times in [t_min, t_max] log-spaced in tau
    (the default, --spacing tau: Schedule.tau_grid, integer steps for ddpm) or in t (--spacing t,
    rounded to integers for integer-time schedules)."""
    if opts.times is not None:
        if opts.t_min is not None or opts.t_max is not None:
            raise SpectraError("give either --times or --t-min/--t-max, not both")
        if len(opts.times) == 0:
            raise SpectraError("--times is empty: give at least one time")
        times = schedule.validate(opts.times)
    else:
        lo, hi = schedule.default_range
        t_min = lo if opts.t_min is None else opts.t_min
        t_max = hi if opts.t_max is None else opts.t_max
        if opts.n_times < 1:
            raise SpectraError(f"--n-times must be at least 1, got {opts.n_times}")
        require_memory(16 * 8 * opts.n_times, f"a grid of --n-times {opts.n_times}")
        schedule.validate([t_min, t_max])
        if not t_min <= t_max:
            raise SpectraError(f"--t-min {t_min:g} is above --t-max {t_max:g}")
        if (opts.spacing or "tau") == "tau":
            times = schedule.tau_grid(t_min, t_max, opts.n_times)
        else:
            times = np.geomspace(t_min, t_max, opts.n_times)
            if schedule.integer_times:
                times = np.round(times)
    times = np.unique(times)
    return schedule.validate(times)


def rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def anchors(model: ScoreModel, opts: EstimateOptions) -> np.ndarray:
    """The anchors x0 (N, *shape) as --data says (docs/cli.md)."""
    n = opts.n_samples
    if n is not None and n < 1:
        raise SpectraError(f"--n-samples must be at least 1, got {n}")
    if opts.shape is not None and model.shape is not None and tuple(opts.shape) != tuple(model.shape):
        raise SpectraError(f"--shape {','.join(map(str, opts.shape))} does not apply: the model's "
                           f"samples have shape {tuple(model.shape)}")
    shape = opts.shape or model.shape
    if opts.data is None or opts.data == "noise":
        if shape is not None:
            count = n or DEFAULT_N_SAMPLES
            require_memory(2 * 8 * count * math.prod(shape),
                           f"{count} anchors of shape {tuple(shape)} (--n-samples)")
    if opts.data is None:
        x0 = model.sample(n or DEFAULT_N_SAMPLES, rng(opts.seed, SEED_ANCHORS))
        if x0 is None:
            raise SpectraError(
                "this model has no data distribution of its own: pass --data FILE or --data noise"
            )
    elif opts.data == "noise":
        if shape is None:
            raise SpectraError("--data noise needs the sample shape: pass --shape C,H,W")
        x0 = rng(opts.seed, SEED_ANCHORS).standard_normal((n or DEFAULT_N_SAMPLES, *shape))
    else:
        x0 = load_array(opts.data)
        if n is not None and n > len(x0):
            raise SpectraError(f"{opts.data} holds {len(x0)} samples; --n-samples asked for {n}")
        x0 = x0[: n or DEFAULT_N_SAMPLES]
    if shape is not None and tuple(x0.shape[1:]) != tuple(shape):
        raise SpectraError(
            f"data samples have shape {tuple(x0.shape[1:])} but the model takes {tuple(shape)}"
        )
    x0 = np.asarray(x0)
    if np.iscomplexobj(x0) or not np.all(np.isfinite(x0)):
        raise SpectraError("the anchors must be real and finite")
    if opts.data not in (None, "noise"):
        check_range(x0, model.data_range, opts.data)
    return np.ascontiguousarray(x0, dtype=np.float64)


def check_range(x0: np.ndarray, expected: tuple[float, float] | None, source: str) -> None:
    """Warn when anchors reach far outside the range the model was trained on (by more than its
    width on either side: uint8 images in [0, 255] given to a model of [-1, 1] images, say)."""
    if expected is None:
        return
    lo, hi = expected
    width = hi - lo
    found = float(x0.min()), float(x0.max())
    if found[0] < lo - width or found[1] > hi + width:
        hint = " (uint8 images? scale them as x / 127.5 - 1)" if found[1] > 100 else ""
        warnings.warn(f"the anchors of {source} lie in [{found[0]:g}, {found[1]:g}], far outside the "
                      f"[{lo:g}, {hi:g}] the model was trained on{hint}", stacklevel=4)


def points_at(
    x0: torch.Tensor, opts: EstimateOptions, alpha: float, sigma: float, idx: np.ndarray, ti: int
) -> torch.Tensor:
    """alpha x0 (--at clean) or alpha x0 + sigma eps (--at noisy), eps keyed by (seed, anchor,
    time)."""
    points = alpha * x0
    if opts.at == "noisy":
        shape = tuple(x0.shape[1:])
        eps = np.stack([rng(opts.seed, SEED_NOISE, int(n), ti).standard_normal(shape) for n in idx])
        points = points + sigma * torch.as_tensor(eps, dtype=x0.dtype, device=x0.device)
    return points


def directions(
    opts: EstimateOptions, idx: np.ndarray, ti: int, dim: int, dtype, device
) -> torch.Tensor | None:
    if opts.directions == "basis":
        return None
    qs = np.stack([haar_directions(dim, rng(opts.seed, SEED_DIRECTIONS, int(n), ti)) for n in idx])
    return torch.as_tensor(qs, dtype=dtype, device=device)
