"""spectra: Jacobian spectra of diffusion models across diffusion time.

`spectra.load(path)` reads a run file written by `spectra estimate` (see spectra.store).
"""

from spectra.store import Trajectory, load

__version__ = "0.1.0"

__all__ = ["Trajectory", "__version__", "load"]
