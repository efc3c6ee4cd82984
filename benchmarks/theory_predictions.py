"""Time the theory's predictions: 200 tau values on a 1000-point density grid (issue 3's goal:
under 2 s on CPU), from a manifold spec to every array `spectra theory` writes.

    python benchmarks/theory_predictions.py [--repeats 5]

Cases: the shipped demo manifold (D = 100, m = 40, gaussian embedding) and a large two-variance
random manifold (D = 2000, m = 800). Each timing starts from the LinearManifold, so it includes
the embedding's SVD, the Silverstein solve, the density on the grid, the exact finite-D
eigenvalues and the phases.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time

import numpy as np
import scipy
from common import write

from spectra.models import demo_manifold_spec
from spectra.spec_toml import load_manifold
from spectra.studies.phases import density_grid
from spectra.theory.manifold import LinearManifold
from spectra.theory.prediction import LinearTheory


def predict(manifold: LinearManifold, tau: np.ndarray, grid: np.ndarray) -> dict:
    fresh = LinearManifold(manifold.ambient_dim, manifold.variances, manifold.embedding, manifold.seed)
    theory = LinearTheory.from_manifold(fresh)
    return {"eigenvalues": theory.eigenvalues(tau), "density": theory.density(tau, grid),
            "atom": theory.atom(tau), "phases": theory.phases(0.1),
            "residual": theory.covariance_density.residual}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    tau, grid = np.geomspace(1e-4, 1e3, 200), density_grid(1000)
    cases = {
        "demo D=100 m=40": load_manifold(demo_manifold_spec()),
        "two-variance D=2000 m=800": LinearManifold(2000, np.r_[np.full(400, 1.0), np.full(400, 0.05)],
                                                    "gaussian", seed=0),
    }
    results = []
    for name, manifold in cases.items():
        times = []
        for _ in range(args.repeats):
            tick = time.perf_counter()
            out = predict(manifold, tau, grid)
            times.append(time.perf_counter() - tick)
        results.append({"case": name, "median_s": statistics.median(times), "max_s": max(times),
                        "repeats": args.repeats, "solver_residual": out["residual"],
                        "goal_met": max(times) < 2.0})
        print(f"{name}: median {statistics.median(times):.3f} s, max {max(times):.3f} s "
              f"(goal < 2 s), solver residual {out['residual']:.1e}")
    payload = {
        "benchmark": "theory_predictions",
        "command": "python benchmarks/theory_predictions.py " + " ".join(sys.argv[1:]),
        "environment": {"machine": platform.machine(), "platform": platform.platform(),
                        "python": platform.python_version(), "numpy": np.__version__,
                        "scipy": scipy.__version__, "device": "cpu"},
        "config": {"n_tau": tau.size, "n_grid": grid.size},
        "goal_s": 2.0,
        "cases": results,
    }
    print(f"-> {write('theory_predictions_cpu', payload)}")


if __name__ == "__main__":
    main()
