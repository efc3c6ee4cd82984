"""The `spectra train` checkpoint format: written atomically, read as data only.

A checkpoint is torch.save of plain containers, read with torch.load(weights_only=True), so loading
one never unpickles code: `format = "spectra-checkpoint"`, `format_version`, `config` (JSON: data
spec table, schedule, parameterization, network and training settings), `step`, `model`, `ema` and
`optimizer` state dicts (a `--slim` checkpoint has no `model` and `optimizer`), `losses` (mean loss
per logged interval) and `train_points` (n_train x D, or absent).

The data spec inside a checkpoint is data as well: it may only be an analytic kind whose values are
inline (`gaussian`, `gmm`; `ANALYTIC_KINDS`), or, for a network trained on an array of samples
(`spectra train --data X.npy`), the record `{"kind": "points", "source", "rows", "shape"}` of where
its `train_points` came from (the points themselves are in the checkpoint; the source is a name,
never read). A spec that names a factory or a file (`network`, `empirical`) is refused when the
checkpoint is read, since only a spec the user types may name code or paths.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from spectra.errors import SpectraError, first_line
from spectra.outputs import replace_atomically

FORMAT = "spectra-checkpoint"
FORMAT_VERSION = 1
#: data spec kinds a checkpoint may carry: every value inline, no path, no code
ANALYTIC_KINDS = ("gaussian", "gmm")
#: the data record of a network trained on an array of samples (its train_points)
POINTS_KIND = "points"
#: training options that never change the weights of a given step (a resume may change them, and
#: snapshots of one training differ only in them)
STEP_FREE_OPTIONS = ("steps", "checkpoint_every", "snapshot_every")


def write_checkpoint(out: Path, payload: dict[str, Any]) -> None:
    """torch.save the payload (format keys added) under a temporary name and rename it over
    `out`, so a checkpoint is never half-written."""
    replace_atomically(out, lambda fh: torch.save({"format": FORMAT, "format_version": FORMAT_VERSION,
                                                  **payload}, fh))


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint's contents, loaded with weights_only=True; one-line SpectraError for a
    missing, corrupted or foreign file, or one whose data spec is not inline analytic data."""
    path = Path(path)
    if not path.is_file():
        raise SpectraError(f"checkpoint not found: {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unreadable, truncated, or holding objects weights_only refuses
        first = first_line(exc) or type(exc).__name__
        raise SpectraError(f"cannot read {path} as a spectra checkpoint: {first[:200]}") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise SpectraError(f"{path} is not a spectra checkpoint (no format {FORMAT!r})")
    if ck.get("format_version") != FORMAT_VERSION:
        raise SpectraError(f"{path} has checkpoint format_version {ck.get('format_version')}; "
                           f"this spectra reads version {FORMAT_VERSION}")
    missing = [k for k in ("config", "step", "ema", "losses") if k not in ck]
    if missing:
        raise SpectraError(f"{path} is a damaged spectra checkpoint (missing {', '.join(missing)})")
    data_spec(ck, path)
    points = ck.get("train_points")
    if points is not None and not (isinstance(points, torch.Tensor) and points.ndim == 2
                                   and points.dtype in (torch.float32, torch.float64)):
        raise SpectraError(f"{path} is a damaged spectra checkpoint (train_points is not a float "
                           "matrix)")
    return ck


def config_of(ck: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The decoded `config` of a checkpoint read by read_checkpoint."""
    try:
        config = json.loads(ck["config"])
    except (TypeError, ValueError):
        raise SpectraError(f"{path} is a damaged spectra checkpoint (config is not JSON)") from None
    if not isinstance(config, dict):
        raise SpectraError(f"{path} is a damaged spectra checkpoint (config is not a table)")
    return config


def data_spec(ck: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """The checkpoint's data spec table, refused unless it is an inline analytic kind."""
    table = config_of(ck, path).get("data_spec")
    if not isinstance(table, dict):
        raise SpectraError(f"{path} is a damaged spectra checkpoint (no data_spec table)")
    kind = table.get("kind")
    if kind == POINTS_KIND and isinstance(ck.get("train_points"), torch.Tensor):
        return table
    if kind not in ANALYTIC_KINDS:
        raise SpectraError(
            f"{path}: its data spec has kind {kind!r}; a checkpoint may carry only inline analytic "
            f"data ({', '.join(ANALYTIC_KINDS)}), never a factory or a file path"
        )
    return table
