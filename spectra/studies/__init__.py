"""Studies: what a researcher asks of measured spectra, each in a module of its own.

A study reads run files through spectra.store (never the engine's internals), takes its theory
from spectra.theory and its measurements from spectra.analysis, draws with spectra.plot, and
writes its outputs (figures, `metrics.json`, a group in the run file) through the same safety
rules as every writer (spectra.lock, spectra.outputs). The CLI gives each study its command.

* `phases`: the spectral gaps and the trivial / manifold coverage / consolidation phases of
  Ventura et al. (`spectra compare-theory`, `spectra theory`, `spectra plot`); `mixtures`: its
  exact prediction at a run's points for Gaussian-mixture data, the class gap and the phases
  trivial / manifold coverage / class commitment / consolidation (theory.md 3.6).
* `memorization`: the memorized fraction of a model's samples (`spectra memorization`);
  `snapshots`: `spectra estimate` over a folder of training snapshots, with its summary
  (theory.md 3.5).
* `representation`: Li et al.'s SNR, a linear probe and, on MoLRG data, the exact-subspace SNR and
  Theorem 1 across noise levels (`spectra represent`; theory.md 3.8); it evaluates a model itself
  and reads no run file. `subspaces`: principal angles between the top singular subspaces a run
  saved (`--save-vectors`) and reference subspaces (`spectra angles`; theory.md 3.6).
"""
