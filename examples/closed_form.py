"""An analytic model whose Jacobian spectrum is known in closed form, measured and checked.

A linear manifold (Ventura et al., ICLR 2025): data on a 20-dimensional subspace of R^64 with two
groups of variances. Its score Jacobian at every point has the eigenvalues of docs/theory.md 3.2;
spectra.estimate measures them with float64 JVPs and they agree to about 1e-12.

    python examples/closed_form.py [OUT_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np

import spectra
from spectra.models import linear_manifold
from spectra.schedules import Schedule
from spectra.theory.linear import linear_manifold_singular_values


def main(folder: Path) -> None:
    variances = np.r_[np.ones(10), 0.05 * np.ones(10)]
    model = linear_manifold(64, variances, Schedule("ve"), embedding="gaussian", seed=1)
    run = spectra.estimate(model, out=folder / "closed_form.h5", times=[0.01, 0.3, 1.0],
                           method="jvp", n_samples=3, overwrite=True)
    worst = 0.0
    for ti, (alpha, sigma) in enumerate(zip(run["alpha"], run["sigma"], strict=True)):
        exact = linear_manifold_singular_values(model.covariance_eigenvalues(), 64, alpha, sigma)
        measured = run["singular_values"][:, ti]
        worst = max(worst, float(np.max(np.abs(measured - exact) / exact)))
    print(f"largest relative error against the closed form: {worst:.1e}")
    assert worst < 1e-10


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
