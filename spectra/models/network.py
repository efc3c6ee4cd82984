"""Wrap a bare torch module as a ScoreModel.

The module is called as `module(x, t)` with x of shape (B, *shape) and t a (B,) tensor of
schedule times (in x's dtype), and returns its prediction (eps, x0, v or score) with x's shape.
"""

from __future__ import annotations

from typing import Any

import torch

from spectra.errors import SpectraError
from spectra.models.base import ScoreModel
from spectra.models.parameterization import check_parameterization
from spectra.schedules import Schedule


class NetworkScoreModel(ScoreModel):
    """A network of a given parameterization under a given schedule.

    Args:
        module: the torch module (put in eval mode here).
        schedule: how the module's time input maps to alpha, sigma.
        parameterization: what the module predicts: eps | x0 | v | score.
        shape: the sample shape, if known (else taken from `module.sample_shape` when present).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        schedule: Schedule,
        parameterization: str,
        shape: tuple[int, ...] | None = None,
        spec: str = "",
    ) -> None:
        self.module = module.eval()
        self.schedule = schedule
        self.parameterization = check_parameterization(parameterization)
        found = shape if shape is not None else getattr(module, "sample_shape", None)
        self.shape = tuple(int(s) for s in found) if found is not None else None
        self.spec = spec

    def to(self, device: torch.device | str, dtype: torch.dtype) -> NetworkScoreModel:
        self.module.to(device=device, dtype=dtype)
        return self

    def config(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.module.parameters())
        return {
            "kind": "network",
            "module": type(self.module).__name__,
            "parameters": n_params,
            "schedule": self.schedule.to_dict(),
            "parameterization": self.parameterization,
        }

    def predict(self, x: torch.Tensor, t: float) -> torch.Tensor:
        times = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
        out = self.module(x, times)
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SpectraError(
                f"model returned shape {got} for input of shape {tuple(x.shape)} at t={t:g}; "
                "it must return its prediction with the input's shape"
            )
        return out
