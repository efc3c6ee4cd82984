"""Read sample arrays (N, *shape) from .npy, .npz and .h5 files, safely.

.npy/.npz are read with allow_pickle=False; in .npz and .h5 files holding several arrays,
`FILE:KEY` selects one (else one named `x`, `data` or `samples` is taken); a file with a single
array needs no name. A `spectra train`
checkpoint (.pt, read with weights_only=True) gives the training points it stores (`--n-train`).
Before any array is read its header's size is checked against the file and the memory available
(a damaged or hostile header may declare terabytes), and an .h5 dataset must keep its data inside
the file (spectra.hdf5).
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np

from spectra import hdf5
from spectra.errors import SpectraError
from spectra.limits import require_memory

_PREFERRED = ("x", "data", "samples")


def _pick(names: list[str], path: Path, key: str | None = None) -> str:
    if key is not None:
        if key not in names:
            raise SpectraError(f"{path} has no array {key!r} (it holds {', '.join(names)})")
        return key
    if len(names) == 1:
        return names[0]
    for name in _PREFERRED:
        if name in names:
            return name
    raise SpectraError(
        f"{path} holds several arrays ({', '.join(names)}); select one as {path}:NAME"
    )


#: the file types that hold named arrays, selected by FILE:KEY
KEYED = (".npz", ".h5", ".hdf5")


def data_file(spec: str | Path) -> tuple[Path, str | None]:
    """The file and the array key of a data spec: `FILE` or `FILE:KEY` (for .npz and .h5
    files; a path that exists as it is written is a file, colons and all)."""
    path = Path(spec)
    if path.exists() or ":" not in str(spec):
        return path, None
    head, _, key = str(spec).rpartition(":")
    if Path(head).suffix.lower() in KEYED and key:
        return Path(head), key
    return path, None


def _declared(shape: tuple[int, ...], dtype: np.dtype) -> float:
    return float(np.prod(shape, dtype=np.float64)) * dtype.itemsize


def _read_npy(path: Path) -> np.ndarray:
    """A .npy array: its header checked against the file's length (mmap refuses a header that
    declares more than the file holds) and the memory, then read."""
    arr = np.load(path, mmap_mode="r", allow_pickle=False)
    require_memory(arr.nbytes, f"{path} (an array of shape {arr.shape})")
    return np.array(arr)


def _read_npz(path: Path, key: str | None = None) -> np.ndarray:
    """One array of an .npz archive (named as np.load names them: the member's name less
    `.npy`): its header read first and checked against the member's uncompressed length and the
    memory, then the array read from the same member."""
    with zipfile.ZipFile(path) as archive:
        members = {i.filename[: -len(".npy")]: i for i in archive.infolist() if i.filename.endswith(".npy")}
        if not members:
            raise SpectraError(f"{path} holds no array")
        name = _pick(list(members), path, key)
        with archive.open(members[name]) as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            declared = _declared(shape, dtype)
            if declared > members[name].file_size:
                raise SpectraError(f"{path}: array {name!r} declares shape {shape} but holds "
                                   f"{members[name].file_size} bytes (a damaged file)")
            require_memory(declared, f"{path}: array {name!r} of shape {shape}")
            if dtype.hasobject:
                raise SpectraError(f"{path}: array {name!r} holds Python objects (pickles are not read)")
            data = fh.read(int(declared))
        if len(data) != declared:
            raise SpectraError(f"{path}: array {name!r} is truncated (a damaged file)")
        arr = np.frombuffer(data, dtype=dtype)
        return arr.reshape(shape[::-1]).T if fortran else arr.reshape(shape)


def _read_h5(path: Path, key: str | None = None) -> np.ndarray:
    with hdf5.open_file(path) as f:
        names = hdf5.top_level_datasets(f)
        if not names:
            raise SpectraError(f"{path} holds no dataset")
        name = _pick(names, path, key)
        return hdf5.read(f, name, path)


def load_array(spec: str | Path) -> np.ndarray:
    """The sample array of a data spec (`FILE` or `FILE:KEY`, data_file), as float64, shape
    (N, *shape) with N >= 1, real and finite."""
    path, key = data_file(spec)
    if not path.is_file():
        raise SpectraError(f"data file not found: {path}")
    suffix = path.suffix.lower()
    readers = {".npy": _read_npy, ".npz": _read_npz, ".h5": _read_h5, ".hdf5": _read_h5,
               ".pt": _train_points}
    if suffix not in readers:
        raise SpectraError(f"unsupported data file type {suffix!r} (use .npy, .npz, .h5 or a "
                           "spectra train checkpoint .pt)")
    try:
        read = readers[suffix]
        arr = np.asarray(read(path, key) if suffix in KEYED else read(path))
    except SpectraError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
            RuntimeError, MemoryError) as exc:  # every way a damaged archive or array can fail
        raise SpectraError(f"cannot read {path}: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    if arr.ndim < 2 or arr.shape[0] == 0:
        raise SpectraError(f"{path}: expected samples of shape (N, *shape), got {arr.shape}")
    if np.iscomplexobj(arr):
        raise SpectraError(f"{path}: samples are complex ({arr.dtype}); spectra needs real samples")
    if not np.issubdtype(arr.dtype, np.number):
        raise SpectraError(f"{path}: samples must be numeric, got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise SpectraError(f"{path}: samples contain NaN or infinite values")
    return arr


def _train_points(path: Path) -> np.ndarray:
    from spectra.checkpoint import read_checkpoint

    ck = read_checkpoint(path)
    if "train_points" not in ck:
        raise SpectraError(f"{path} was trained on fresh samples: it stores no training points "
                           "(train with --n-train N)")
    return ck["train_points"].detach().numpy()
