"""Noise schedules: x_t = alpha(t) x_0 + sigma(t) eps (theory.md section 1).

Every schedule maps its own time variable t to alpha(t), sigma(t) and the VE-equivalent variance
tau(t) = sigma(t)^2 / alpha(t)^2, the one axis all theory is written in. Values are computed in
float64 numpy; arrays in, arrays out (a scalar in gives a 0-d array out).

| name      | t range          | alpha(t)                                   | sigma(t)                      |
|-----------|------------------|--------------------------------------------|-------------------------------|
| `ve`      | (0, 1]           | 1                                          | s_min (s_max / s_min)^t       |
| `vp`      | (0, 1]           | exp(-t^2 (b1 - b0)/4 - t b0/2)             | sqrt(1 - alpha^2)             |
| `ddpm`    | integers 0..T-1  | sqrt(abar_t), abar = cumprod(1 - beta)     | sqrt(1 - abar_t)              |
|           |                  | (or an explicit abar table, as diffusers') |                               |
| `edm`     | [s_min, s_max]   | 1                                          | t                             |
| `vp-sqrt` | (0, 1)           | sqrt(1 - t^2)                              | t                             |
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from spectra.errors import SpectraError

SCHEDULE_NAMES = ("ve", "vp", "ddpm", "edm", "vp-sqrt")


@dataclass(frozen=True)
class Schedule:
    """A named schedule with its constants.

    `t_low`/`t_high` bound the valid times; `low_open`/`high_open` say whether the bound itself is
    excluded. `default_range` is the (t_min, t_max) of the default log-spaced grid.
    `alphas_cumprod` (ddpm only) gives abar_t for t = 0..T-1 explicitly, as a diffusers
    scheduler holds it (any beta schedule); then `n_steps` = T and the beta constants are unused.
    """

    name: str
    params: dict[str, float] = field(default_factory=dict)
    alphas_cumprod: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.name not in SCHEDULE_NAMES:
            raise SpectraError(
                f"unknown schedule {self.name!r} (expected one of {', '.join(SCHEDULE_NAMES)})"
            )
        allowed = _DEFAULTS[self.name]
        if self.alphas_cumprod is not None:
            self._set_table()
            return
        unknown = set(self.params) - set(allowed)
        if unknown:
            raise SpectraError(
                f"schedule {self.name!r} has no constant(s) {', '.join(sorted(unknown))} "
                f"(it takes {', '.join(allowed) or 'none'})"
            )
        full = {**allowed, **{k: float(v) for k, v in self.params.items()}}
        _check_constants(self.name, full)
        object.__setattr__(self, "params", full)
        if self.name == "ddpm":
            self.params["n_steps"] = float(int(self.params["n_steps"]))
            object.__setattr__(self, "_abar", _ddpm_abar(self.params))

    def _set_table(self) -> None:
        if self.name != "ddpm":
            raise SpectraError(f"an alphas_cumprod table applies to schedule 'ddpm', not {self.name!r}")
        if self.params:
            raise SpectraError("a ddpm schedule with an alphas_cumprod table takes no other constants")
        abar = np.asarray(self.alphas_cumprod, dtype=np.float64)
        # a zero-terminal-SNR table (Lin et al. 2024; diffusers' rescale_betas_zero_snr) ends in 0
        if abar.ndim != 1 or len(abar) < 2 or not (np.all(abar[:-1] > 0) and np.all(abar <= 1)
                                                   and abar[-1] >= 0):
            raise SpectraError("alphas_cumprod must be a list of at least 2 values in (0, 1] "
                               "(the last may be 0: zero terminal SNR)")
        object.__setattr__(self, "alphas_cumprod", tuple(float(a) for a in abar))
        object.__setattr__(self, "params", {"n_steps": float(len(abar))})
        object.__setattr__(self, "_abar", abar)

    # --- ranges -------------------------------------------------------------------------------
    @property
    def bounds(self) -> tuple[float, float, bool, bool]:
        """(t_low, t_high, low_open, high_open)."""
        p = self.params
        if self.name in ("ve", "vp"):
            return 0.0, 1.0, True, False
        if self.name == "ddpm":
            return 0.0, p["n_steps"] - (2 if self.zero_terminal_snr else 1), False, False
        if self.name == "edm":
            return p["sigma_min"], p["sigma_max"], False, False
        return 0.0, 1.0, True, True

    @property
    def zero_terminal_snr(self) -> bool:
        """True for a ddpm table whose last step has alpha = 0 (pure noise, tau infinite): that
        step lies outside the valid range."""
        return self.alphas_cumprod is not None and self.alphas_cumprod[-1] == 0

    @property
    def default_range(self) -> tuple[float, float]:
        """(t_min, t_max) of the default log-spaced time grid."""
        if self.name in ("ddpm", "edm"):
            lo, hi = self.bounds[:2]
            return max(lo, 1.0) if self.name == "ddpm" else lo, hi
        return {"ve": (0.01, 1.0), "vp": (1e-3, 1.0), "vp-sqrt": (0.01, 0.99)}[self.name]

    @property
    def integer_times(self) -> bool:
        """True where t is an integer timestep index (ddpm)."""
        return self.name == "ddpm"

    def validate(self, t: ArrayLike) -> np.ndarray:
        """Return t as a float64 array, or raise SpectraError naming the first bad time."""
        arr = np.atleast_1d(np.asarray(t, dtype=np.float64))
        lo, hi, lo_open, hi_open = self.bounds
        for value in arr:
            bad_low = value <= lo if lo_open else value < lo
            bad_high = value >= hi if hi_open else value > hi
            if self.zero_terminal_snr and value == hi + 1:
                raise SpectraError(
                    f"time t={value:g} has alpha = 0 (zero terminal SNR): tau = sigma^2/alpha^2 is "
                    f"infinite there; the last usable step is {hi:g}"
                )
            if not np.isfinite(value) or bad_low or bad_high:
                lb = "(" if lo_open else "["
                rb = ")" if hi_open else "]"
                raise SpectraError(
                    f"time t={value:g} is outside schedule {self.name!r}'s range "
                    f"{lb}{lo:g}, {hi:g}{rb}"
                )
            if self.integer_times and value != np.round(value):
                raise SpectraError(
                    f"time t={value:g} is not an integer timestep (schedule {self.name!r})"
                )
        return arr

    # --- values -------------------------------------------------------------------------------
    def alpha(self, t: ArrayLike) -> np.ndarray:
        """alpha(t), float64."""
        t = np.asarray(t, dtype=np.float64)
        p = self.params
        if self.name in ("ve", "edm"):
            return np.ones_like(t)
        if self.name == "vp":
            return np.exp(-(t**2) * (p["beta_max"] - p["beta_min"]) / 4 - t * p["beta_min"] / 2)
        if self.name == "ddpm":
            return np.sqrt(self._abar[np.round(t).astype(np.int64)])
        return np.sqrt(1.0 - t**2)

    def sigma(self, t: ArrayLike) -> np.ndarray:
        """sigma(t), float64."""
        t = np.asarray(t, dtype=np.float64)
        p = self.params
        if self.name == "ve":
            return p["sigma_min"] * (p["sigma_max"] / p["sigma_min"]) ** t
        if self.name == "vp":
            # 1 - alpha^2 = -expm1(2 log alpha): exact at small t, where 1 - alpha^2 cancels.
            log_alpha = -(t**2) * (p["beta_max"] - p["beta_min"]) / 4 - t * p["beta_min"] / 2
            return np.sqrt(-np.expm1(2 * log_alpha))
        if self.name == "ddpm":
            return np.sqrt(1.0 - self._abar[np.round(t).astype(np.int64)])
        return t.copy()  # edm and vp-sqrt: sigma = t

    def tau(self, t: ArrayLike) -> np.ndarray:
        """VE-equivalent variance tau(t) = sigma^2 / alpha^2."""
        return self.sigma(t) ** 2 / self.alpha(t) ** 2

    def tau_grid(self, t_min: float, t_max: float, n: int) -> np.ndarray:
        """n times in [t_min, t_max] whose tau is log-spaced from tau(t_min) to tau(t_max) (tau
        increases with t in every schedule; times_of_tau); the ends are t_min and t_max."""
        lo, hi = float(t_min), float(t_max)
        grid = self.times_of_tau(np.geomspace(float(self.tau(lo)), float(self.tau(hi)), n), lo, hi)
        if not self.integer_times:
            grid[0] = lo
            if n > 1:
                grid[-1] = hi
        return grid

    def times_of_tau(self, tau: ArrayLike, t_min: float, t_max: float) -> np.ndarray:
        """The times in [t_min, t_max] at which tau(t) takes the values `tau` (n,): the inverse
        of tau (increasing in t) by bisection, 80 halvings of the interval (to float64
        resolution); for integer timesteps the step nearest in log tau, repeats merged (sorted)."""
        lo, hi = float(t_min), float(t_max)
        targets = np.log(np.asarray(tau, dtype=np.float64))
        if self.integer_times:
            steps = np.arange(np.ceil(lo), np.floor(hi) + 1)
            log_tau = np.log(self.tau(steps))
            return np.unique(steps[np.abs(log_tau[None, :] - targets[:, None]).argmin(axis=1)])
        a, b = np.full(targets.shape, lo), np.full(targets.shape, hi)
        for _ in range(80):
            mid = (a + b) / 2
            below = np.log(self.tau(mid)) < targets
            a, b = np.where(below, mid, a), np.where(below, b, mid)
        return np.clip((a + b) / 2, lo, hi)

    # --- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        if self.alphas_cumprod is not None:
            return {"name": self.name, "alphas_cumprod": list(self.alphas_cumprod)}
        return {"name": self.name, **self.params}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Schedule:
        d = dict(d)
        if "name" not in d:
            raise SpectraError("schedule table needs a 'name'")
        name = d.pop("name")
        table = d.pop("alphas_cumprod", None)
        if table is not None:
            d.pop("n_steps", None)
            if d:
                raise SpectraError("a ddpm schedule with an alphas_cumprod table takes no other constants")
            try:
                return cls(str(name), {}, tuple(float(a) for a in table))
            except (TypeError, ValueError):
                raise SpectraError("alphas_cumprod must be a list of numbers") from None
        try:
            params = {k: float(v) for k, v in d.items()}
        except (TypeError, ValueError) as exc:
            raise SpectraError(f"schedule {name!r} constants must be numbers: {exc}") from None
        return cls(str(name), params)


_DEFAULTS: dict[str, dict[str, float]] = {
    "ve": {"sigma_min": 0.01, "sigma_max": 50.0},
    "vp": {"beta_min": 0.1, "beta_max": 20.0},
    "ddpm": {"beta_start": 1e-4, "beta_end": 2e-2, "n_steps": 1000.0},
    "edm": {"sigma_min": 0.002, "sigma_max": 80.0},
    "vp-sqrt": {},
}


#: the most ddpm steps a schedule may have (its table is held in memory)
_MAX_STEPS = 10**7


def _check_constants(name: str, p: dict[str, float]) -> None:
    """Refuse constants that define no valid schedule (which would give silently wrong or NaN
    alpha and sigma): finite values, 0 < sigma_min < sigma_max, 0 <= beta_min <= beta_max,
    0 < beta_start <= beta_end < 1 and 2 <= n_steps <= 10^7."""
    bad = [k for k, v in p.items() if not math.isfinite(v)]
    if bad:
        raise SpectraError(f"schedule {name!r}: {bad[0]} must be finite, got {p[bad[0]]}")
    if "sigma_min" in p and not 0 < p["sigma_min"] < p["sigma_max"]:
        raise SpectraError(f"schedule {name!r} needs 0 < sigma_min < sigma_max, got "
                           f"{p['sigma_min']:g} and {p['sigma_max']:g}")
    if "beta_min" in p and not 0 <= p["beta_min"] <= p["beta_max"]:
        raise SpectraError(f"schedule {name!r} needs 0 <= beta_min <= beta_max, got "
                           f"{p['beta_min']:g} and {p['beta_max']:g}")
    if "beta_start" in p:
        if not 0 < p["beta_start"] <= p["beta_end"] < 1:
            raise SpectraError(f"schedule {name!r} needs 0 < beta_start <= beta_end < 1, got "
                               f"{p['beta_start']:g} and {p['beta_end']:g}")
        if not 2 <= p["n_steps"] <= _MAX_STEPS:
            raise SpectraError(f"schedule {name!r} needs 2 <= n_steps <= {_MAX_STEPS}, got {p['n_steps']:g}")


def _ddpm_abar(p: dict[str, float]) -> np.ndarray:
    betas = np.linspace(p["beta_start"], p["beta_end"], int(p["n_steps"]), dtype=np.float64)
    return np.cumprod(1.0 - betas)


def get_schedule(name: str, **params: float) -> Schedule:
    """Schedule by CLI name with optional constants (defaults from theory.md section 1)."""
    return Schedule(name, params)
