"""Small score networks on synthetic or real data (`spectra train`), with self-describing checkpoints.

The data is an analytic spec (.toml: fresh samples each step, or `--n-train` points drawn once) or
an array of samples (.npy/.npz/.h5, FILE:KEY; all of its rows, or the first `--n-train`), trained
on exactly those points. The network and its input scaling are spectra.models.trained's: the small
U-Net for image-shaped samples ((C, H, W) or (H, W)), the residual MLP otherwise, or on request the
learned low-rank mixture of spectra.models.lowrank (`--network`).
The noise level enters through
sin(omega_k c_noise), cos(omega_k c_noise) with omega_k = k pi / 4, k = 1..16: the slowest period,
8 in c_noise, spans sigma / alpha from e^-16 to e^16, so no two noise levels of a schedule alias
(with omega_k = k pi, sigma = 0.01 and sigma = 50 under ve gave nearly the same embedding and the
network could not fit both ends).
Training minimizes denoising score matching, E ||epshat(alpha x0 + sigma eps, t) - eps||^2, with t
uniform on the schedule's default range (log-uniform sigma under ve) and x0 drawn fresh from the
data spec each step, or from a fixed set of `n_train` points drawn once (the memorizing regime of
theory.md 3.5). Adam; the exponential moving average of the weights (EMA) is what gets analysed.

Every random draw of step s comes from numpy's SeedSequence (seed, s), so training is
deterministic on the CPU and a resumed run continues exactly as an uninterrupted one.

The checkpoint format (read as data only) is spectra.checkpoint's. With `--snapshot-every S`,
every S steps (and at the last) a slim checkpoint of that step (EMA weights, config, training
points) is kept as OUT-snapshots/step-NNNNNNNN.pt, so spectra can follow the model through training
(`spectra estimate --model OUT-snapshots`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm import tqdm

from spectra.arrays import data_file, load_array
from spectra.checkpoint import (
    ANALYTIC_KINDS,
    POINTS_KIND,
    STEP_FREE_OPTIONS,
    config_of,
    read_checkpoint,
    write_checkpoint,
)
from spectra.errors import SpectraError
from spectra.limits import require_memory
from spectra.lock import locked
from spectra.models.base import ScoreModel
from spectra.models.specs import model_from_table
from spectra.models.trained import DEFAULT_WIDTH, build_network, c_in, c_noise, count_parameters
from spectra.outputs import check_folder
from spectra.schedules import Schedule
from spectra.spec_toml import read_toml

_LOG_EVERY = 50
#: --network choices: the class each names, auto picking by the sample shape
NETWORK_CHOICES = {"mlp": "ResidualMLP", "unet": "SmallUNet", "mixture": "LowRankMixture"}


@dataclass
class TrainOptions:
    """Everything that determines a training run (stored in the checkpoint's config)."""

    data: str = ""
    steps: int = 20000
    n_train: int | None = None
    schedule: str | None = None
    seed: int = 0
    network: str = "auto"
    dtype: str = "auto"
    width: int | None = None
    depth: int = 2
    batch_size: int = 256
    lr: float = 1e-3
    ema: float = 0.999
    checkpoint_every: int = 1000
    snapshot_every: int | None = None


def _validate(opts: TrainOptions) -> None:
    if opts.steps < 1:
        raise SpectraError(f"--steps must be at least 1, got {opts.steps}")
    if opts.n_train is not None and opts.n_train < 1:
        raise SpectraError(f"--n-train must be at least 1, got {opts.n_train}")
    if opts.network not in ("auto", *NETWORK_CHOICES):
        raise SpectraError(f"--network must be auto, mlp, unet or mixture, got {opts.network!r}")
    if opts.dtype not in ("auto", "float32", "float64"):
        raise SpectraError(f"--dtype must be auto, float32 or float64, got {opts.dtype!r}")
    if (opts.width is not None and opts.width < 1) or opts.depth < 0 or opts.batch_size < 1:
        raise SpectraError("--width and --batch-size must be positive and --depth non-negative")
    if not 0 <= opts.ema < 1:
        raise SpectraError(f"--ema must be in [0, 1), got {opts.ema}")
    if not opts.lr > 0:
        raise SpectraError(f"--lr must be positive, got {opts.lr}")
    if not 0 <= opts.seed < 2**62:
        raise SpectraError(f"--seed must be in [0, 2^62), got {opts.seed}")
    if opts.checkpoint_every < 1:
        raise SpectraError(f"--checkpoint-every must be at least 1, got {opts.checkpoint_every}")
    if opts.snapshot_every is not None and opts.snapshot_every < 1:
        raise SpectraError(f"--snapshot-every must be at least 1, got {opts.snapshot_every}")
    if max(opts.steps, opts.width or 0, opts.depth, opts.batch_size, opts.n_train or 0) >= 2**62:
        raise SpectraError("--steps, --width, --depth, --batch-size and --n-train must be below 2^62")


def _network(opts: TrainOptions, shape: tuple[int, ...]) -> dict[str, Any]:
    """The config's network table: the class (--network; auto: the U-Net for samples of shape
    (C, H, W) or (H, W), the MLP otherwise; mixture: LowRankMixture) and its width (--width, or
    the class's default) and depth (the MLP's blocks, the mixture's components)."""
    name = NETWORK_CHOICES.get(opts.network) or ("SmallUNet" if len(shape) in (2, 3) else "ResidualMLP")
    if name == "SmallUNet" and len(shape) not in (2, 3):
        raise SpectraError(f"--network unet needs image-shaped samples (C, H, W) or (H, W), not {shape}")
    if name == "LowRankMixture" and opts.depth < 1:
        raise SpectraError("--network mixture needs --depth >= 1 components")
    return {"class": name, "width": opts.width or DEFAULT_WIDTH[name], "depth": opts.depth}


def _architecture(network: Any) -> dict[str, Any]:
    """What a config's network table builds, by the options that name it: the class (`network`),
    the width and (the MLP's) depth."""
    if not isinstance(network, dict):
        return {"network": network}
    built = {"network": network.get("class"), "width": network.get("width")}
    return built if network.get("class") == "SmallUNet" else {**built, "depth": network.get("depth")}


def _dtype(opts: TrainOptions, network: dict[str, Any]) -> str:
    """The training dtype: --dtype, or float32 for the U-Net (its convolutions ran 5 to 8 times
    faster than in float64 on a 2-core CPU: 10 against 51 ms a step at width 16, batch 128) and
    float64 for the MLP. Checkpoints are analysed in float64 either way."""
    if opts.dtype != "auto":
        return opts.dtype
    return "float32" if network["class"] == "SmallUNet" else "float64"


def _check_sizes(opts: TrainOptions, network: dict[str, Any], shape: tuple[int, ...]) -> None:
    """Refuse a network or batch that cannot fit in memory: the weights (network, EMA, Adam's
    two moments and the gradients: 5 float64 copies of the parameters), a batch's activations
    (kept for the backward pass, about 16 layers of the width per value of a sample) and the
    training points."""
    w, dim = network["width"], math.prod(shape)
    require_memory(5 * 8 * count_parameters(network, shape),
                   f"a network of --width {w} and --depth {opts.depth} at D = {dim}")
    per_sample = {"ResidualMLP": w * (2 * opts.depth + 4) + 4 * dim,
                  # per component: its residual, projection, Woodbury solve and Cholesky factor
                  "LowRankMixture": 8 * opts.depth * (dim + w + w * w)}.get(network["class"], 16 * w * dim)
    require_memory(4 * 8 * opts.batch_size * per_sample, f"--batch-size {opts.batch_size} at --width {w}")
    if opts.n_train is not None:
        require_memory(8 * opts.n_train * dim, f"--n-train {opts.n_train} points of D = {dim}")


def _data_model(opts: TrainOptions) -> tuple[ScoreModel | None, dict[str, Any], np.ndarray | None]:
    """(the analytic model of a data spec or None, the data's table kept in the checkpoint, the
    array's training points or None)."""
    if not opts.data.endswith(".toml"):
        return None, *_array_data(opts)
    if not Path(opts.data).is_file():
        raise SpectraError(f"data spec not found: {opts.data}")
    table = read_toml(Path(opts.data))
    if table.get("kind") not in ANALYTIC_KINDS:
        raise SpectraError(f"{opts.data}: training data must be kind {' or '.join(ANALYTIC_KINDS)}, "
                           "or an array of samples (.npy/.npz/.h5)")
    model = model_from_table(table, Path(opts.data))
    if isinstance(table.get("templates"), str):  # a checkpoint carries values inline, never a path
        table = {**table, "templates": load_array(Path(opts.data).parent / table["templates"]).tolist()}
    return model, table, None


def _array_data(opts: TrainOptions) -> tuple[dict[str, Any], np.ndarray]:
    """The table recording an array of samples (where it came from: a name, never read again)
    and its training points (N, *shape): every row, or the first --n-train."""
    points = load_array(opts.data)
    rows = len(points)
    if opts.n_train is not None:
        if opts.n_train > rows:
            raise SpectraError(f"--n-train {opts.n_train}: {opts.data} holds only {rows} samples")
        points = points[: opts.n_train]
    path, key = data_file(opts.data)
    table = {"kind": POINTS_KIND, "source": path.name + (f":{key}" if key else ""), "rows": rows,
             "shape": list(points.shape[1:])}
    return table, points


def _schedule(opts: TrainOptions, table: dict[str, Any]) -> Schedule:
    if opts.schedule is not None:
        if opts.schedule not in ("ve", "vp", "ddpm"):
            raise SpectraError(f"--schedule for training must be ve, vp or ddpm, got {opts.schedule!r}")
        return Schedule(opts.schedule)
    return Schedule.from_dict(table.get("schedule", {"name": "ve"}))  # an array's record has none


def _times(schedule: Schedule, n: int, rng: np.random.Generator) -> np.ndarray:
    lo, hi = schedule.default_range
    if schedule.integer_times:
        return rng.integers(int(lo), int(hi) + 1, size=n).astype(np.float64)
    return rng.uniform(lo, hi, size=n)


def build_config(opts: TrainOptions, out: Path
                 ) -> tuple[dict[str, Any], ScoreModel | None, np.ndarray | None]:
    """(config, analytic data model or None, training points (N, *shape) or None) of a new
    training run whose checkpoint is `out`; a data spec's path is stored relative to the
    checkpoint's folder, so the two can move together (as the shipped demo does)."""
    data, table, points = _data_model(opts)
    shape = tuple(points.shape[1:]) if points is not None else tuple(data.shape)
    network = _network(opts, shape)
    _check_sizes(opts, network, shape)
    schedule = _schedule(opts, table)
    if data is not None and opts.n_train is not None:
        points = data.sample(opts.n_train, np.random.default_rng([opts.seed, 2**31]))
    reference = points if points is not None else data.sample(4096, np.random.default_rng([opts.seed, 2**30]))
    config = {
        "options": dataclasses.asdict(opts) | {"width": network["width"], "dtype": _dtype(opts, network)},
        "data_spec": dict(table),
        **({} if data is None else {"data_spec_file": _relative_to(Path(opts.data).resolve(),
                                                                    out.resolve().parent)}),
        "schedule": schedule.to_dict(),
        "parameterization": "eps",
        "dim": math.prod(shape),
        "shape": list(shape),
        "data_variance": float(np.mean(np.var(reference, axis=0))) or 1.0,
        "network": network,
    }
    if network["class"] == "LowRankMixture":  # its input scaling is part of its form
        network["variance"] = config["data_variance"]
    return config, data, points


def _relative_to(path: Path, folder: Path) -> str:
    """`path` relative to `folder` where it can be (not across Windows drives), else absolute."""
    try:
        return os.path.relpath(path, folder)
    except ValueError:
        return str(path)


def train(out: str | Path, opts: TrainOptions, resume: bool = False, overwrite: bool = False,
          progress: bool = True, slim: bool = False) -> Path:
    """Train (or continue training) and write the checkpoint at `out`; returns its path. With
    `slim`, the final checkpoint keeps only what analysis needs (no `model` or `optimizer`: about
    a quarter of the size) and cannot be resumed; intermediate checkpoints stay complete."""
    out = Path(out)
    if resume and overwrite:
        raise SpectraError("--resume and --overwrite conflict: choose one")
    _validate(opts)
    check_folder(out)
    with locked(out):
        return _train_locked(out, opts, resume, overwrite, progress, slim)


def _train_locked(out: Path, opts: TrainOptions, resume: bool, overwrite: bool, progress: bool,
                  slim: bool) -> Path:
    exists = out.exists()
    if exists and not (resume or overwrite):
        raise SpectraError(f"{out} exists: pass --resume to continue it or --overwrite to replace it")
    if exists and overwrite:
        read_checkpoint(out)  # only ever replace a spectra checkpoint
    config, data, points = build_config(opts, out)
    if opts.snapshot_every is not None:
        _check_snapshots(snapshot_folder(out), fresh=not (exists and resume))
    torch.manual_seed(opts.seed)
    shape = tuple(config["shape"])
    dtype = getattr(torch, config["options"]["dtype"])
    net = build_network(config["network"], shape).to(dtype)
    ema = build_network(config["network"], shape).to(dtype)
    ema.load_state_dict(net.state_dict())
    optimizer = torch.optim.Adam(net.parameters(), lr=opts.lr, foreach=True)
    step, losses = 0, []
    if exists and resume:
        ck = read_checkpoint(out)
        if "model" not in ck or "optimizer" not in ck:
            raise SpectraError(f"cannot resume {out}: it was written with --slim (EMA weights only)")
        old = config_of(ck, out)
        if not isinstance(old.get("options"), dict):
            raise SpectraError(f"{out} is a damaged spectra checkpoint (no options)")
        # STEP_FREE_OPTIONS never change the weights of a given step; the data is compared by its
        # spec's content, so the same spec named by another path resumes; the network is compared
        # as built (--network auto and unet build the same U-Net)
        free = (*STEP_FREE_OPTIONS, "data", "network", "width", "depth")
        before = {"dtype": "float64"}  # what checkpoints from before --dtype ran
        same = {k: v for k, v in {**before, **old["options"]}.items() if k not in free}
        new = {k: v for k, v in config["options"].items() if k not in free}
        same["data spec"], new["data spec"] = old["data_spec"], config["data_spec"]
        same.update(_architecture(old.get("network")))
        new.update(_architecture(config["network"]))
        if same != new:
            diff = ", ".join(k for k in sorted(new) if same.get(k) != new.get(k))
            raise SpectraError(f"cannot resume {out}: options differ ({diff})")
        net.load_state_dict(ck["model"])
        ema.load_state_dict(ck["ema"])
        optimizer.load_state_dict(ck["optimizer"])
        step, losses = int(ck["step"]), list(ck["losses"].tolist())
        config = {**old, "options": config["options"]}
        if "train_points" in ck:
            points = ck["train_points"].detach().numpy().reshape(-1, *shape)

    schedule = Schedule.from_dict(config["schedule"])
    variance = config["data_variance"]
    bar = tqdm(total=opts.steps, initial=step, disable=not progress or None, unit="step",
               desc="spectra train", leave=False)
    running = 0.0
    ema_params, net_params = list(ema.parameters()), list(net.parameters())
    ema_update = get_ema_multi_avg_fn(opts.ema)
    while step < opts.steps:
        rng = np.random.default_rng([opts.seed, step])
        if points is None:
            x0 = data.sample(opts.batch_size, rng)
        else:
            x0 = points[rng.integers(0, len(points), size=opts.batch_size)]
        t = _times(schedule, opts.batch_size, rng)
        eps = rng.standard_normal(x0.shape)
        alpha = torch.as_tensor(schedule.alpha(t))
        sigma = torch.as_tensor(schedule.sigma(t))
        x0_t, eps_t = torch.as_tensor(x0, dtype=dtype), torch.as_tensor(eps, dtype=dtype)
        per_sample = (-1,) + (1,) * len(shape)
        xt = alpha.reshape(per_sample) * x0_t + sigma.reshape(per_sample) * eps_t
        pred = net((xt * c_in(alpha, sigma, variance).reshape(per_sample)).to(dtype),
                   c_noise(alpha, sigma).to(dtype))
        loss = (pred - eps_t).pow(2).flatten(1).sum(1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema_update(ema_params, net_params, step)
        step += 1
        running += loss.item()
        if step % _LOG_EVERY == 0:
            losses.append(running / _LOG_EVERY)
            running = 0.0
            bar.set_postfix(loss=f"{losses[-1]:.4g}")
        bar.update(1)
        if step % opts.checkpoint_every == 0 or step == opts.steps:
            if not math.isfinite(loss.item()):
                raise SpectraError(f"training diverged at step {step} (loss {loss.item()}); lower --lr")
            if step < opts.steps:  # the final checkpoint is written once, below
                _save(out, config, step, net, ema, optimizer, losses, points)
        if opts.snapshot_every is not None and (step % opts.snapshot_every == 0 or step == opts.steps):
            folder = snapshot_folder(out)
            folder.mkdir(exist_ok=True)
            _save(folder / f"step-{step:08d}.pt", config, step, None, ema, None, losses, points)
    bar.close()
    _save(out, config, step, None if slim else net, ema, None if slim else optimizer, losses, points)
    return out


def _check_snapshots(folder: Path, fresh: bool) -> None:
    """Refuse, before training, a snapshot folder that cannot take this run's snapshots: a file
    in its place, or (for a new run) one that holds an earlier training's snapshots, which the
    new ones would mix with."""
    if folder.exists() and not folder.is_dir():
        raise SpectraError(f"{folder} is in the way of the snapshot folder: move it")
    if fresh and folder.is_dir() and any(folder.glob("*.pt")):
        raise SpectraError(f"{folder} holds the snapshots of an earlier training: remove it (or move it) "
                           "to train again")


def snapshot_folder(out: Path) -> Path:
    """Where --snapshot-every keeps a checkpoint's snapshots: OUT-snapshots beside it."""
    return out.with_name(f"{out.stem}-snapshots")


def _save(out: Path, config: dict, step: int, net: torch.nn.Module | None, ema: torch.nn.Module,
          optimizer: torch.optim.Optimizer | None, losses: list[float], points: np.ndarray | None) -> None:
    """Write the checkpoint under a temporary name and rename it over `out` (never half-written);
    net and optimizer None: a slim checkpoint."""
    payload = {
        "config": json.dumps(config, sort_keys=True),
        "step": step,
        "ema": ema.state_dict(),
        "losses": torch.as_tensor(losses, dtype=torch.float64),
    }
    if net is not None and optimizer is not None:
        payload["model"] = net.state_dict()
        payload["optimizer"] = optimizer.state_dict()
    if points is not None:
        payload["train_points"] = torch.as_tensor(points).reshape(len(points), -1)
    write_checkpoint(out, payload)
