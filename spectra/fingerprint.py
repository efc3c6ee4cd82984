"""Content fingerprints: what a run was computed from, by value rather than by name.

A resume must continue the same computation, whatever path names the model or data now. The run
file records (attribute `fingerprints`, JSON) SHA-256 digests of
* `model`: the model's description (`ScoreModel.config()` less the keys that only say where it was
  found) and every array its values depend on (`ScoreModel.state()`: a network's weights and
  buffers, a mixture's weights, means, bases and eigenvalues), at the precision they were loaded in;
* `anchors`: the anchors x0 as float64 (the stored `x0` itself is compared on resume too);
* `data`: the bytes of the data file the anchors came from, when they came from a file
  (provenance: the anchors, not the rest of the file, decide whether a resume may go on).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectra.models.base import ScoreModel

#: config keys that say where a model was found, not what it is
_LOCATION_KEYS = frozenset({"spec_file", "folder"})


def _update_array(h: Any, name: str, value: np.ndarray | torch.Tensor) -> None:
    arr = value.detach().cpu().contiguous().numpy() if isinstance(value, torch.Tensor) else value
    arr = np.ascontiguousarray(arr)
    h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.tobytes())


def array_digest(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_array(h, "", arr)
    return h.hexdigest()


def model_digest(model: ScoreModel) -> str:
    """SHA-256 of the model's location-free description and its state arrays, in name order."""
    config = {k: v for k, v in model.config().items() if k not in _LOCATION_KEYS}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, value in sorted(model.state().items()):
        _update_array(h, name, value)
    return h.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
