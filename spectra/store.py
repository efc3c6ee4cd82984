"""The HDF5 trajectory file, format_version 2 (docs/format.md); version 1 files (the same without
dimension scales) are read and resumed as they are.

Durability (prior-art.md, h5py 1807/714): a new file is written in full (every dataset allocated
and NaN-filled) under a temporary name and renamed into place, so a file at the final path is
always a readable one; afterwards only fixed-size datasets are overwritten in place. Each unit of
work writes its values, flushes, then sets its `done` entries and flushes again, so `done` never
certifies values that did not reach the disk. A run killed at any point resumes from `done`.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from spectra import dimensions, hdf5
from spectra.errors import SpectraError
from spectra.names import FEATURE_PREFIX
from spectra.outputs import clear_stale
from spectra.schedules import Schedule

FORMAT = "spectra-trajectory"
FORMAT_VERSION = 2
#: the versions this spectra reads: 2 adds the named dimensions of spectra.dimensions
READABLE_VERSIONS = (1, 2)

#: datasets of shape (N, T, K) and (N, T) holding per-(anchor, time) results
VALUE_DATASETS = ("singular_values", "sym_eigenvalues", "residuals")
SCALAR_DATASETS = ("asymmetry", "seconds")
#: (N, T) product counts of the top-k method (NaN where not computed)
PRODUCT_DATASETS = ("jvp_products", "vjp_products")
#: (N, T, V, D) and (N, T, V, F): the top V right and left singular vectors (--save-vectors)
VECTOR_DATASETS = ("right_vectors", "left_vectors")


def _encode(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, str):
        return str(value)  # numpy str_ has no HDF5 type
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")  # a damaged string still reads
    if isinstance(value, np.generic):
        value = value.item()
    return value


def check_format(f: h5py.File, path: str | Path) -> None:
    """Raise SpectraError unless f is a spectra trajectory of this format version."""
    fmt = _decode(f.attrs.get("format", ""))
    if fmt != FORMAT:
        raise SpectraError(f"{path} is not a spectra trajectory file (format {fmt or 'missing'!r})")
    version = _decode(f.attrs.get("format_version", -1))
    if version not in READABLE_VERSIONS:
        raise SpectraError(f"{path} has format_version {version}; this spectra reads versions "
                           f"{', '.join(map(str, READABLE_VERSIONS))}")


#: root attributes every run file has, and those of them that hold a JSON table
REQUIRED_ATTRS = ("complete", "target", "method_used", "options", "schedule", "k")
JSON_ATTRS = ("options", "schedule", "model_config", "autodiff", "tolerances", "tf32", "fingerprints")
#: the targets a run can hold
TARGET_VALUES = ("score", "denoiser", "eps")
#: the Python types of the scalar attributes readers rely on, once decoded
ATTR_TYPES = {"complete": (bool, int), "k": int, "batch_size": int, "target": str, "method_used": str,
              "seed": int, "dtype": str}


def check_structure(f: h5py.File, path: str | Path) -> tuple[int, int]:
    """Raise SpectraError unless f holds what the format promises, read from metadata alone:
    the required attributes (JSON ones decoding to tables), the grid (T,), `x0` (N, *shape), the
    value datasets (N, T, K) and (N, T) in floating point, a boolean `done` (N, T), and every
    dataset inside the file itself (spectra.hdf5). Returns (N, T)."""
    missing = [name for name in REQUIRED_ATTRS if name not in f.attrs]
    if missing:
        raise SpectraError(f"{path} is a damaged run file (missing attribute {missing[0]!r})")
    for name, kind in ATTR_TYPES.items():
        value = _decode(f.attrs[name]) if name in f.attrs else None
        if value is not None and not isinstance(value, kind) or isinstance(value, bool) and kind is int:
            raise SpectraError(f"{path} is a damaged run file (attribute {name!r} is {value!r})")
    target = _decode(f.attrs["target"])
    if target not in TARGET_VALUES and not (isinstance(target, str) and target.startswith(FEATURE_PREFIX)
                                            and len(target) > len(FEATURE_PREFIX)):
        raise SpectraError(f"{path} is a damaged run file (target {_decode(f.attrs['target'])!r})")
    for name in JSON_ATTRS:
        if name in f.attrs:
            try:
                table = json.loads(_decode(f.attrs[name]) or "{}")
            except (TypeError, ValueError, UnicodeDecodeError):
                raise SpectraError(f"{path} is a damaged run file (attribute {name!r} is not JSON)") from None
            if not isinstance(table, dict):
                raise SpectraError(f"{path} is a damaged run file (attribute {name!r} is not a table)")
    for name in ("t", "x0"):
        if f.get(name, getlink=True) is None:
            raise SpectraError(f"{path} is a damaged run file (no dataset {name!r})")
    t = hdf5.dataset(f, "t", path)
    x0 = hdf5.dataset(f, "x0", path)
    if t.ndim != 1 or x0.ndim < 2:
        raise SpectraError(f"{path} is a damaged run file (t has shape {t.shape}, x0 {x0.shape})")
    n, nt = x0.shape[0], t.shape[0]
    if n == 0 or nt == 0:
        raise SpectraError(f"{path} is a damaged run file ({n} anchors and {nt} times)")
    try:
        Schedule.from_dict(json.loads(_decode(f.attrs["schedule"]) or "{}"))
    except SpectraError as exc:
        raise SpectraError(f"{path} is a damaged run file (schedule: {exc})") from None
    k = None  # any number of values
    required = {name: (nt,) for name in ("t", "alpha", "sigma", "tau")}
    required.update({name: (n, nt, k) for name in VALUE_DATASETS[:2]})
    required.update({name: (n, nt) for name in SCALAR_DATASETS + ("done",)})
    optional = {name: (n, nt) for name in PRODUCT_DATASETS}
    optional.update({"residuals": (n, nt, k), "points": (n, nt, *x0.shape[1:]),
                     "right_vectors": (n, nt, k, math.prod(x0.shape[1:])), "left_vectors": (n, nt, k, k)})
    if ("right_vectors" in f) != ("left_vectors" in f):
        raise SpectraError(f"{path} is a damaged run file (it holds one of right_vectors and left_vectors)")
    if "right_vectors" in f and "left_vectors" in f:  # one V for both
        right, left = hdf5.dataset(f, "right_vectors", path), hdf5.dataset(f, "left_vectors", path)
        if right.ndim == left.ndim == 4:
            optional["left_vectors"] = (n, nt, right.shape[2], None)
    present = {**required, **{name: want for name, want in optional.items() if name in f}}
    for name, want in present.items():
        if f.get(name, getlink=True) is None:
            raise SpectraError(f"{path} is a damaged run file (no dataset {name!r})")
        dset = hdf5.dataset(f, name, path)
        kind = "b" if name == "done" else "f"
        fits = len(dset.shape) == len(want) and all(
            w is None or w == d for w, d in zip(want, dset.shape, strict=True))
        if not fits or dset.dtype.kind != kind:
            expected = tuple("K" if w is None else w for w in want)
            raise SpectraError(f"{path} is a damaged run file ({name} has shape {dset.shape} and dtype "
                               f"{dset.dtype}; expected {expected} of {'bool' if kind == 'b' else 'floats'})")
    grid = {name: hdf5.read(f, name, path) for name in ("t", "alpha", "sigma", "tau")}
    if not all(np.all(np.isfinite(v)) for v in grid.values()) or np.any(grid["tau"] <= 0) \
            or np.any(grid["alpha"] <= 0) or np.any(grid["sigma"] <= 0):
        raise SpectraError(f"{path} is a damaged run file (its time grid holds non-finite or "
                           "non-positive schedule values)")
    return n, nt


def open_checked(path: str | Path, mode: str = "r") -> h5py.File:
    """Open an existing trajectory file, validating its format and structure; one-line
    SpectraError otherwise."""
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"run file not found: {path}")
    f = hdf5.open_file(path, mode)
    try:
        with hdf5.damaged(path):
            check_format(f, path)
            check_structure(f, path)
    except BaseException:
        f.close()
        raise
    return f


@contextmanager
def atomic_h5(path: str | Path, suffix: str = ".tmp") -> Iterator[h5py.File]:
    """A new HDF5 file written under a temporary name beside `path` and renamed over it when the
    block ends; on any error (or interrupt) the temporary file is removed and `path` is left as
    it was."""
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    clear_stale(tmp)
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def create(
    path: str | Path,
    attrs: dict[str, Any],
    grid: dict[str, np.ndarray],
    x0: np.ndarray,
    k: int,
    points_shape: tuple[int, ...] | None = None,
    residuals: bool = False,
    vectors: tuple[int, int] | None = None,
) -> None:
    """Write a new, empty trajectory file at `path` (replacing any file there, atomically).

    Args:
        attrs: root attributes (dicts and lists are stored as JSON strings, None as "").
        grid: `t`, `alpha`, `sigma`, `tau`, each (T,).
        x0: the anchors (N, *shape).
        k: K, the number of values kept per (anchor, time).
        points_shape: (N, T, *shape) to keep the evaluation points, or None.
        residuals: whether to allocate `residuals` and the product counts (top-k methods).
        vectors: (V, F) to keep the top V right (N, T, V, D) and left (N, T, V, F) singular
            vectors, or None.
    """
    n, t = len(x0), len(grid["t"])
    with atomic_h5(path) as f:
        f.attrs.update({"format": FORMAT, "format_version": FORMAT_VERSION})
        for key, value in attrs.items():
            f.attrs[key] = _encode(value)
        f.attrs["complete"] = False
        for name in ("t", "alpha", "sigma", "tau"):
            f.create_dataset(name, data=np.asarray(grid[name], dtype=np.float64))
        f.create_dataset("x0", data=np.asarray(x0, dtype=np.float64))
        names = VALUE_DATASETS if residuals else VALUE_DATASETS[:2]
        for name in names:
            _allocated(f, name, (n, t, k), np.nan)
        for name in SCALAR_DATASETS + (PRODUCT_DATASETS if residuals else ()):
            _allocated(f, name, (n, t), np.nan)
        _allocated(f, "done", (n, t), False)
        if points_shape is not None:
            _allocated(f, "points", points_shape, np.nan)
        if vectors is not None:
            kept, out_dim = vectors
            _allocated(f, "right_vectors", (n, t, kept, x0[0].size), np.nan)
            _allocated(f, "left_vectors", (n, t, kept, out_dim), np.nan)
        dimensions.attach(f)


def _allocated(f: h5py.File, name: str, shape: tuple[int, ...], fill: float | bool) -> None:
    """A contiguous dataset filled with `fill` and given its disk space now, by HDF5 itself
    (no array of its size in memory): a disk too small fails here, never mid-run."""
    dtype = np.dtype(bool) if isinstance(fill, bool) else np.dtype(np.float64)
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_ALLOC)
    f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill, dcpl=dcpl)


class TrajectoryWriter:
    """Fills an existing trajectory file unit by unit. Use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.file = open_checked(self.path, "r+")

    def __enter__(self) -> TrajectoryWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    @property
    def done(self) -> np.ndarray:
        return self.file["done"][()]

    def set_attrs(self, **attrs: Any) -> None:
        for key, value in attrs.items():
            self.file.attrs[key] = _encode(value)
        self.file.flush()

    def write(
        self,
        anchors: np.ndarray,
        t_index: int,
        values: dict[str, np.ndarray],
        points: np.ndarray | None = None,
    ) -> None:
        """Write results for `anchors` (indices) at time index t_index, then mark them done.

        values maps dataset names to arrays with a leading anchor axis: (n, K) for
        singular_values / sym_eigenvalues / residuals, (n,) for asymmetry / seconds.
        """
        rows = sorted(int(n) for n in anchors)
        if rows != [int(n) for n in anchors] or len(set(rows)) != len(rows):
            raise ValueError("anchor indices must be increasing")
        for name, arr in values.items():
            dset = self.file[name]
            if dset.ndim == 3:
                dset[rows, t_index, : arr.shape[1]] = arr
            else:
                dset[rows, t_index] = arr
        if points is not None:
            self.file["points"][rows, t_index] = points
        self.file.flush()
        self.file["done"][rows, t_index] = True
        self.file.flush()

    def nonfinite(self) -> np.ndarray:
        """(N, T): the pairs marked done whose singular values (or saved vectors) are not all
        finite (a damaged file)."""
        finite = np.isfinite(self.file["singular_values"][()]).all(axis=-1)
        for name in VECTOR_DATASETS:
            if name in self.file:
                finite &= np.isfinite(self.file[name][()]).all(axis=(-2, -1))
        return self.done & ~finite

    def reopen_nonfinite(self) -> int:
        """Clear `done` where the values it certifies are not all finite (nonfinite); returns how
        many (anchor, time) pairs are to be computed again."""
        done = self.done
        bad = self.nonfinite()
        if bad.any():
            self.file["done"][...] = done & ~bad
            self.file.attrs["complete"] = False
            self.file.flush()
        return int(bad.sum())

    def finish(self) -> None:
        if self.done.all():
            self.file.attrs["complete"] = True
        self.file.flush()


def merge(path: str | Path, part: str | Path) -> int:
    """Copy into run `path` the (anchor, time) values that run `part` (a shard of the same run:
    same `created` stamp) has done and `path` has not: values first, then `done`. Returns how
    many were merged; `part` is left as it is."""
    with open_checked(part) as src, open_checked(path, "r+") as dst:
        if _decode(src.attrs.get("created")) != _decode(dst.attrs.get("created")):
            raise SpectraError(f"{part} is not a shard of {path} (another run's leftover); remove it")
        new = src["done"][()] & ~dst["done"][()]
        if not new.any():
            if dst["done"][()].all() and not dst.attrs.get("complete"):
                dst.attrs["complete"] = True
                dst.flush()
            return 0
        for name in VALUE_DATASETS + SCALAR_DATASETS + PRODUCT_DATASETS + VECTOR_DATASETS + ("points",):
            if name in dst:
                values = dst[name][()]
                values[new] = src[name][()][new]
                dst[name][...] = values
        dst.flush()
        dst["done"][...] = dst["done"][()] | new
        if dst["done"][()].all():
            dst.attrs["complete"] = True
        dst.flush()
        return int(new.sum())


@dataclass
class Trajectory:
    """A run file's arrays and metadata (what spectra.load returns)."""

    path: Path
    attrs: dict[str, Any]
    arrays: dict[str, np.ndarray] = field(repr=False)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def __contains__(self, name: str) -> bool:
        return name in self.arrays

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete", False))

    @property
    def options(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("options") or "{}")

    @property
    def schedule(self) -> dict[str, Any]:
        return json.loads(self.attrs.get("schedule") or "{}")

    def to_xarray(self) -> Any:
        """An xarray.Dataset with named dimensions and the grid as coordinates (spectra.dimensions)."""
        return dimensions.to_xarray(self)

    def to_pandas(self) -> Any:
        """A tidy pandas DataFrame, one row per (anchor, time, value) (spectra.dimensions)."""
        return dimensions.to_frame(self)


def load(path: str | Path) -> Trajectory:
    """Read a trajectory file: every dataset (theory/ ones under 'theory/NAME') but the dimension
    scales, and every attribute."""
    with open_checked(path) as f, hdf5.damaged(path):
        attrs = {k: _decode(v) for k, v in f.attrs.items()}
        arrays = {name: hdf5.read(f, name, path) for name in hdf5.dataset_names(f)
                  if not h5py.h5ds.is_scale(hdf5.dataset(f, name, path).id)}
    return Trajectory(Path(path), attrs, arrays)
