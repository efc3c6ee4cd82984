"""The Jacobian engine: operators that multiply, and algorithms that take operators."""

from spectra.jacobian.dense import DenseSpectra, dense_jacobian, dense_spectra
from spectra.jacobian.methods import (
    METHODS,
    evaluate_checked,
    finite_difference_step,
    haar_directions,
    jacobian_at,
    jacobian_spectra,
    probe_method,
    spectra_at,
)
from spectra.jacobian.operators import (
    AutodiffJacobian,
    FiniteDifferenceJacobian,
    JacobianOperator,
)

__all__ = [
    "METHODS",
    "AutodiffJacobian",
    "DenseSpectra",
    "FiniteDifferenceJacobian",
    "JacobianOperator",
    "dense_jacobian",
    "dense_spectra",
    "evaluate_checked",
    "finite_difference_step",
    "haar_directions",
    "jacobian_at",
    "jacobian_spectra",
    "probe_method",
    "spectra_at",
]
