"""Content fingerprints: what a run was computed from, by value rather than by name.

A resume must continue the same computation, whatever path names the model or data now. The run
file records (attribute `fingerprints`, JSON) SHA-256 digests of
* `model`: what the model is (`ScoreModel.identity()`: class, schedule, parameterization, shape,
  factory name and calling convention, none of which depends on paths or on how a spec was
  spelled) and every array its values depend on (`ScoreModel.state()`: a network's weights and
  buffers, a mixture's weights, means, bases and eigenvalues), at the precision they were loaded in;
* `probe`: the norm of the model's target at the first anchor at each time (written by
  spectra.estimate after its preflight): a model whose code holds weights that `state()` cannot
  see still changes these;
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


def _update_array(h: Any, name: str, value: np.ndarray | torch.Tensor) -> None:
    """Hash a name, dtype, shape and the raw bytes (any dtype torch has: bfloat16, float8, ...)."""
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return
    arr = np.ascontiguousarray(value)
    h.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.tobytes())


def array_digest(arr: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes."""
    h = hashlib.sha256()
    _update_array(h, "", arr)
    return h.hexdigest()


def model_digest(model: ScoreModel) -> str:
    """SHA-256 of the model's identity and its state arrays, in name order."""
    h = hashlib.sha256(json.dumps(model.identity(), sort_keys=True, default=str).encode())
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
