"""Build a ScoreModel from a model spec string (DESIGN.md, "Model specs").

Forms:
* `path/to/spec.toml`: `kind = "gaussian" | "empirical" | "gmm" | "network"` with a `[schedule]`
  table (default: ve with its default constants). Paths inside are relative to the spec file.
* `file.py:factory` or `package.module:factory`: a callable returning a ScoreModel or a bare
  nn.Module (then `schedule` and `parameterization` say how to read it).
* `edm:FACTORY`: the factory returns an EDM-style preconditioned denoiser D(x; sigma)
  (spectra.models.edm): x0 prediction, schedule edm, called with sigma.
* `score_sde:FACTORY`: a score_sde-style network (Song et al. 2021) under `ve` (called with
  sigma(t), predicts the score) or `vp` (called with 999 t, predicts eps); `parameterization`
  overrides the prediction.
* `diffusers:FOLDER`: a saved diffusers UNet2DModel with its scheduler (spectra.models.diffusers_model).
* `CK.pt`: a checkpoint written by `spectra train` (spectra.checkpoint; read with weights_only=True,
  its network spectra.models.trained).
* omitted (None): the shipped demo model.

A `kind = "network"` TOML spec names its factory and may set `interface = "plain" | "edm" |
"score_sde"`.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectra.arrays import load_array
from spectra.checkpoint import ANALYTIC_KINDS, config_of, data_spec, read_checkpoint
from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.models.analytic import (
    GaussianMixture,
    empirical,
    isotropic_gmm,
    linear_manifold,
    molrg,
)
from spectra.models.base import ScoreModel
from spectra.models.diffusers_model import load_diffusers
from spectra.models.edm import edm_model
from spectra.models.network import NetworkScoreModel
from spectra.models.trained import ResidualMLP, TrainedScoreModel, n_parameters
from spectra.schedules import Schedule
from spectra.spec_toml import check_keys, manifold_from_table, read_toml, take, variances_of
from spectra.theory.manifold import eigen_factor, random_orthonormal

#: the kinds of a TOML model spec
SPEC_KINDS = ("gaussian", "empirical", "gmm", "network")


def demo_spec() -> str:
    """Path of the shipped demo model: a `spectra train` network (data/demo.pt)."""
    return str(resources.files("spectra_data").joinpath("demo.pt"))


def demo_manifold_spec() -> str:
    """Path of the analytic linear manifold the demo network was trained on (data/demo.toml)."""
    return str(resources.files("spectra_data").joinpath("demo.toml"))


def load_model(
    spec: str | None,
    schedule: str | None = None,
    parameterization: str | None = None,
    shape: tuple[int, ...] | None = None,
) -> ScoreModel:
    """The ScoreModel a spec names (see module docstring). `schedule` is a schedule name or a
    JSON-free 'name' for bare modules; `shape` overrides the sample shape of bare modules."""
    if spec is None:
        spec = demo_spec()
    prefix, _, rest = spec.partition(":")
    if spec.endswith(".pt"):
        _unused(spec, "a spectra train checkpoint", schedule=schedule, parameterization=parameterization)
        model = load_trained(spec, spec)
    elif prefix == "diffusers":
        _unused(spec, "a diffusers model (its scheduler gives the schedule)", schedule=schedule)
        model = load_diffusers(rest, spec, parameterization)
    elif prefix in INTERFACES and rest:
        model = _from_factory(rest, schedule, parameterization, shape, interface=prefix)
    elif spec.endswith(".toml"):
        model = _from_toml(Path(spec), schedule, parameterization, shape)
    elif ":" in spec:
        model = _from_factory(spec, schedule, parameterization, shape)
    else:
        raise SpectraError(
            f"unrecognized model spec {spec!r} (expected a .toml file, file.py:factory "
            "or package.module:factory)"
        )
    model.spec = spec
    return model


def _from_toml(
    path: Path, schedule: str | None, parameterization: str | None, shape
) -> ScoreModel:
    return model_from_table(read_toml(path), path, schedule, parameterization, shape)


def model_from_table(
    table: dict[str, Any], path: Path, schedule: str | None = None,
    parameterization: str | None = None, shape=None, kinds: tuple[str, ...] = SPEC_KINDS,
) -> ScoreModel:
    """The model of a parsed TOML spec; `path` names it in errors and anchors relative paths.
    Only `kinds` are accepted: a table read from a file other than the one the user named (a
    checkpoint's data spec) passes the inline analytic kinds alone, so it can name no code or
    path."""
    where = str(path)
    kind = take(table, "kind", str, where)
    if kind not in SPEC_KINDS:
        raise SpectraError(f"{where}: unknown kind {kind!r} (expected {', '.join(SPEC_KINDS)})")
    if kind not in kinds:
        raise SpectraError(f"{where}: kind {kind!r} is not allowed here (only {', '.join(kinds)})")
    if kind != "network":
        _unused(where, f"an analytic {kind} spec (its [schedule] table sets the schedule)",
                schedule=schedule, parameterization=parameterization)
    sched_table = take(table, "schedule", dict, where, {"name": "ve"})
    sched = Schedule.from_dict(sched_table)
    config = {"spec_file": str(path.resolve()), **table}
    common = {"kind", "schedule"}
    if kind == "gaussian":
        manifold = manifold_from_table(table, where)
        return linear_manifold(
            manifold.ambient_dim, manifold.variances, sched, manifold.embedding, manifold.seed,
            config=config,
        )
    if kind == "empirical":
        check_keys(table, common | {"points"}, where)
        points = load_array(path.parent / take(table, "points", str, where))
        return empirical(points, sched, config=config)
    if kind == "gmm":
        try:
            return _gmm(table, sched, config, where)
        except (ValueError, OverflowError) as exc:  # sizes numpy cannot take (negative, too large)
            raise SpectraError(f"{where}: {exc}") from None
    if kind == "network":
        check_keys(table, common | {"factory", "parameterization", "shape", "interface"}, where)
        factory = take(table, "factory", str, where)
        interface = take(table, "interface", str, where, "plain")
        if interface not in INTERFACES:
            raise SpectraError(
                f"{where}: unknown interface {interface!r} (expected one of {', '.join(INTERFACES)})"
            )
        file_part, _, name = factory.rpartition(":")
        if file_part.endswith(".py"):
            factory = f"{path.parent / file_part}:{name}"
        toml_shape = table.get("shape")
        # the ve default applies to plain modules; edm and score_sde ones know or need their own
        own = "schedule" in table or interface == "plain"
        return _from_factory(
            factory,
            schedule or (sched.name if own else None),
            parameterization or take(table, "parameterization", str, where, None),
            shape or (tuple(toml_shape) if toml_shape else None),
            schedule_obj=sched if schedule is None and own else None,
            interface=interface,
        )
    raise AssertionError(f"spec kind {kind!r} has no reader")


def _unused(spec: str, what: str, **options: str | None) -> None:
    """Refuse options that a model of this form would silently ignore."""
    given = [f"--{name}" for name, value in options.items() if value is not None]
    if given:
        verb = "do" if len(given) > 1 else "does"
        raise SpectraError(f"{' and '.join(given)} {verb} not apply to {spec}: {what}")


def _gmm(table: dict[str, Any], sched: Schedule, config: dict, where: str) -> GaussianMixture:
    preset = take(table, "preset", str, where, None)
    dim = take(table, "ambient_dim", int, where)
    seed = take(table, "seed", int, where, 0)
    common = {"kind", "schedule", "preset", "ambient_dim", "seed"}

    if dim < 1:
        raise SpectraError(f"{where}: ambient_dim must be at least 1, got {dim}")

    def sized(components: int, rank: int) -> None:  # means and bases, with room to build them
        if components < 1 or rank < 0:
            raise SpectraError(f"{where}: a mixture needs at least one component and ranks >= 0")
        require_memory(4 * 8 * abs(dim) * max(1, abs(components)) * max(1, abs(rank)),
                       f"{where}: a mixture of {components} components of rank {rank} in D = {dim}")

    if preset == "molrg":
        check_keys(table, common | {"n_classes", "subspace_dim", "delta"}, where)
        sized(take(table, "n_classes", int, where), take(table, "subspace_dim", int, where))
        return molrg(
            dim,
            take(table, "n_classes", int, where),
            take(table, "subspace_dim", int, where),
            float(take(table, "delta", (int, float), where)),
            sched, seed=seed, config=config,
        )
    if preset == "isotropic":
        check_keys(table, common | {"n_components", "variance", "radius"}, where)
        sized(take(table, "n_components", int, where), 1)
        radius = take(table, "radius", (int, float), where, None)
        return isotropic_gmm(
            dim,
            take(table, "n_components", int, where),
            float(take(table, "variance", (int, float), where)),
            sched, radius=None if radius is None else float(radius), seed=seed, config=config,
        )
    if preset is not None:
        raise SpectraError(f"{where}: unknown gmm preset {preset!r} (expected molrg or isotropic)")
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
    return GaussianMixture(np.asarray(weights), np.stack(means), bases, eig, sched, config=config)


# --- factories ------------------------------------------------------------------------------
def _import_factory(spec: str):
    target, _, name = spec.rpartition(":")
    if not target or not name:
        raise SpectraError(f"factory spec {spec!r} must be file.py:name or package.module:name")
    try:
        if target.endswith(".py"):
            path = Path(target)
            if not path.is_file():
                raise SpectraError(f"model file not found: {path}")
            mod_name = f"spectra_user_{abs(hash(str(path.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(mod_name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[mod_name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except SpectraError:
        raise
    except Exception as exc:  # user code: any failure is a bad model spec
        raise SpectraError(f"cannot import {target}: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SpectraError(f"{target} has no callable {name!r}")
    return factory


#: codebase conventions a factory's bare module can follow (module docstring)
INTERFACES = ("plain", "edm", "score_sde")
#: score_sde: (time label, native prediction) per schedule
_SCORE_SDE = {"ve": ("sigma", "score"), "vp": ("999t", "eps")}


def _from_factory(
    spec: str,
    schedule: str | None,
    parameterization: str | None,
    shape,
    schedule_obj: Schedule | None = None,
    interface: str = "plain",
) -> ScoreModel:
    factory = _import_factory(spec)
    try:
        obj = factory()
    except Exception as exc:  # user code
        raise SpectraError(f"factory {spec} failed: {type(exc).__name__}: {exc}") from None
    model = _wrap(obj, spec, schedule, parameterization, shape, schedule_obj, interface)
    model.factory = spec.rpartition(":")[2]
    return model


def _wrap(obj: Any, spec: str, schedule: str | None, parameterization: str | None, shape,
          schedule_obj: Schedule | None, interface: str) -> ScoreModel:
    """The ScoreModel of what a factory returned: itself, or a bare module read by `interface`."""
    if isinstance(obj, ScoreModel):
        return obj
    if not isinstance(obj, torch.nn.Module):
        raise SpectraError(
            f"factory {spec} returned {type(obj).__name__}; expected a ScoreModel or nn.Module"
        )
    if interface == "edm":
        return edm_model(obj, spec, shape, parameterization,
                         schedule_obj.name if schedule_obj is not None else schedule)
    if interface == "score_sde":
        name = schedule_obj.name if schedule_obj is not None else schedule
        if name not in _SCORE_SDE:
            raise SpectraError(f"a score_sde: model needs --schedule ve or vp, got {name!r}")
        label, native = _SCORE_SDE[name]
        return NetworkScoreModel(obj, schedule_obj or Schedule(name), parameterization or native,
                                 shape=shape, spec=spec, time_label=label, interface=interface)
    if parameterization is None:
        raise SpectraError(
            f"factory {spec} returned a bare module: say what it predicts with "
            "--parameterization eps|x0|v|score"
        )
    if schedule_obj is None:
        if schedule is None:
            raise SpectraError(
                f"factory {spec} returned a bare module: name its schedule with --schedule"
            )
        schedule_obj = Schedule(schedule)
    return NetworkScoreModel(obj, schedule_obj, parameterization, shape=shape, spec=spec)


# --- spectra train checkpoints -----------------------------------------------------------------
def load_trained(path: str | Path, spec: str = "") -> TrainedScoreModel:
    """The ScoreModel of a checkpoint: the EMA weights, its schedule, its data distribution (an
    inline analytic spec: spectra.checkpoint refuses any other)."""
    ck = read_checkpoint(path)
    config = config_of(ck, path)
    try:
        sizes = (int(config["network"]["width"]), int(config["network"]["depth"]), int(config["dim"]))
        require_memory(2 * 8 * n_parameters(*sizes), f"{path}: the network its config declares")
        net = ResidualMLP(sizes[2], sizes[0], sizes[1])
        net.double().load_state_dict(ck["ema"])  # the weights are float64: keep every bit
        schedule = Schedule.from_dict(config["schedule"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SpectraError(f"{path} is a damaged spectra checkpoint ({type(exc).__name__})") from None
    # the spec file's name (relative to the checkpoint) only names the data: its kinds read no file
    named = config.get("data_spec_file")
    if not isinstance(named, str) or "\0" in named:
        raise SpectraError(f"{path} is a damaged spectra checkpoint (data_spec_file {named!r})")
    data = model_from_table(data_spec(ck, path), Path(path).parent / named, kinds=ANALYTIC_KINDS)
    points = None
    if "train_points" in ck:
        points = ck["train_points"].detach().numpy()
        config = {**config, "n_train_points": int(points.shape[0])}
    return TrainedScoreModel(net, schedule, config, data, spec, points)
