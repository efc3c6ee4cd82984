"""The pieces of a sweep (`spectra estimate`), each with one job; spectra.sweep.estimate puts them
in order. Layers, one way: options <- inputs <- setup <- resume, runner <- estimate."""
