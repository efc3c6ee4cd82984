"""The ScoreModel interface: any model, any parameterization, three targets.

A ScoreModel knows its schedule, its native parameterization (what `predict` returns: eps, x0, v
or score) and, when it can tell, its sample shape and data distribution. `target(x, t, name)`
returns the score, the denoiser (x0) or eps at a batch x of shape (B, *shape) and one time t,
converted with the formulas of theory.md section 2 (spectra.models.parameterization).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np
import torch

from spectra.errors import SpectraError
from spectra.models.parameterization import check_target, to_target
from spectra.names import FEATURE_PREFIX
from spectra.schedules import Schedule


class ScoreModel(ABC):
    """Base class. Subclasses implement `predict` and `to`; everything else derives from them."""

    schedule: Schedule
    parameterization: str
    shape: tuple[int, ...] | None = None
    spec: str = ""
    #: the name of the factory that built the model (without its file or module), or ""
    factory: str = ""
    #: Rough activation memory per sample in units of D values; sizes the default batch.
    activation_factor: int = 64
    #: the range the model's training data spanned, where the model's kind tells (image models
    #: of diffusers and EDM: [-1, 1]); anchors far outside it are warned of (sweep.inputs)
    data_range: tuple[float, float] | None = None

    @abstractmethod
    def predict(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """The native prediction at x (B, *shape) and time t; returns x's shape."""

    @abstractmethod
    def to(self, device: torch.device | str, dtype: torch.dtype) -> ScoreModel:
        """Move parameters to a device and dtype; returns self."""

    def config(self) -> dict[str, Any]:
        """JSON-serializable description stored in run files."""
        return {"kind": type(self).__name__}

    def identity(self) -> dict[str, Any]:
        """What the model is, independent of where it was found or how its spec was spelled
        (fingerprinted on resume with `state()`; see spectra.fingerprint): its class, schedule,
        parameterization, sample shape and the factory it came from."""
        return {"class": type(self).__name__, "schedule": self.schedule.to_dict(),
                "parameterization": self.parameterization,
                "shape": list(self.shape) if self.shape is not None else None, "factory": self.factory}

    def state(self) -> dict[str, np.ndarray | torch.Tensor]:
        """Every array the model's values depend on, by name (fingerprinted on resume; see
        spectra.fingerprint). Models described fully by `config()` return none."""
        return {}

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray | None:
        """n samples (n, *shape) from the model's own data distribution, or None if unknown."""
        return None

    def condition(self, class_label: int) -> None:
        """Evaluate every prediction at class `class_label`; only class-conditional networks
        (NetworkScoreModel) have classes."""
        raise SpectraError("--class-label needs a class-conditional network, not an analytic model")

    def alpha_sigma(self, t: float) -> tuple[float, float]:
        """(alpha(t), sigma(t)) as float64 Python floats."""
        return float(self.schedule.alpha(t)), float(self.schedule.sigma(t))

    def target(self, x: torch.Tensor, t: float, target: str) -> torch.Tensor:
        """score | denoiser | eps at x (B, *shape), time t; for `feature:NAME` the activation of
        submodule NAME (B, *feature_shape) (feature)."""
        if target.startswith(FEATURE_PREFIX):
            return self.feature(x, t, target.removeprefix(FEATURE_PREFIX))
        check_target(target)
        alpha, sigma = self.alpha_sigma(t)
        return to_target(self.checked_predict(x, t), x, alpha, sigma, self.parameterization, target)

    def feature(self, x: torch.Tensor, t: float, name: str) -> torch.Tensor:
        """The activation (B, *feature_shape) of the submodule `name` when the model runs at x
        (B, *shape) and time t; only networks have submodules."""
        raise SpectraError(f"--feature {name}: {type(self).__name__} is not a network (it has no "
                           "submodules)")

    def feature_names(self) -> list[str]:
        """The submodules --feature can name (none for analytic models)."""
        return []

    def checked_predict(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """predict(x, t), refused in one line unless it is a real floating-point tensor (an
        integer or complex output would be rounded or cut silently by the conversions)."""
        value = self.predict(x, t)
        if not isinstance(value, torch.Tensor):
            raise SpectraError(f"the model returned {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise SpectraError(f"the model returned dtype {str(value.dtype).removeprefix('torch.')} "
                               f"at t={t:g}; spectra needs real floating-point predictions")
        return value

    def time_inputs(self, t: float, like: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
        """Tensors (on the device of `like`) through which `target_from` sees the time t, so
        that a compiled graph takes t as data and serves every time; None for models whose
        target cannot be written that way (then products are not compiled)."""
        return None

    def target_from(self, x: torch.Tensor, *inputs: torch.Tensor, target: str) -> torch.Tensor:
        """target(x, t, target) with t given as time_inputs(t, x) (no output shape check)."""
        raise NotImplementedError(f"{type(self).__name__} has no time inputs")
