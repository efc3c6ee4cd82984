"""The array files `spectra sample` and `spectra dataset` write, and only those they replace.

`spectra sample --out S.npy` writes the samples (N, *shape) as S.npy and how they were made (model,
sampler, seed, times and noise levels of the steps; spectra.sampling) as S.json, with
`format = "spectra-samples"`. `spectra dataset NAME --out D.npz` writes arrays `x` and `labels`
and the string array `format` = "spectra-dataset:NAME".
Both write under a temporary name and rename into place; with --overwrite they replace only a file
of their own kind.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from spectra.errors import SpectraError
from spectra.lock import locked
from spectra.outputs import check_folder, check_replaceable, replace_atomically

SAMPLES_FORMAT = "spectra-samples"
DATASET_FORMAT = "spectra-dataset"


def write_samples(out: str | Path, model_spec: str | None, n: int, sampler: str = "heun", steps: int = 32,
                  seed: int = 0, t_min: float | None = None, t_max: float | None = None,
                  overwrite: bool = False, progress: bool = False, **load: Any) -> Path:
    """Sample the model (spectra.sampling.sample) into OUT.npy and record the steps in OUT.json;
    `load`: load_model's schedule, parameterization, shape and allow_pickle for the spec."""
    from spectra.sampling import load_conditioned, sample

    out = _target(out, ".npy", overwrite, _own_samples)
    record = out.with_suffix(".json")
    check_replaceable(record, _own_record, "spectra samples record")
    model = load_conditioned(model_spec, **load)
    with locked(out):
        result = sample(model, n, steps, sampler, seed, t_min, t_max, progress)
        replace_atomically(out, lambda fh: np.save(fh, result.x))
        text = json.dumps({"format": SAMPLES_FORMAT, "shape": list(result.x.shape), **result.record()},
                          indent=2)
        replace_atomically(record, lambda fh: fh.write(text.encode()))
    return out


def write_dataset(name: str, out: str | Path, overwrite: bool = False) -> tuple[Path, tuple[int, ...]]:
    """Write dataset `name` (spectra.datasets) as OUT.npz holding x and labels."""
    from spectra.datasets import DATASETS, digits

    if name not in DATASETS:
        raise SpectraError(f"unknown dataset {name!r} (expected {', '.join(DATASETS)})")
    out = _target(out, ".npz", overwrite, _own_dataset)
    x, labels = digits()
    with locked(out):
        mark = np.array(f"{DATASET_FORMAT}:{name}")
        replace_atomically(out, lambda fh: np.savez(fh, x=x, labels=labels, format=mark))
    return out, x.shape


def _target(out: str | Path, suffix: str, overwrite: bool, is_own) -> Path:
    out = Path(out)
    if out.suffix.lower() != suffix:
        raise SpectraError(f"--out must name a {suffix} file, got {out.name}")
    check_folder(out)
    if out.exists() and not overwrite:
        raise SpectraError(f"{out} exists: pass --overwrite to replace it")
    check_replaceable(out, is_own, "file spectra wrote")
    return out


def _own_samples(path: Path) -> None:
    """Samples spectra wrote: an .npy whose OUT.json record says so."""
    with path.open("rb") as fh:
        if fh.read(6) != b"\x93NUMPY":
            raise SpectraError("not a .npy file")
    _own_record(path.with_suffix(".json"))


def _own_record(path: Path) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise SpectraError("no spectra samples record beside it") from None
    if not isinstance(data, dict) or data.get("format") != SAMPLES_FORMAT:
        raise SpectraError(f"no format {SAMPLES_FORMAT!r}")


def _own_dataset(path: Path) -> None:
    """A dataset spectra wrote: an .npz whose `format` array names one."""
    try:
        with zipfile.ZipFile(path) as archive:
            marked = "format.npy" in archive.namelist()
        with np.load(path, allow_pickle=False) as arrays:
            mark = str(arrays["format"]) if marked else ""
    except (OSError, ValueError, zipfile.BadZipFile):
        raise SpectraError("not an .npz archive") from None
    if not mark.startswith(f"{DATASET_FORMAT}:"):
        raise SpectraError(f"its format is {mark[:40]!r}, not a spectra dataset")
