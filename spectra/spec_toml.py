"""Parsing model specs (docs/cli.md, "Model specs") into plain objects, without torch: every TOML
spec kind is read here into a `ModelSpec` of numbers, arrays, paths and names (nothing built,
nothing imported), with typed lookups and one-line errors. spectra.models.specs builds models from
them; the theory reads the `gaussian` linear manifold directly.

Two analytic references of [B] (Buchanan, Pai, Ma, De Bortoli, "On the Edge of Memorization in
Diffusion Models", NeurIPS 2025) are spec options: `kind = "empirical"` with `memorized = M`, the
partially memorizing denoiser (the empirical score of the first M of the file's N points), and
`kind = "gmm"` with `preset = "templates"`, the colored templates (K monochrome templates x*_i of p
pixels colored by c ~ N(u*, s^2 I_c): components N(A_i u*, s^2 A_i A_i^T), A_i = I_c (x) x*_i,
in D = c p; spectra.models.analytic.colored_templates). The templates are read here (a file
through spectra.arrays, numpy only, or inline lists) and carried in the MixtureSpec's arguments."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spectra.arrays import load_array
from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.schedules import Schedule
from spectra.theory.manifold import LinearManifold, eigen_factor, random_orthonormal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

GAUSSIAN_KEYS = {"kind", "schedule", "ambient_dim", "variances", "variance_groups", "embedding", "seed"}
#: the kinds of a TOML model spec
SPEC_KINDS = ("gaussian", "empirical", "gmm", "network")
#: the gmm presets
GMM_PRESETS = ("molrg", "isotropic", "templates")
#: codebase conventions a factory's bare module can follow (spectra.models.specs)
INTERFACES = ("plain", "edm", "score_sde")


@dataclass(frozen=True)
class NetworkSpec:
    """A `kind = "network"` spec: the factory (a `file.py` path resolved against the spec's
    folder, or `package.module`, then `:name`), how its module is called, and whether the spec's
    schedule applies (a `[schedule]` table, or the ve default for a plain module)."""

    factory: str
    interface: str = "plain"
    parameterization: str | None = None
    shape: tuple[int, ...] | None = None
    own_schedule: bool = True


@dataclass(frozen=True)
class MixtureSpec:
    """A `kind = "gmm"` spec: a preset by name with its arguments (the templates preset's
    include the template array, (K, p) or (K, H, W)), or explicit components as arrays
    (weights (K,), means (K, D), bases (K, D, R), eigenvalues (K, R))."""

    preset: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    weights: np.ndarray | None = None
    means: np.ndarray | None = None
    bases: np.ndarray | None = None
    eigenvalues: np.ndarray | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A parsed TOML model spec: its kind, schedule, the table as recorded in run files
    (`config`, with the spec file's path), and the part its kind has (`memorized`: an empirical
    spec's M >= 1, the number of leading points kept, or None for all)."""

    kind: str
    schedule: Schedule
    config: dict[str, Any]
    manifold: LinearManifold | None = None
    points: Path | None = None
    memorized: int | None = None
    mixture: MixtureSpec | None = None
    network: NetworkSpec | None = None


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


def parse_model_table(table: dict[str, Any], path: Path, kinds: tuple[str, ...] = SPEC_KINDS) -> ModelSpec:
    """The ModelSpec of a TOML table; `path` names it in errors and anchors relative paths.
    Only `kinds` are accepted: a table read from a file other than the one the user named (a
    checkpoint's data spec) passes the inline analytic kinds alone, so it can name no code or
    path."""
    where = str(path)
    kind = take(table, "kind", str, where)
    if kind not in SPEC_KINDS:
        raise SpectraError(f"{where}: unknown kind {kind!r} (expected {', '.join(SPEC_KINDS)})")
    if kind not in kinds:
        raise SpectraError(f"{where}: kind {kind!r} is not allowed here (only {', '.join(kinds)})")
    sched = Schedule.from_dict(take(table, "schedule", dict, where, {"name": "ve"}))
    spec = {"kind": kind, "schedule": sched, "config": {"spec_file": str(path.resolve()), **table}}
    common = {"kind", "schedule"}
    if kind == "gaussian":
        return ModelSpec(**spec, manifold=manifold_from_table(table, where))
    if kind == "empirical":
        check_keys(table, common | {"points", "memorized"}, where)
        points = path.parent / take(table, "points", str, where)
        memorized = take(table, "memorized", int, where, None)
        if memorized is not None and memorized < 1:
            raise SpectraError(f"{where}: 'memorized' must be at least 1, got {memorized}")
        return ModelSpec(**spec, points=points, memorized=memorized)
    if kind == "gmm":
        try:  # a file only where the user's own spec may name one (not a checkpoint's data spec)
            return ModelSpec(**spec, mixture=_mixture(table, path, files="empirical" in kinds))
        except (ValueError, OverflowError) as exc:  # sizes numpy cannot take (negative, too large)
            raise SpectraError(f"{where}: {exc}") from None
    check_keys(table, common | {"factory", "parameterization", "shape", "interface"}, where)
    factory = take(table, "factory", str, where)
    interface = take(table, "interface", str, where, "plain")
    if interface not in INTERFACES:
        raise SpectraError(f"{where}: unknown interface {interface!r} (expected one of "
                           f"{', '.join(INTERFACES)})")
    file_part, _, name = factory.rpartition(":")
    if file_part.endswith(".py"):
        factory = f"{path.parent / file_part}:{name}"
    shape = table.get("shape")
    # the ve default applies to plain modules; edm and score_sde ones know or need their own
    return ModelSpec(**spec, network=NetworkSpec(
        factory, interface, take(table, "parameterization", str, where, None),
        tuple(shape) if shape else None, "schedule" in table or interface == "plain"))



def _sized(where: str, dim: int, components: int, rank: int) -> None:
    """Refuse a mixture whose means and bases (with room to build them) do not fit in memory."""
    if components < 1 or rank < 0:
        raise SpectraError(f"{where}: a mixture needs at least one component and ranks >= 0")
    require_memory(4 * 8 * abs(dim) * max(1, abs(components)) * max(1, abs(rank)),
                   f"{where}: a mixture of {components} components of rank {rank} in D = {dim}")


def _mixture(table: dict[str, Any], path: Path, files: bool = True) -> MixtureSpec:
    """The MixtureSpec of a gmm table (its sizes checked against memory first); `files`: whether
    the templates preset may read its templates from a file."""
    where = str(path)
    preset = take(table, "preset", str, where, None)
    if preset == "templates":
        return _templates(table, path, files)
    dim = take(table, "ambient_dim", int, where)
    seed = take(table, "seed", int, where, 0)
    common = {"kind", "schedule", "preset", "ambient_dim", "seed"}

    if dim < 1:
        raise SpectraError(f"{where}: ambient_dim must be at least 1, got {dim}")

    def sized(components: int, rank: int) -> None:  # means and bases, with room to build them
        _sized(where, dim, components, rank)

    if preset == "molrg":
        check_keys(table, common | {"n_classes", "subspace_dim", "delta"}, where)
        classes, rank = take(table, "n_classes", int, where), take(table, "subspace_dim", int, where)
        sized(classes, rank)
        return MixtureSpec("molrg", {
            "ambient_dim": dim, "n_classes": classes, "subspace_dim": rank,
            "delta": float(take(table, "delta", (int, float), where)), "seed": seed})
    if preset == "isotropic":
        check_keys(table, common | {"n_components", "variance", "radius"}, where)
        components = take(table, "n_components", int, where)
        sized(components, 1)
        radius = take(table, "radius", (int, float), where, None)
        return MixtureSpec("isotropic", {
            "ambient_dim": dim, "n_components": components,
            "variance": float(take(table, "variance", (int, float), where)),
            "radius": None if radius is None else float(radius), "seed": seed})
    if preset is not None:
        raise SpectraError(f"{where}: unknown gmm preset {preset!r} (expected {', '.join(GMM_PRESETS)})")
    check_keys(table, common | {"components"}, where)
    comps = take(table, "components", list, where)
    if not comps:
        raise SpectraError(f"{where}: a gmm needs at least one [[components]] table")
    sized(len(comps), 1)
    rng = np.random.default_rng(seed)
    weights, means, factors = [], [], []
    for i, comp in enumerate(comps):
        cw = f"{where}: components[{i}]"
        if not isinstance(comp, dict):
            raise SpectraError(f"{cw} must be a table")
        check_keys(comp, {"weight", "mean", "variances", "variance_groups", "basis"}, cw)
        weights.append(float(take(comp, "weight", (int, float), cw, 1.0)))
        mean = np.asarray(take(comp, "mean", list, cw, [0.0] * dim), dtype=np.float64)
        if mean.shape != (dim,):
            raise SpectraError(f"{cw}: mean must have ambient_dim = {dim} entries")
        variances = variances_of(comp, cw) if ("variances" in comp or "variance_groups" in comp) \
            else np.zeros(0)
        sized(1, len(variances))
        if "basis" in comp:
            basis = np.asarray(comp["basis"], dtype=np.float64)
            if basis.shape != (dim, len(variances)):
                raise SpectraError(f"{cw}: basis must be D x m = {dim} x {len(variances)}")
        else:
            basis = random_orthonormal(dim, len(variances), rng)
        means.append(mean)
        factors.append(eigen_factor(basis, variances))
    r = max(len(e) for _, e in factors)
    sized(len(comps), r)
    bases = np.zeros((len(comps), dim, r))
    eig = np.zeros((len(comps), r))
    for k, (u, e) in enumerate(factors):
        bases[k, :, : len(e)] = u
        eig[k, : len(e)] = e
    return MixtureSpec(weights=np.asarray(weights), means=np.stack(means), bases=bases, eigenvalues=eig)


def _templates(table: dict[str, Any], path: Path, files: bool) -> MixtureSpec:
    """The MixtureSpec of a `preset = "templates"` gmm table ([B]'s colored templates): the
    template array (K, p) or (K, H, W) (a file relative to the spec's folder, or inline lists of
    numbers; `n_templates` keeps the first K), `channels` c, `variance` s^2 and `color_mean` u*
    (c,), in D = c p (`ambient_dim` optional, checked when given)."""
    where = str(path)
    check_keys(table, {"kind", "schedule", "preset", "ambient_dim", "templates", "n_templates",
                       "channels", "variance", "color_mean"}, where)
    given = take(table, "templates", (str, list), where)
    if isinstance(given, str):
        if not files:
            raise SpectraError(f"{where}: 'templates' names a file, which only a spec given on the "
                               "command line may do; give the templates inline")
        try:
            templates = load_array(path.parent / given)
        except SpectraError as exc:
            raise SpectraError(f"{where}: 'templates': {exc}") from None
    else:
        templates = _inline_array(given, f"{where}: 'templates'")
    if templates.ndim not in (2, 3) or templates.shape[0] == 0 or templates[0].size == 0:
        raise SpectraError(f"{where}: 'templates' must be K >= 1 templates of shape (p,) or (H, W), "
                           f"got an array of shape {templates.shape}")
    count = take(table, "n_templates", int, where, None)
    if count is not None:
        if not 1 <= count <= len(templates):
            raise SpectraError(f"{where}: 'n_templates' must be between 1 and the {len(templates)} "
                               f"templates given, got {count}")
        templates = templates[:count]
    channels = take(table, "channels", int, where, 3)
    if channels < 1:
        raise SpectraError(f"{where}: 'channels' must be at least 1, got {channels}")
    pixels = int(np.prod(templates.shape[1:]))
    dim = channels * pixels
    declared = take(table, "ambient_dim", int, where, None)
    if declared is not None and declared != dim:
        raise SpectraError(f"{where}: 'ambient_dim' = {declared} disagrees with channels x pixels = "
                           f"{channels} x {pixels} = {dim}")
    _sized(where, dim, len(templates), channels)
    variance = float(take(table, "variance", (int, float), where, 1.0))
    if not variance >= 0 or not np.isfinite(variance):
        raise SpectraError(f"{where}: 'variance' must be a finite number >= 0, got {variance}")
    if "color_mean" in table:
        color_mean = _inline_array(take(table, "color_mean", list, where), f"{where}: 'color_mean'")
        if color_mean.shape != (channels,):
            raise SpectraError(f"{where}: 'color_mean' must be a list of channels = {channels} numbers, "
                               f"got shape {color_mean.shape}")
    else:
        color_mean = np.ones(channels)
    norms = np.linalg.norm(templates.reshape(len(templates), -1), axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise SpectraError(f"{where}: 'templates' {zero[0]} is zero (a colored template needs ||x*|| > 0)")
    return MixtureSpec("templates", {"templates": templates, "channels": channels, "variance": variance,
                                     "color_mean": color_mean})


def _inline_array(value: list, where: str) -> np.ndarray:
    """A float64 array from lists of numbers nested at most three deep (rectangular, finite)."""
    def numbers(v: Any, depth: int) -> bool:
        if isinstance(v, list):
            return depth < 3 and all(numbers(e, depth + 1) for e in v)
        return _number(v)

    if not numbers(value, 0):
        raise SpectraError(f"{where} must hold numbers in lists nested at most three deep")
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (ValueError, OverflowError):
        raise SpectraError(f"{where} must be rectangular (lists of equal lengths)") from None
    if not np.all(np.isfinite(arr)):
        raise SpectraError(f"{where} must be finite")
    return arr


def load_manifold(path: str | Path) -> LinearManifold:
    """The linear manifold a `kind = "gaussian"` .toml spec describes."""
    path = Path(path)
    table = read_toml(path)
    kind = take(table, "kind", str, str(path))
    if kind != "gaussian":
        raise SpectraError(f"{path}: a manifold spec must have kind = \"gaussian\", not {kind!r}")
    return manifold_from_table(table, str(path))
