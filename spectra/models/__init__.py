"""Score models: analytic mixtures, wrapped networks, and the spec loader."""

from spectra.models.analytic import (
    GaussianMixture,
    empirical,
    isotropic_gmm,
    linear_manifold,
    molrg,
)
from spectra.models.base import ScoreModel
from spectra.models.network import NetworkScoreModel
from spectra.models.parameterization import PARAMETERIZATIONS, TARGETS
from spectra.models.specs import demo_manifold_spec, demo_spec, load_model

__all__ = [
    "GaussianMixture",
    "NetworkScoreModel",
    "PARAMETERIZATIONS",
    "ScoreModel",
    "TARGETS",
    "demo_manifold_spec",
    "demo_spec",
    "empirical",
    "isotropic_gmm",
    "linear_manifold",
    "load_model",
    "molrg",
]
