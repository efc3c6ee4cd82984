"""Reading TOML spec files (DESIGN.md, "Model specs") without torch: typed lookups with one-line
errors, variance lists, and the `gaussian` linear-manifold spec that the theory also reads."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.theory.manifold import LinearManifold

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GAUSSIAN_KEYS = {"kind", "schedule", "ambient_dim", "variances", "variance_groups", "embedding", "seed"}


def read_toml(path: Path) -> dict[str, Any]:
    """The spec file's table; SpectraError when it is missing or malformed."""
    if not path.is_file():
        raise SpectraError(f"model spec not found: {path}")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise SpectraError(f"malformed model spec {path}: {exc}") from None
    except UnicodeDecodeError:
        raise SpectraError(f"malformed model spec {path}: not UTF-8 text") from None
    except RecursionError:
        raise SpectraError(f"malformed model spec {path}: nested too deeply") from None


def take(table: dict[str, Any], key: str, kind: type | tuple, where: str, default: Any = ...):
    """table[key], checked to be of `kind` (bools never count as numbers); `default` if absent."""
    if key not in table:
        if default is ...:
            raise SpectraError(f"{where}: missing '{key}'")
        return default
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise SpectraError(f"{where}: '{key}' must be {names}, got {value!r}")
    return value


def check_keys(table: dict[str, Any], allowed: set[str], where: str) -> None:
    """Refuse keys the spec kind does not know (typos would otherwise be silently ignored)."""
    unknown = set(table) - allowed
    if unknown:
        raise SpectraError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def variances_of(table: dict[str, Any], where: str) -> np.ndarray:
    """`variances = [..]` or `variance_groups = [[value, count], ...]` (numbers; integer counts)."""
    if "variances" in table and "variance_groups" in table:
        raise SpectraError(f"{where}: give 'variances' or 'variance_groups', not both")
    if "variance_groups" in table:
        groups = take(table, "variance_groups", list, where)
        ok = all(isinstance(g, list) and len(g) == 2 and _number(g[0]) and isinstance(g[1], int)
                 and not isinstance(g[1], bool) and g[1] >= 1 for g in groups)
        if not ok or not groups:
            raise SpectraError(f"{where}: 'variance_groups' must be [[value, count], ...] with "
                               "integer counts >= 1")
        require_memory(8 * sum(n for _, n in groups), f"{where}: 'variance_groups' counts")
        return np.concatenate([np.full(n, float(v)) for v, n in groups])
    values = take(table, "variances", list, where)
    if not all(_number(v) for v in values):
        raise SpectraError(f"{where}: 'variances' must be a list of numbers")
    return np.asarray(values, dtype=np.float64)


def manifold_from_table(table: dict[str, Any], where: str) -> LinearManifold:
    """The LinearManifold of a `kind = "gaussian"` spec table."""
    check_keys(table, GAUSSIAN_KEYS, where)
    dim, variances = take(table, "ambient_dim", int, where), variances_of(table, where)
    # the embedding (D x m) and its QR factorization's workspace
    require_memory(4 * 8 * abs(dim) * max(1, len(variances)),
                   f"{where}: a manifold of ambient_dim {dim} with {len(variances)} directions")
    try:
        return LinearManifold(
            dim,
            variances,
            take(table, "embedding", str, where, "orthonormal"),
            take(table, "seed", int, where, 0),
        )
    except SpectraError:
        raise
    except ValueError as exc:
        raise SpectraError(f"{where}: {exc}") from None


def load_manifold(path: str | Path) -> LinearManifold:
    """The linear manifold a `kind = "gaussian"` .toml spec describes."""
    path = Path(path)
    table = read_toml(path)
    kind = take(table, "kind", str, str(path))
    if kind != "gaussian":
        raise SpectraError(f"{path}: a manifold spec must have kind = \"gaussian\", not {kind!r}")
    return manifold_from_table(table, str(path))
