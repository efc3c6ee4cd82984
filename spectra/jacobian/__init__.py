"""The Jacobian engine: operators that multiply, and algorithms that take operators."""

from spectra.jacobian.dense import DenseSpectra, dense_jacobian, dense_spectra
from spectra.jacobian.methods import (
    AutodiffPath,
    evaluate_checked,
    finite_difference_step,
    haar_directions,
    jacobian_at,
    jacobian_spectra,
    make_operator,
    probe_path,
    spectra_at,
    topk_at,
)
from spectra.jacobian.operators import (
    AutodiffJacobian,
    AutogradJacobian,
    AutogradRowsJacobian,
    FiniteDifferenceJacobian,
    JacobianOperator,
)
from spectra.jacobian.topk import TopKResult, topk_svd
from spectra.names import METHODS

__all__ = [
    "METHODS",
    "AutodiffJacobian",
    "AutodiffPath",
    "AutogradJacobian",
    "AutogradRowsJacobian",
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
    "make_operator",
    "probe_path",
    "spectra_at",
    "TopKResult",
    "topk_at",
    "topk_svd",
]
