"""Read sample arrays (N, *shape) from .npy, .npz and .h5 files, safely.

.npy/.npz are read with allow_pickle=False; .npz and .h5 files holding several arrays must name
one `x` (or `data` / `samples`); a file with a single array needs no name. A `spectra train`
checkpoint (.pt, read with weights_only=True) gives the training points it stores (`--n-train`).
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from spectra.errors import SpectraError

_PREFERRED = ("x", "data", "samples")


def _pick(names: list[str], path: Path) -> str:
    if len(names) == 1:
        return names[0]
    for name in _PREFERRED:
        if name in names:
            return name
    raise SpectraError(
        f"{path} holds several arrays ({', '.join(names)}); name one of them 'x'"
    )


def load_array(path: str | Path) -> np.ndarray:
    """The sample array in `path`, as float64, shape (N, *shape) with N >= 1."""
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            arr = np.load(path, allow_pickle=False)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                arr = z[_pick(list(z.files), path)]
        elif suffix in (".h5", ".hdf5"):
            with h5py.File(path, "r") as f:
                names = [k for k, v in f.items() if isinstance(v, h5py.Dataset)]
                if not names:
                    raise SpectraError(f"{path} holds no dataset")
                arr = f[_pick(names, path)][()]
        elif suffix == ".pt":
            arr = _train_points(path)
        else:
            raise SpectraError(f"unsupported data file type {suffix!r} (use .npy, .npz, .h5 or a "
                               "spectra train checkpoint .pt)")
    except SpectraError:
        raise
    except (OSError, ValueError) as exc:
        raise SpectraError(f"cannot read {path}: {exc}") from None
    arr = np.asarray(arr)
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise SpectraError(f"{path}: expected samples of shape (N, *shape), got {arr.shape}")
    if not np.issubdtype(arr.dtype, np.number):
        raise SpectraError(f"{path}: samples must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise SpectraError(f"{path}: samples contain NaN or infinite values")
    return arr


def _train_points(path: Path) -> np.ndarray:
    from spectra.train import read_checkpoint

    ck = read_checkpoint(path)
    if "train_points" not in ck:
        raise SpectraError(f"{path} was trained on fresh samples: it stores no training points "
                           "(train with --n-train N)")
    return ck["train_points"].numpy()
