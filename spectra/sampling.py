"""Sampling any ScoreModel (`spectra sample`): the probability-flow ODE with Heun steps (Karras et
al., "Elucidating the Design Space of Diffusion-Based Generative Models", NeurIPS 2022: EDM) and the
ancestral sampler of DDPM (Ho et al., NeurIPS 2020), both in the VE-equivalent coordinates of
docs/theory.md 1.

With y = x / alpha(t) and s = sqrt(tau(t)) = sigma / alpha every schedule is the VE process
y = x0 + s eps, whose probability-flow ODE is dy/ds = (y - D(y; s)) / s, D the denoiser (the
posterior mean of x0, theory.md 2), evaluated as the model's x0 prediction at x = alpha(t) y.

* Noise levels (EDM eq. 5, rho = 7): s_i = (s_max^(1/rho) + i/(K-1) (s_min^(1/rho) - s_max^(1/rho)))^rho,
  i = 0..K-1, over the schedule's time range, mapped back to the schedule's times (the nearest
  integer step for ddpm, repeats merged), then s_K = 0.
* heun (EDM Algorithm 1, the deterministic sampler): d_i = (y - D(y; s_i)) / s_i,
  y' = y + (s_{i+1} - s_i) d_i, and where s_{i+1} > 0, y <- y + (s_{i+1} - s_i)(d_i + d'_i) / 2 with
  d'_i = (y' - D(y'; s_{i+1})) / s_{i+1}; the last step, to s = 0, is Euler: y <- D(y; s_{K-1}).
  2K - 1 evaluations.
* ancestral: DDPM's posterior q(y_{i+1} | y_i, x0 = D(y_i; s_i)) in VE form,
  y <- D + (s_{i+1}^2 / s_i^2) (y - D) + s_{i+1} sqrt(1 - s_{i+1}^2 / s_i^2) z, z ~ N(0, I)
  (Ho et al. eq. 6-7 with the posterior variance beta~; on the ddpm schedule with every integer
  step it is their Algorithm 2), and y <- D(y; s_{K-1}) at the end. K evaluations.

The start is y ~ N(0, s_0^2 I) (the data's variance is negligible beside s_0^2 at the top of every
schedule's range). Every random draw comes from numpy's generator seeded with `seed`, all samples
at once, so the samples do not depend on the batch size (up to the round-off of the
model's batched arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.models import load_model
from spectra.models.base import ScoreModel

#: sampler names: the probability-flow ODE with Heun steps, the ancestral (DDPM) sampler
SAMPLERS = ("heun", "ancestral")
RHO = 7.0
#: bytes of model activations one denoiser batch may take
_BATCH_BYTES = 2**28


@dataclass
class Samples:
    """Generated samples (n, *shape) and how they were made: the times t_i and noise levels
    s_i = sqrt(tau(t_i)) (K,) of the steps, the sampler, its seed and the model evaluations."""

    x: np.ndarray
    times: np.ndarray
    noise: np.ndarray
    sampler: str
    seed: int
    evaluations: int
    model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """The steps as JSON-ready values."""
        return {"sampler": self.sampler, "seed": self.seed, "steps": len(self.times),
                "evaluations": self.evaluations, "times": self.times.tolist(),
                "noise_levels": self.noise.tolist(), "model": self.model, **self.extra}


def load_conditioned(spec: str | None, class_label: int | None = None, **load: Any) -> ScoreModel:
    """The model a spec names (spectra.models.load_model with `load`'s schedule, parameterization,
    shape and allow_pickle), at class `class_label` when given (a class-conditional network)."""
    model = load_model(spec, **load)
    if class_label is not None:
        model.condition(class_label)
    return model


def noise_levels(model: ScoreModel, steps: int, t_min: float | None = None, t_max: float | None = None,
                 rho: float = RHO) -> tuple[np.ndarray, np.ndarray]:
    """(times (K,), s = sqrt(tau) (K,)), decreasing, of EDM's rho-spaced levels over
    [t_min, t_max] (default: the schedule's range); see the module docstring."""
    schedule = model.schedule
    lo, hi = schedule.default_range
    lo, hi = float(lo if t_min is None else t_min), float(hi if t_max is None else t_max)
    schedule.validate(np.array([lo, hi]))
    if not lo < hi:
        raise SpectraError(f"--t-min ({lo:g}) must be below --t-max ({hi:g})")
    if steps < 2:
        raise SpectraError(f"--steps must be at least 2, got {steps}")
    s_max, s_min = math.sqrt(float(schedule.tau(hi))), math.sqrt(float(schedule.tau(lo)))
    if not s_min >= 1e-6:  # below it the Heun correction divides round-off by the level
        raise SpectraError(f"--t-min {lo:g} gives the noise level sqrt(tau) = {s_min:.3g}: below 1e-6 the "
                           "steps divide round-off by it; take a larger --t-min")
    ramp = np.linspace(0.0, 1.0, steps)
    s = (s_max ** (1 / rho) + ramp * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    times = schedule.times_of_tau(s**2, lo, hi)
    if schedule.integer_times:
        times = times[::-1]  # the merged steps come sorted up
    return times, np.sqrt(schedule.tau(times))


def sample(model: ScoreModel, n: int, steps: int = 32, sampler: str = "heun", seed: int = 0,
           t_min: float | None = None, t_max: float | None = None, progress: bool = False) -> Samples:
    """n samples (n, *shape) of `model` by `sampler` over `steps` noise levels (see the module
    docstring), in float64 on the CPU."""
    if sampler not in SAMPLERS:
        raise SpectraError(f"unknown sampler {sampler!r} (expected {' or '.join(SAMPLERS)})")
    if n < 1:
        raise SpectraError(f"--n must be at least 1, got {n}")
    if model.shape is None:
        raise SpectraError(f"{model.spec or 'the model'} does not tell its sample shape: give --shape C,H,W")
    dim = math.prod(model.shape)
    require_memory(4 * 8 * n * dim, f"{n} samples of D = {dim}")
    times, s = noise_levels(model, steps, t_min, t_max)
    model.to("cpu", torch.float64)
    rng = np.random.default_rng(seed)
    batch = max(1, min(n, _BATCH_BYTES // (8 * dim * max(1, model.activation_factor))))
    evaluations = 0

    def denoise(y: np.ndarray, i: int) -> np.ndarray:
        nonlocal evaluations
        evaluations += 1
        alpha = float(model.schedule.alpha(times[i]))
        out = np.empty_like(y)
        with torch.no_grad():
            for start in range(0, n, batch):
                x = torch.from_numpy(alpha * y[start : start + batch])
                out[start : start + batch] = model.target(x, float(times[i]), "denoiser").numpy()
        if not np.all(np.isfinite(out)):
            raise SpectraError(f"the model's denoiser is not finite at t = {times[i]:g}")
        return out

    y = s[0] * rng.standard_normal((n, *model.shape))
    for i in tqdm(range(len(s)), disable=not progress or None, desc="spectra sample", leave=False):
        d0 = denoise(y, i)
        if i == len(s) - 1:
            y = d0
        elif sampler == "heun":
            step = s[i + 1] - s[i]
            slope = (y - d0) / s[i]
            moved = y + step * slope
            y = y + step * (slope + (moved - denoise(moved, i + 1)) / s[i + 1]) / 2
        else:
            keep = (s[i + 1] / s[i]) ** 2
            y = d0 + keep * (y - d0) + s[i + 1] * math.sqrt(1 - keep) * rng.standard_normal(y.shape)
    return Samples(y, times, s, sampler, seed, evaluations, model.spec)
