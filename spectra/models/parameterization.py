"""Conversions between what a network predicts and the three Jacobian targets (theory.md 2).

With x = alpha x0 + sigma eps and the score s = grad log p_t(x) (Tweedie):

    s      = (alpha x0hat - x) / sigma^2 = -epshat / sigma
    x0hat  = (x - sigma epshat) / alpha = (x + sigma^2 s) / alpha
    v      = alpha eps - sigma x0  =>  x0hat = (alpha x - sigma v) / (alpha^2 + sigma^2),
                                       epshat = (sigma x + alpha v) / (alpha^2 + sigma^2)

(the v formulas reduce to theory.md's alpha x - sigma v and sigma x + alpha v when
alpha^2 + sigma^2 = 1, and stay exact for any schedule). alpha and sigma are Python floats or
tensors broadcastable against x.
"""

from __future__ import annotations

import torch

from spectra.errors import SpectraError
from spectra.names import PARAMETERIZATIONS, TARGETS


def check_parameterization(name: str) -> str:
    if name not in PARAMETERIZATIONS:
        raise SpectraError(
            f"unknown parameterization {name!r} (expected one of {', '.join(PARAMETERIZATIONS)})"
        )
    return name


def check_target(name: str) -> str:
    if name not in TARGETS:
        raise SpectraError(f"unknown target {name!r} (expected one of {', '.join(TARGETS)})")
    return name


def to_target(
    pred: torch.Tensor, x: torch.Tensor, alpha, sigma, parameterization: str, target: str
) -> torch.Tensor:
    """Convert a prediction in `parameterization` at input x into `target` (same shape as x)."""
    if parameterization == "score":
        if target == "score":
            return pred
        if target == "eps":
            return -sigma * pred
        return (x + sigma**2 * pred) / alpha
    if parameterization == "eps":
        eps = pred
    elif parameterization == "x0":
        if target == "denoiser":
            return pred
        eps = (x - alpha * pred) / sigma
    elif parameterization == "v":
        norm = alpha**2 + sigma**2
        eps = (sigma * x + alpha * pred) / norm
        if target == "denoiser":
            return (alpha * x - sigma * pred) / norm
    else:
        raise SpectraError(f"unknown parameterization {parameterization!r}")
    if target == "eps":
        return eps
    if target == "score":
        return -eps / sigma
    return (x - sigma * eps) / alpha


def from_score(
    score: torch.Tensor, x: torch.Tensor, alpha, sigma, parameterization: str
) -> torch.Tensor:
    """What a network of `parameterization` would output given the exact score (for wrapping
    analytic models as networks in tests and examples)."""
    check_parameterization(parameterization)
    eps = -sigma * score
    x0 = (x + sigma**2 * score) / alpha
    if parameterization == "score":
        return score
    if parameterization == "eps":
        return eps
    if parameterization == "x0":
        return x0
    return alpha * eps - sigma * x0
