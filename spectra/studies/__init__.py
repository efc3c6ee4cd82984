"""Studies: what a researcher asks of measured spectra, each in a module of its own.

A study reads run files through spectra.store (never the engine's internals), takes its theory
from spectra.theory and its measurements from spectra.analysis, draws with spectra.plot, and
writes its outputs (figures, `metrics.json`, a group in the run file) through the same safety
rules as every writer (spectra.lock, spectra.outputs). The CLI gives each study its command.

* `phases`: the spectral gaps and the trivial / manifold coverage / consolidation phases of
  Ventura et al. (`spectra compare-theory`, `spectra theory`, `spectra plot`).

The memorization and representation studies of the open issues belong here, beside it.
"""
