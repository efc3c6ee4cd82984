"""Starting, resuming and sharing a run file: its creation, the checks that a resume continues
the same computation (options by value, model, anchors and grid by content: spectra.fingerprint),
the repair of damaged `done` entries, and the shards an interrupted torchrun sweep left."""

from __future__ import annotations

import datetime
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectra import distributed, hdf5, store
from spectra.errors import SpectraError
from spectra.sweep.options import CONTENT_OPTIONS, LATER_OPTIONS, MODEL_OPTIONS, EstimateOptions
from spectra.sweep.setup import Setup, topk_tolerance
from spectra.version import __version__

#: relative tolerance of the resume probe per dtype: rounding from other threads or devices
#: passes, another model does not
PROBE_RTOL = {"float32": 1e-4, "float64": 1e-9}


def run_attrs(path: Path) -> dict[str, Any]:
    """A run file's root attributes, decoded."""
    with store.open_checked(path) as f, hdf5.damaged(path):
        return {k: store._decode(v) for k, v in f.attrs.items()}


def check_resumable(path: Path, opts: EstimateOptions) -> dict[str, Any]:
    """The existing file's attributes, if it is a run with the same options. Options that lead
    to content (`CONTENT_OPTIONS`) are compared by that content in `check_content`, so the same
    spec named from another folder, or a default spelled out, resumes; in a file without a model
    fingerprint (written before them) the options naming the model are still compared by value."""
    attrs = run_attrs(path)
    old = {**LATER_OPTIONS, **json.loads(attrs.get("options") or "{}")}
    if opts.spacing is None:  # a resume keeps the file's grid spacing unless told otherwise
        opts.spacing = old.get("spacing")
    new = opts.to_dict()
    # a file from before fingerprints cannot compare its model by content: by value, as then
    by_content = CONTENT_OPTIONS if "model" in json.loads(attrs.get("fingerprints") or "{}") \
        else tuple(k for k in CONTENT_OPTIONS if k not in MODEL_OPTIONS)
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in by_content]
    if diff:
        parts = ", ".join(f"{k} ({old.get(k)!r} in the file, {new.get(k)!r} now)" for k in diff)
        raise SpectraError(f"cannot resume {path}: options differ: {parts}")
    return attrs


def check_content(path: Path, old_attrs: dict[str, Any], fingerprints: dict[str, Any],
                   x0: np.ndarray, times: np.ndarray) -> None:
    """Refuse a resume that would mix two computations in one file: other anchors or another
    time grid than the file's, or another model: by its fingerprint, and by its values at the
    first anchor (`probe`), where the file records them."""
    with store.open_checked(path) as f:
        old_x0, old_t = hdf5.read(f, "x0", path), hdf5.read(f, "t", path)
    if old_x0.shape != x0.shape or not np.array_equal(old_x0, x0):
        raise SpectraError(f"cannot resume {path}: the anchors differ from the run's x0 "
                           f"({old_x0.shape[0]} of shape {old_x0.shape[1:]} in the file, "
                           f"{x0.shape[0]} of shape {x0.shape[1:]} now; was the data changed?)")
    if old_t.shape != times.shape or not np.array_equal(old_t, times):
        raise SpectraError(f"cannot resume {path}: the time grid differs from the run's t "
                           f"({len(old_t)} times in the file, {len(times)} now)")
    recorded = json.loads(old_attrs.get("fingerprints") or "{}")
    if recorded.get("model") not in (None, fingerprints["model"]):
        raise SpectraError(f"cannot resume {path}: the model differs from the one the run was "
                           "started with (its weights or description changed)")
    old_probe, new_probe = recorded.get("probe"), fingerprints.get("probe")
    if old_probe is not None and new_probe is not None:
        rtol = PROBE_RTOL.get(old_attrs.get("dtype"), PROBE_RTOL["float32"])
        same = len(old_probe) == len(new_probe) and np.allclose(old_probe, new_probe, rtol=rtol, atol=0)
        if not same:
            raise SpectraError(f"cannot resume {path}: the model's values differ from the run's at the "
                               "first anchor (the model changed)")


def prepare_resume(path: Path, batch_size: int) -> None:
    """Ready a file for its resume in one opening: clear `done` where it holds non-finite singular
    values (a damaged file), so those Jacobians are computed again (saying how many), and record
    the chunk size the resume runs with."""
    with store.TrajectoryWriter(path) as writer:
        with hdf5.damaged(path):
            count = writer.reopen_nonfinite()
        if writer.file.attrs.get("batch_size") != batch_size:  # resumed with a new --batch-size
            writer.set_attrs(batch_size=batch_size)
    if count:
        warnings.warn(f"{path}: {count} Jacobians marked done held non-finite values; computing them "
                      "again", stacklevel=3)


def settle_shards(out: Path, opts: EstimateOptions, resume: bool, overwrite: bool) -> None:
    """Before anything else (rank 0): fold the shards an interrupted sweep left beside `out` into
    it on --resume, drop them on --overwrite or when `out` is gone."""
    parts = distributed.shards(out)
    if not parts:
        return
    if resume and not out.exists():
        raise SpectraError(f"{out} is missing but its sweep left {parts[0].name} and others: "
                           "move one of them to the run's name to resume, or remove them")
    if out.exists() and not (resume or overwrite):
        return  # estimate refuses the existing file next
    if resume:
        check_resumable(out, opts)
        for part in parts:
            store.merge(out, part)
    elif out.exists():
        store.open_checked(out).close()  # --overwrite replaces only a spectra run
    for part in parts:
        part.unlink()


def create_run(out: Path, opts: EstimateOptions, setup: Setup, command: str) -> None:
    """The new, empty run file with every attribute docs/format.md lists."""
    model, k = setup.model, setup.k
    attrs = {
        "spectra_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": command,
        "model": model.spec,
        "model_config": model.config(),
        "parameterization": model.parameterization,
        "schedule": model.schedule.to_dict(),
        "target": opts.target,
        "method": opts.method,
        "method_used": setup.path.method,
        "autodiff": setup.path.to_dict(),
        "at": opts.at,
        "dtype": opts.dtype,
        "device": str(setup.x0_t.device),
        "seed": opts.seed,
        "step": str(setup.step),
        "directions": opts.directions,
        "k": k,
        "tolerances": ({"tol": opts.tol, "effective_tol": topk_tolerance(opts.tol, setup.x0_t.dtype)}
                       if opts.method == "topk" else {}),
        "block_size": setup.block,
        "max_basis": setup.max_basis,
        "batch_size": setup.batch_size,
        "torch_version": torch.__version__,
        "tf32": setup.tf32,
        "options": opts.to_dict(),
        "fingerprints": setup.fingerprints,
        "model_output_dtype": setup.output_dtype,
    }
    times = setup.times
    grid = {"t": times, "alpha": setup.alpha, "sigma": setup.sigma, "tau": model.schedule.tau(times)}
    points_shape = (len(setup.x0), len(times), *setup.x0.shape[1:]) if opts.save_points else None
    vectors = (opts.save_vectors, setup.out_dim or setup.dim) if opts.save_vectors else None
    store.create(out, attrs, grid, setup.x0, k, points_shape, residuals=setup.path.method == "topk",
                 vectors=vectors)


def file_bytes(setup: Setup, opts: EstimateOptions) -> int:
    """The bytes of a new run file: its (N, T, K) and (N, T) datasets, x0 and saved points."""
    n, nt = len(setup.x0), len(setup.times)
    per_pair = 8 * (3 * setup.k + 5) + (8 * setup.dim if opts.save_points else 0) \
        + 8 * opts.save_vectors * (setup.dim + (setup.out_dim or setup.dim))
    return n * nt * per_pair + 8 * setup.x0.size
