"""The version of spectra, recorded in every run file."""

__version__ = "0.2.0.dev0"
