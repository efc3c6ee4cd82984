"""spectra: Jacobian spectra of diffusion models across diffusion time.

`spectra.load(path)` reads a run file written by `spectra estimate` (see spectra.store);
`spectra.estimate(model, out=...)` runs that sweep from Python (spectra.api; imported on first use,
so that `import spectra` needs no torch).

Layout (docs/design.md says more; tests/test_layout.py checks it): imports point one way down
cli and spectra.api -> commands (spectra.sweep.estimate, spectra.train, spectra.studies) -> the
sweep's pieces (spectra.sweep) -> engine and store (spectra.jacobian, spectra.store,
spectra.fingerprint, spectra.distributed) -> spectra.models -> data and formats (spectra.theory,
analysis, plot, spec_toml, checkpoint, arrays, hdf5, outputs) -> base (spectra.errors, names,
limits, schedules, lock, version), never in a circle; no module over about 400 lines unless it is
one algorithm.
"""

from typing import Any

from spectra.store import Trajectory, load
from spectra.version import __version__

__all__ = ["Trajectory", "__version__", "estimate", "load"]


def __getattr__(name: str) -> Any:
    """spectra.estimate, imported on first use (it needs torch)."""
    if name == "estimate":
        from spectra.api import estimate

        return estimate
    raise AttributeError(f"module 'spectra' has no attribute {name!r}")
