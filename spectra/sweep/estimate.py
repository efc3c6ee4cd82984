"""anchors x times -> engine -> store: the body of `spectra estimate` and `spectra.estimate()`.

The sweep's pieces live in spectra.sweep: its options (sweep.options), what it evaluates at
(sweep.inputs), how it runs (sweep.setup), its run file across resumes and shards
(sweep.resume) and its one loop (sweep.runner). Here they are put in order, with the lock held.

Reproducibility: every random draw is keyed by (seed, purpose, anchor[, time]) with numpy's
SeedSequence, and anchors are processed in a fixed chunk layout, so a run resumed after a crash
produces the same values as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path

from spectra import distributed, outputs, store
from spectra.errors import SpectraError
from spectra.limits import require_disk
from spectra.lock import locked
from spectra.models.base import ScoreModel
from spectra.sweep import runner
from spectra.sweep.options import EstimateOptions, check_request
from spectra.sweep.resume import (
    check_content,
    check_resumable,
    create_run,
    file_bytes,
    prepare_resume,
    run_attrs,
    settle_shards,
)
from spectra.sweep.setup import content, per_chunk, recorded_path, recorded_topk_shape, setup_run

__all__ = ["EstimateOptions", "estimate"]


def estimate(
    out: str | Path,
    opts: EstimateOptions,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    rendezvous_timeout: float = distributed.DEFAULT_RENDEZVOUS_TIMEOUT,
    model: ScoreModel | None = None,
) -> Path:
    """Run (or resume) a trajectory estimate and return the path of the complete run file.
    Under torchrun the anchors are shared out among the ranks (spectra.distributed), whose
    rendezvous waits at most `rendezvous_timeout` seconds. The process that writes RUN.h5 (rank
    0) holds spectra's lock on it throughout (spectra.lock). `model`: a model already in memory
    (spectra.api), used instead of loading opts.model."""
    out = Path(out)
    check_request(opts, resume, overwrite)
    sweep = distributed.current(rendezvous_timeout)
    with contextlib.ExitStack() as stack:
        error = None
        if sweep.rank == 0:
            try:
                outputs.check_folder(out)
                stack.enter_context(locked(out))
                settle_shards(out, opts, resume, overwrite)
            except SpectraError as exc:
                error = str(exc)
        sweep.agree(error)
        _estimate_locked(out, opts, resume, overwrite, progress, command, sweep, model)
    return out


def damaged(out: Path) -> bool:
    """Whether a run holds values marked done that are not finite (resumed: computed again)."""
    with store.TrajectoryWriter(out) as writer:
        return bool(writer.nonfinite().any())


def _estimate_locked(out: Path, opts: EstimateOptions, resume: bool, overwrite: bool, progress: bool,
                     command: str, sweep: distributed.Sweep, model: ScoreModel | None) -> None:
    exists = out.exists()
    if exists and not (resume or overwrite):
        raise SpectraError(f"{out} exists: pass --resume to continue it or --overwrite to replace it")
    old_attrs = check_resumable(out, opts) if exists and resume else None
    if old_attrs is not None and old_attrs.get("complete") and not damaged(out):
        _, times, x0, fingerprints = content(opts, model)
        check_content(out, old_attrs, fingerprints, x0, times)
        return
    if exists and overwrite:
        store.open_checked(out).close()  # only ever replace a spectra run, never a foreign file

    setup, error = None, None
    try:
        setup = setup_run(opts, old_attrs, sweep, model)
        if old_attrs is not None:
            check_content(out, old_attrs, setup.fingerprints, setup.x0, setup.times)
        elif sweep.rank == 0:
            require_disk(out.parent, file_bytes(setup, opts), f"the run file {out.name}")
    except SpectraError as exc:
        error = str(exc)
    sweep.agree(error)
    if sweep.rank == 0 and old_attrs is None:
        create_run(out, opts, setup, command)
    elif sweep.rank == 0:
        prepare_resume(out, setup.batch_size)
    sweep.barrier()
    target = out
    if sweep.world > 1:  # every rank takes rank 0's chunk size and path, then fills its shard
        attrs = run_attrs(out)
        setup.batch_size, setup.path = int(attrs["batch_size"]), recorded_path(attrs)
        if setup.path.method == "topk":  # rank 0's measured block and basis: one chunk layout
            setup.block, setup.max_basis = recorded_topk_shape(attrs, setup.dim)
        target = sweep.shard(out)
        partial = target.with_name(target.name + ".tmp")
        outputs.clear_stale(partial)
        shutil.copyfile(out, partial)
        os.replace(partial, target)
    progress = progress and sweep.rank == 0
    n_chunks = -(-len(setup.x0) // per_chunk(setup))
    if sweep.rank == 0 and n_chunks < sweep.world:
        warnings.warn(f"{n_chunks} anchor chunk(s) for {sweep.world} ranks: some ranks stay idle "
                      "(a smaller --batch-size makes more chunks)", stacklevel=3)
    runner.run(target, setup, opts, progress, sweep)
    sweep.barrier()
    if sweep.world > 1 and sweep.rank == 0:
        for part in distributed.shards(out):
            store.merge(out, part)
            part.unlink()
    sweep.barrier()
