"""spectra: Jacobian spectra of diffusion models across diffusion time."""

__version__ = "0.1.0"
