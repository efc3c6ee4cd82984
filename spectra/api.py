"""The Python API: `spectra.estimate(...)` runs the sweep of `spectra estimate` on a model given as
a spec string, a ScoreModel or a bare nn.Module, and returns the trajectory it wrote.

    import spectra
    run = spectra.estimate(net, out="run.h5", schedule="vp", parameterization="eps",
                           data=x0, times=[0.01, 0.1, 0.5], method="auto")
    run["singular_values"]        # (N, T, K)

Everything else is an option of `spectra estimate` under its Python name (docs/cli.md).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from spectra.errors import SpectraError
from spectra.names import FEATURE_PREFIX
from spectra.store import Trajectory, load
from spectra.sweep.options import EstimateOptions


def estimate(
    model: Any = None,
    out: str | Path = "run.h5",
    *,
    data: str | Path | np.ndarray | None = None,
    times: Sequence[float] | None = None,
    method: str = "auto",
    schedule: Any = None,
    parameterization: str | None = None,
    shape: Sequence[int] | None = None,
    feature: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    **options: Any,
) -> Trajectory:
    """Jacobian spectra of `model` over diffusion times, written to `out` (HDF5) and returned.

    Args:
        model: a spec string (as `--model`; None: the shipped demo), a spectra ScoreModel, or an
            nn.Module called as net(x, t) with `schedule` (a name or a spectra Schedule) and
            `parameterization` (eps, x0, v or score) saying what it predicts.
        out: the run file.
        data: anchors: None (the model's own data), "noise", an array file, or an array
            (N, *shape) in memory (written to a temporary .npy for the run's fingerprint).
        times: diffusion times; None: the default grid (`n_times`, `t_min`, `t_max`).
        method: auto | jvp | vjp | fd-forward | fd-central | topk.
        feature: the Jacobian of this submodule's activation (as `--feature`) instead of `target`.
        resume, overwrite, progress: as the command's --resume, --overwrite and (not) --quiet.
        options: any other field of spectra.sweep.options.EstimateOptions (n_samples, target,
            k, tol, at, dtype, device, batch_size, seed, save_vectors, ...).
    Returns:
        the complete run (spectra.Trajectory; `.to_xarray()` where xarray is installed).
    """
    from spectra.models.base import ScoreModel
    from spectra.models.specs import model_from_object
    from spectra.sweep.estimate import estimate as run_sweep

    known = {f for f in EstimateOptions.__dataclass_fields__}
    unknown = sorted(set(options) - known)
    if unknown:
        raise SpectraError(f"unknown option(s) {', '.join(unknown)} (the fields of "
                           "spectra.sweep.options.EstimateOptions)")
    if feature is not None:
        if options.get("target") is not None:
            raise SpectraError("feature and target conflict: a run takes the Jacobian of one of them")
        options["target"] = FEATURE_PREFIX + feature
    in_memory = model is not None and not isinstance(model, (str, Path))
    shape = tuple(int(s) for s in shape) if shape is not None else None
    given = None
    if in_memory:  # a copy: the sweep conditions the model and moves it to its device and dtype
        given = model if isinstance(model, ScoreModel) else model_from_object(model, schedule,
                                                                               parameterization, shape)
        given = copy.deepcopy(given)
        spec = given.spec
    else:
        spec = None if model is None else str(model)
    named_schedule = schedule if isinstance(schedule, str) or schedule is None else None
    with tempfile.TemporaryDirectory(prefix="spectra-data-") as folder:
        if isinstance(data, np.ndarray):
            path = Path(folder) / "data.npy"
            np.save(path, data)
            data = str(path)
        opts = EstimateOptions(
            model=spec, data=None if data is None else str(data),
            times=None if times is None else [float(t) for t in times], method=method,
            schedule=None if in_memory else named_schedule,
            parameterization=None if in_memory else parameterization,
            shape=None if in_memory else shape, **options)
        written = run_sweep(out, opts, resume=resume, overwrite=overwrite, progress=progress,
                            command="spectra.estimate()", model=given)
    return load(written)
