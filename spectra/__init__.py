"""spectra: Jacobian spectra of diffusion models across diffusion time.

`spectra.load(path)` reads a run file written by `spectra estimate` (see spectra.store).

Layout (docs/design.md says more; tests/test_layout.py checks it): imports point one way down
cli -> commands (spectra.estimate, spectra.train, spectra.studies) -> spectra.sweep -> engine and
store (spectra.jacobian, spectra.store, spectra.fingerprint, spectra.distributed) -> spectra.models
-> data and formats (spectra.theory, analysis, plot, spec_toml, checkpoint, arrays, hdf5, outputs)
-> base (spectra.errors, limits, schedules, lock, version), never in a circle; no module over about
400 lines unless it is one algorithm.
"""

from spectra.store import Trajectory, load
from spectra.version import __version__

__all__ = ["Trajectory", "__version__", "load"]
