"""Build a ScoreModel from a model spec string (docs/cli.md, "Model specs").

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
import math
import sys
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from spectra.arrays import load_array
from spectra.checkpoint import ANALYTIC_KINDS, POINTS_KIND, config_of, read_checkpoint
from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.models.analytic import (
    GaussianMixture,
    colored_templates,
    empirical,
    isotropic_gmm,
    linear_manifold,
    molrg,
)
from spectra.models.base import ScoreModel
from spectra.models.diffusers_model import load_diffusers
from spectra.models.edm import edm_model, load_snapshot
from spectra.models.network import NetworkScoreModel
from spectra.models.trained import TrainedScoreModel, build_network, count_parameters, sample_shape
from spectra.schedules import Schedule
from spectra.spec_toml import (
    INTERFACES,
    SPEC_KINDS,
    MixtureSpec,
    parse_model_table,
    read_toml,
)


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
    allow_pickle: bool = False,
) -> ScoreModel:
    """The ScoreModel a spec names (see module docstring). `schedule` is a schedule name or a
    JSON-free 'name' for bare modules; `shape` overrides the sample shape of bare modules;
    `allow_pickle` lets `edm:SNAPSHOT.pkl` be unpickled (--allow-pickle)."""
    if spec is None:
        spec = demo_spec()
    prefix, _, rest = spec.partition(":")
    if spec.endswith(".pt"):
        _unused(spec, "a spectra train checkpoint", schedule=schedule, parameterization=parameterization)
        model = load_trained(spec, spec)
    elif prefix == "diffusers":
        _unused(spec, "a diffusers model (its scheduler gives the schedule)", schedule=schedule)
        model = load_diffusers(rest, spec, parameterization)
    elif prefix == "edm" and rest.endswith(".pkl"):
        model = edm_model(load_snapshot(rest, allow_pickle), spec, shape, parameterization, schedule)
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
    """The model of a TOML table (parsed by spectra.spec_toml.parse_model_table, which says
    what `path` and `kinds` do); `schedule`, `parameterization` and `shape` are the CLI's, which
    only a network spec takes."""
    spec = parse_model_table(table, path, kinds)
    sched, config = spec.schedule, spec.config
    if spec.network is None:
        _unused(str(path), f"an analytic {spec.kind} spec (its [schedule] table sets the schedule)",
                schedule=schedule, parameterization=parameterization)
    if spec.manifold is not None:
        m = spec.manifold
        return linear_manifold(m.ambient_dim, m.variances, sched, m.embedding, m.seed, config=config)
    if spec.points is not None:
        points = load_array(spec.points)
        if spec.memorized is not None:  # [B]'s partially memorizing denoiser: the first M points
            if not 1 <= spec.memorized <= len(points):
                raise SpectraError(f"{path}: 'memorized' = {spec.memorized} must be between 1 and the "
                                   f"{len(points)} points of {spec.points}")
            points = points[: spec.memorized]
        return empirical(points, sched, config=config)
    if spec.mixture is not None:
        return _mixture_model(spec.mixture, sched, config)
    net = spec.network
    return _from_factory(
        net.factory,
        schedule or (sched.name if net.own_schedule else None),
        parameterization or net.parameterization,
        shape or net.shape,
        schedule_obj=sched if schedule is None and net.own_schedule else None,
        interface=net.interface,
    )


def _mixture_model(mix: MixtureSpec, sched: Schedule, config: dict[str, Any]) -> GaussianMixture:
    """The GaussianMixture of a parsed gmm spec: a preset's builder, or its components."""
    if mix.preset == "templates":
        return colored_templates(schedule=sched, config=config, **mix.arguments)
    if mix.preset == "molrg":
        return molrg(schedule=sched, config=config, **mix.arguments)
    if mix.preset == "isotropic":
        return isotropic_gmm(schedule=sched, config=config, **mix.arguments)
    return GaussianMixture(mix.weights, mix.means, mix.bases, mix.eigenvalues, sched, config=config)


def _unused(spec: str, what: str, **options: str | None) -> None:
    """Refuse options that a model of this form would silently ignore."""
    given = [f"--{name}" for name, value in options.items() if value is not None]
    if given:
        verb = "do" if len(given) > 1 else "does"
        raise SpectraError(f"{' and '.join(given)} {verb} not apply to {spec}: {what}")


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


def model_from_object(obj: Any, schedule: str | Schedule | None = None, parameterization: str | None = None,
                      shape: tuple[int, ...] | None = None) -> ScoreModel:
    """The ScoreModel of an object in memory: a ScoreModel as it is, or a bare nn.Module called as
    net(x, t) that predicts `parameterization` under `schedule` (a name or a Schedule); its spec
    (recorded in run files) is python:CLASS."""
    spec = f"python:{type(obj).__name__}"
    schedule_obj = schedule if isinstance(schedule, Schedule) else None
    name = None if schedule_obj is not None else schedule
    model = _wrap(obj, spec, name, parameterization, shape, schedule_obj, "plain")
    model.spec = model.spec or spec
    return model


# --- spectra train checkpoints -----------------------------------------------------------------
def load_trained(path: str | Path, spec: str = "") -> TrainedScoreModel:
    """The ScoreModel of a checkpoint: the EMA weights in the network its config names (one of
    spectra.models.trained.NETWORKS, built by name), its schedule, and its data: an inline analytic
    spec, or (kind `points`, trained on an array) the empirical distribution of the training points
    it stores; spectra.checkpoint refuses any other."""
    ck = read_checkpoint(path)
    config = config_of(ck, path)
    try:
        shape = sample_shape(config)
        if math.prod(shape) != int(config["dim"]):
            raise ValueError("shape and dim disagree")
        require_memory(2 * 8 * count_parameters(config["network"], shape),
                       f"{path}: the network its config declares")
        net = build_network(config["network"], shape)
        net.double().load_state_dict(ck["ema"])  # the weights are float64: keep every bit
        schedule = Schedule.from_dict(config["schedule"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise SpectraError(f"{path} is a damaged spectra checkpoint ({type(exc).__name__})") from None
    points = None
    if "train_points" in ck:
        points = ck["train_points"].detach().numpy()
        config = {**config, "n_train_points": int(points.shape[0])}
    if config["data_spec"].get("kind") == POINTS_KIND:  # trained on an array: no spec to build
        if points is None or points.shape[1] != int(config["dim"]):
            raise SpectraError(f"{path} is a damaged spectra checkpoint (its training points are missing)")
        data = empirical(points.reshape(-1, *shape), schedule)
        return TrainedScoreModel(net, schedule, config, data, spec, points)
    # the spec file's name (relative to the checkpoint) only names the data: its kinds read no file
    named = config.get("data_spec_file")
    if not isinstance(named, str) or "\0" in named:
        raise SpectraError(f"{path} is a damaged spectra checkpoint (data_spec_file {named!r})")
    # read_checkpoint refused any other data kind; the build is held to the same kinds again
    data = model_from_table(config["data_spec"], Path(path).parent / named, kinds=ANALYTIC_KINDS)
    return TrainedScoreModel(net, schedule, config, data, spec, points)
