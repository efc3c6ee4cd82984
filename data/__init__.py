"""Shipped assets (installed as `spectra_data`): the demo model and example specs."""
