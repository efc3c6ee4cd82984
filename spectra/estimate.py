"""anchors x times -> engine -> store: the body of `spectra estimate`.

Reproducibility: every random draw is keyed by (seed, purpose, anchor[, time]) with numpy's
SeedSequence, and anchors are processed in a fixed chunk layout, so a run resumed after a crash
produces the same values as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import math
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import spectra
from spectra import distributed, hdf5, outputs, store
from spectra.arrays import load_array
from spectra.errors import SpectraError, first_line
from spectra.fingerprint import array_digest, file_digest, model_digest
from spectra.jacobian.memory import PROBE_PAIRS, pair_bytes
from spectra.jacobian.methods import (
    COMPILABLE,
    ENGINES,
    METHODS,
    PRODUCTS,
    AutodiffPath,
    evaluate_checked,
    haar_directions,
    jacobian_spectra,
    method_operator,
    probe_path,
    topk_at,
)
from spectra.jacobian.operators import CompileFallbackWarning
from spectra.jacobian.safety import CONTEXTS
from spectra.limits import require_disk, require_memory
from spectra.lock import locked
from spectra.models.base import ScoreModel
from spectra.models.parameterization import TARGETS
from spectra.models.specs import load_model
from spectra.schedules import Schedule

_SEED_ANCHORS, _SEED_NOISE, _SEED_DIRECTIONS = 0, 1, 2
DEFAULT_N_SAMPLES = 8
DEFAULT_N_TIMES = 20
DEFAULT_TOPK = 16
_BATCH_BUDGET_BYTES = 2**28
_SPECTRA_COPIES = 6
#: options added after the first run files, with the value that those files ran with
_LATER_OPTIONS = {"compile": False}
#: options a resume compares by the content they lead to (the model's fingerprint, the anchors,
#: the time grid), not by spelling; the chunk size changes no value at all
_CONTENT_OPTIONS = ("model", "data", "n_samples", "times", "n_times", "t_min", "t_max", "schedule",
                    "parameterization", "shape", "batch_size")
#: relative tolerance of the resume probe per dtype: rounding from other threads or devices
#: passes, another model does not
_PROBE_RTOL = {"float32": 1e-4, "float64": 1e-9}
#: the largest integer an option may take (run files store them as int64)
_MAX_INT = 2**62


@dataclass
class EstimateOptions:
    """Everything that determines a run's values (stored in the file as `options`)."""

    model: str | None = None
    data: str | None = None
    n_samples: int | None = None
    times: list[float] | None = None
    n_times: int = DEFAULT_N_TIMES
    t_min: float | None = None
    t_max: float | None = None
    target: str | None = None
    method: str = "auto"
    k: int | None = None
    tol: float = 1e-6
    at: str = "clean"
    step: str = "auto"
    directions: str = "basis"
    dtype: str = "float64"
    device: str = "auto"
    batch_size: int | None = None
    seed: int = 0
    save_points: bool = False
    schedule: str | None = None
    parameterization: str | None = None
    shape: tuple[int, ...] | None = None
    class_label: int | None = None
    compile: bool = False

    def __post_init__(self) -> None:
        """Defaults that depend on the method: top-k targets the denoiser (its largest values
        carry the tangent directions, theory.md 2) and keeps 16 values."""
        if self.target is None:
            self.target = "denoiser" if self.method == "topk" else "score"
        if self.k is None and self.method == "topk":
            self.k = DEFAULT_TOPK

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape) if self.shape is not None else None
        return d


def parse_step(step: str) -> str | float:
    """`auto`, `sigma` or a positive number."""
    if step in ("auto", "sigma"):
        return step
    try:
        value = float(step)
    except ValueError:
        raise SpectraError(f"--step must be auto, sigma or a number, got {step!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise SpectraError(f"--step must be positive, got {step!r}")
    return value


def time_grid(schedule: Schedule, opts: EstimateOptions) -> np.ndarray:
    """The validated, sorted time grid: --times, or n_times log-spaced in [t_min, t_max]
    (rounded to integers for integer-time schedules)."""
    if opts.times is not None:
        if opts.t_min is not None or opts.t_max is not None:
            raise SpectraError("give either --times or --t-min/--t-max, not both")
        if len(opts.times) == 0:
            raise SpectraError("--times is empty: give at least one time")
        times = schedule.validate(opts.times)
    else:
        lo, hi = schedule.default_range
        t_min = lo if opts.t_min is None else opts.t_min
        t_max = hi if opts.t_max is None else opts.t_max
        if opts.n_times < 1:
            raise SpectraError(f"--n-times must be at least 1, got {opts.n_times}")
        require_memory(16 * 8 * opts.n_times, f"a grid of --n-times {opts.n_times}")
        schedule.validate([t_min, t_max])
        if not t_min <= t_max:
            raise SpectraError(f"--t-min {t_min:g} is above --t-max {t_max:g}")
        times = np.geomspace(t_min, t_max, opts.n_times)
        if schedule.integer_times:
            times = np.round(times)
    times = np.unique(times)
    return schedule.validate(times)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng([seed, *key])


def anchors(model: ScoreModel, opts: EstimateOptions) -> np.ndarray:
    """The anchors x0 (N, *shape) as DESIGN.md's --data says."""
    n = opts.n_samples
    if n is not None and n < 1:
        raise SpectraError(f"--n-samples must be at least 1, got {n}")
    if opts.shape is not None and model.shape is not None and tuple(opts.shape) != tuple(model.shape):
        raise SpectraError(f"--shape {','.join(map(str, opts.shape))} does not apply: the model's "
                           f"samples have shape {tuple(model.shape)}")
    shape = opts.shape or model.shape
    if opts.data is None or opts.data == "noise":
        if shape is not None:
            count = n or DEFAULT_N_SAMPLES
            require_memory(2 * 8 * count * math.prod(shape),
                           f"{count} anchors of shape {tuple(shape)} (--n-samples)")
    if opts.data is None:
        x0 = model.sample(n or DEFAULT_N_SAMPLES, _rng(opts.seed, _SEED_ANCHORS))
        if x0 is None:
            raise SpectraError(
                "this model has no data distribution of its own: pass --data FILE or --data noise"
            )
    elif opts.data == "noise":
        if shape is None:
            raise SpectraError("--data noise needs the sample shape: pass --shape C,H,W")
        x0 = _rng(opts.seed, _SEED_ANCHORS).standard_normal((n or DEFAULT_N_SAMPLES, *shape))
    else:
        x0 = load_array(opts.data)
        if n is not None and n > len(x0):
            raise SpectraError(f"{opts.data} holds {len(x0)} samples; --n-samples asked for {n}")
        x0 = x0[: n or DEFAULT_N_SAMPLES]
    if shape is not None and tuple(x0.shape[1:]) != tuple(shape):
        raise SpectraError(
            f"data samples have shape {tuple(x0.shape[1:])} but the model takes {tuple(shape)}"
        )
    x0 = np.asarray(x0)
    if np.iscomplexobj(x0) or not np.all(np.isfinite(x0)):
        raise SpectraError("the anchors must be real and finite")
    return np.ascontiguousarray(x0, dtype=np.float64)


def _device(name: str, sweep: distributed.Sweep | None = None) -> torch.device:
    """The torch device of --device (auto: CUDA when there is one); under torchrun each rank
    takes cuda:LOCAL_RANK."""
    if name not in ("auto", "cpu", "cuda"):
        raise SpectraError(f"--device must be auto, cpu or cuda, got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpectraError("--device cuda: no CUDA device is available")
    if name == "cpu" or not torch.cuda.is_available():
        return torch.device("cpu")
    return torch.device("cuda", sweep.local_rank if sweep is not None and sweep.world > 1 else 0)


def default_batch_size(
    model: ScoreModel, dim: int, dtype: torch.dtype, device: torch.device | None = None,
    free_bytes: int | None = None, pair_bytes: int | None = None,
) -> int:
    """(anchor, direction) pairs per chunk: a memory budget over the bytes per pair, between 1
    and 4096. The bytes per pair are `pair_bytes` when measured (memory.pair_bytes), else
    estimated as model.activation_factor values of size D. The budget is 256 MiB on the CPU and
    a quarter of the free memory on a CUDA device (torch.cuda.mem_get_info plus the caching
    allocator's idle blocks, or `free_bytes` when given) once the model is on it."""
    if free_bytes is None and device is not None and device.type == "cuda":
        # the caching allocator's idle blocks are free to this process too
        idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        free_bytes = torch.cuda.mem_get_info(device)[0] + idle
    budget = _BATCH_BUDGET_BYTES if free_bytes is None else free_bytes // 4
    if pair_bytes is None:
        itemsize = torch.empty((), dtype=dtype).element_size()
        pair_bytes = dim * itemsize * max(1, model.activation_factor)
    return int(min(4096, max(1, budget // pair_bytes)))


def _measured_pair_bytes(model: ScoreModel, point: torch.Tensor, t: float, target: str,
                         path: AutodiffPath, step: str | float, k: int) -> int:
    """CUDA bytes per pair of this run's products at `point` (memory.pair_bytes), plus what the
    algorithm keeps per pair beside them: a dense run the float64 copies its spectra take of a
    Jacobian row (the cast, its symmetric and skew parts and the solvers' workspaces:
    _SPECTRA_COPIES values of 8 bytes); a top-k run its Krylov bases, at worst D columns of D
    values for each of V and U plus one transient copy, shared by the block's pairs."""
    op = method_operator(model, point[None], t, target, path, PROBE_PAIRS, step)
    measured = pair_bytes(op, PRODUCTS[path.method])
    if path.method == "topk":
        itemsize = point.element_size()
        return measured + 3 * itemsize * op.dim * op.dim // _block_size(k, op.dim)
    return measured + _SPECTRA_COPIES * 8 * op.dim


def _validate(opts: EstimateOptions) -> None:
    for field in dataclasses.fields(opts):
        value = getattr(opts, field.name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= _MAX_INT:
            raise SpectraError(f"--{field.name.replace('_', '-')} {value} is too large")
    if opts.seed < 0:
        raise SpectraError(f"--seed must be non-negative, got {opts.seed}")
    if opts.target not in TARGETS:
        raise SpectraError(f"--target must be one of {', '.join(TARGETS)}")
    if opts.method not in METHODS:
        raise SpectraError(f"--method must be one of {', '.join(METHODS)}")
    if opts.at not in ("clean", "noisy"):
        raise SpectraError("--at must be clean or noisy")
    if opts.directions not in ("basis", "haar"):
        raise SpectraError("--directions must be basis or haar")
    if opts.dtype not in ("float32", "float64"):
        raise SpectraError("--dtype must be float32 or float64")
    if opts.k is not None and opts.k < 1:
        raise SpectraError(f"--k must be at least 1, got {opts.k}")
    if not 0 < opts.tol < 1:
        raise SpectraError(f"--tol must be between 0 and 1, got {opts.tol}")
    if opts.method == "topk" and opts.directions != "basis":
        raise SpectraError("--directions haar applies to dense methods, not --method topk")
    if opts.compile and opts.method not in COMPILABLE:
        raise SpectraError(f"--compile compiles forward-mode products: it applies to --method "
                           f"{', '.join(COMPILABLE)}, not {opts.method}")
    if opts.batch_size is not None and opts.batch_size < 1:
        raise SpectraError(f"--batch-size must be at least 1, got {opts.batch_size}")
    if parse_step(opts.step) != "auto" and opts.method in ("jvp", "vjp", "topk"):
        raise SpectraError(f"--step applies to finite differences, not --method {opts.method}")


def _attrs(path: Path) -> dict[str, Any]:
    """A run file's root attributes, decoded."""
    with store.open_checked(path) as f, hdf5.damaged(path):
        return {k: store._decode(v) for k, v in f.attrs.items()}


def _recorded_path(attrs: dict[str, Any]) -> AutodiffPath:
    """The autodiff path a run recorded (files from before the `autodiff` attribute: the plain
    torch.func path of `method_used`)."""
    recorded = attrs.get("autodiff") or None
    try:
        path = (AutodiffPath.from_dict(json.loads(recorded)) if recorded
                else AutodiffPath(attrs["method_used"]))
    except (KeyError, TypeError, ValueError):
        path = None
    if path is None or path.method not in PRODUCTS or path.context not in CONTEXTS \
            or path.engine not in ENGINES:
        shown = recorded or attrs.get("method_used")
        raise SpectraError(f"the run file's autodiff path is damaged ({shown!r})")
    return path


def _check_resumable(path: Path, opts: EstimateOptions) -> dict[str, Any]:
    """The existing file's attributes, if it is a run with the same options. Options that lead
    to content (`_CONTENT_OPTIONS`) are compared by that content in `_check_content`, so the same
    spec named from another folder, or a default spelled out, resumes."""
    attrs = _attrs(path)
    old = {**_LATER_OPTIONS, **json.loads(attrs.get("options") or "{}")}
    new = opts.to_dict()
    diff = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k) and k not in _CONTENT_OPTIONS]
    if diff:
        parts = ", ".join(f"{k} ({old.get(k)!r} in the file, {new.get(k)!r} now)" for k in diff)
        raise SpectraError(f"cannot resume {path}: options differ: {parts}")
    return attrs


def _fingerprints(model: str, x0: np.ndarray, opts: EstimateOptions) -> dict[str, Any]:
    """What the run is computed from, by content (spectra.fingerprint): the model's digest,
    the anchors' and the data file's."""
    data_file = opts.data is not None and opts.data != "noise"
    return {"model": model, "anchors": array_digest(x0),
            "data": file_digest(opts.data) if data_file else None}


def _check_content(path: Path, old_attrs: dict[str, Any], fingerprints: dict[str, Any],
                   x0: np.ndarray, times: np.ndarray) -> None:
    """Refuse a resume that would mix two computations in one file: other anchors or another
    time grid than the file's, or another model: by its fingerprint, and by its values at the
    first anchor (`probe`), where the file records them."""
    with store.open_checked(path) as f:
        old_x0, old_t = hdf5.read(f, "x0", path), hdf5.read(f, "t", path)
    if old_x0.shape != x0.shape or not np.array_equal(old_x0, x0):
        raise SpectraError(f"cannot resume {path}: the anchors differ from the run's x0 "
                           f"({old_x0.shape[0]} of shape {old_x0.shape[1:]} in the file, "
                           f"{x0.shape[0]} of shape {x0.shape[1:]} now; was the data changed?)")
    if old_t.shape != times.shape or not np.array_equal(old_t, times):
        raise SpectraError(f"cannot resume {path}: the time grid differs from the run's t "
                           f"({len(old_t)} times in the file, {len(times)} now)")
    recorded = json.loads(old_attrs.get("fingerprints") or "{}")
    if recorded.get("model") not in (None, fingerprints["model"]):
        raise SpectraError(f"cannot resume {path}: the model differs from the one the run was "
                           "started with (its weights or description changed)")
    old_probe, new_probe = recorded.get("probe"), fingerprints.get("probe")
    if old_probe is not None and new_probe is not None:
        rtol = _PROBE_RTOL.get(old_attrs.get("dtype"), _PROBE_RTOL["float32"])
        same = len(old_probe) == len(new_probe) and np.allclose(old_probe, new_probe, rtol=rtol, atol=0)
        if not same:
            raise SpectraError(f"cannot resume {path}: the model's values differ from the run's at the "
                               "first anchor (the model changed)")


def _reopen_unfinished(path: Path) -> None:
    """Clear `done` where a resumed file holds non-finite singular values (a damaged file), so
    those Jacobians are computed again; says how many."""
    with store.TrajectoryWriter(path) as writer, hdf5.damaged(path):
        count = writer.reopen_nonfinite()
    if count:
        warnings.warn(f"{path}: {count} Jacobians marked done held non-finite values; computing them "
                      "again", stacklevel=3)


def estimate(
    out: str | Path,
    opts: EstimateOptions,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    command: str = "",
    rendezvous_timeout: float = distributed.DEFAULT_RENDEZVOUS_TIMEOUT,
) -> Path:
    """Run (or resume) a trajectory estimate and return the path of the complete run file.
    Under torchrun the anchors are shared out among the ranks (spectra.distributed), whose
    rendezvous waits at most `rendezvous_timeout` seconds. The process that writes RUN.h5 (rank
    0) holds spectra's lock on it throughout (spectra.lock)."""
    out = Path(out)
    if resume and overwrite:
        raise SpectraError("--resume and --overwrite conflict: choose one")
    _validate(opts)
    sweep = distributed.current(rendezvous_timeout)
    with contextlib.ExitStack() as stack:
        error = None
        if sweep.rank == 0:
            try:
                outputs.check_folder(out)
                stack.enter_context(locked(out))
                _settle_shards(out, opts, resume, overwrite)
            except SpectraError as exc:
                error = str(exc)
        sweep.agree(error)
        _estimate_locked(out, opts, resume, overwrite, progress, command, sweep)
    return out


def _estimate_locked(out: Path, opts: EstimateOptions, resume: bool, overwrite: bool, progress: bool,
                     command: str, sweep: distributed.Sweep) -> None:
    exists = out.exists()
    if exists and not (resume or overwrite):
        raise SpectraError(f"{out} exists: pass --resume to continue it or --overwrite to replace it")
    old_attrs = _check_resumable(out, opts) if exists and resume else None
    if old_attrs is not None and old_attrs.get("complete"):
        _, times, x0, fingerprints = _content(opts)
        _check_content(out, old_attrs, fingerprints, x0, times)
        return
    if exists and overwrite:
        store.open_checked(out).close()  # only ever replace a spectra run, never a foreign file

    setup, error = None, None
    try:
        setup = _setup(opts, old_attrs, sweep)
        if old_attrs is not None:
            _check_content(out, old_attrs, setup.fingerprints, setup.x0, setup.times)
        elif sweep.rank == 0:
            require_disk(out.parent, _file_bytes(setup, opts), f"the run file {out.name}")
    except SpectraError as exc:
        error = str(exc)
    sweep.agree(error)
    if sweep.rank == 0 and old_attrs is None:
        _create(out, opts, setup, command)
    elif sweep.rank == 0:
        _reopen_unfinished(out)
        if setup.batch_size != old_attrs.get("batch_size"):
            with store.TrajectoryWriter(out) as writer:  # resumed with a new --batch-size
                writer.set_attrs(batch_size=setup.batch_size)
    sweep.barrier()
    target = out
    if sweep.world > 1:  # every rank takes rank 0's chunk size and path, then fills its shard
        attrs = _attrs(out)
        setup.batch_size, setup.path = int(attrs["batch_size"]), _recorded_path(attrs)
        target = sweep.shard(out)
        partial = target.with_name(target.name + ".tmp")
        outputs.clear_stale(partial)
        shutil.copyfile(out, partial)
        os.replace(partial, target)
    progress = progress and sweep.rank == 0
    n_chunks = -(-len(setup.x0) // _per_chunk(setup))
    if sweep.rank == 0 and n_chunks < sweep.world:
        warnings.warn(f"{n_chunks} anchor chunk(s) for {sweep.world} ranks: some ranks stay idle "
                      "(a smaller --batch-size makes more chunks)", stacklevel=3)
    _sweep(target, setup, opts, progress, sweep)
    sweep.barrier()
    if sweep.world > 1 and sweep.rank == 0:
        for part in distributed.shards(out):
            store.merge(out, part)
            part.unlink()
    sweep.barrier()


def _file_bytes(setup: _Setup, opts: EstimateOptions) -> int:
    """The bytes of a new run file: its (N, T, K) and (N, T) datasets, x0 and saved points."""
    n, nt = len(setup.x0), len(setup.times)
    per_pair = 8 * (3 * setup.k + 5) + (8 * setup.dim if opts.save_points else 0)
    return n * nt * per_pair + 8 * setup.x0.size


@dataclass
class _Setup:
    """What every rank derives from the options before computing: the model on its device, the
    grid, the anchors, the chunk size and the autodiff path."""

    model: ScoreModel
    times: np.ndarray
    alpha: np.ndarray
    sigma: np.ndarray
    x0: np.ndarray
    x0_t: torch.Tensor
    k: int
    batch_size: int
    step: str | float
    path: AutodiffPath
    tf32: dict[str, bool]
    fingerprints: dict[str, Any]
    #: the model's output dtype where it is not the run's (a recorded conversion), else None
    output_dtype: str | None = None

    @property
    def dim(self) -> int:
        return math.prod(self.x0.shape[1:])


def _content(opts: EstimateOptions) -> tuple[ScoreModel, np.ndarray, np.ndarray, dict[str, Any]]:
    """What the values are computed from: the model (as loaded), the time grid, the anchors and
    their fingerprints."""
    model = load_model(opts.model, opts.schedule, opts.parameterization, opts.shape)
    if opts.class_label is not None:
        model.condition(opts.class_label)
    digest = model_digest(model)  # before the model moves: its weights as loaded
    times = time_grid(model.schedule, opts)
    x0 = anchors(model, opts)
    return model, times, x0, _fingerprints(digest, x0, opts)


def _setup(opts: EstimateOptions, old_attrs: dict[str, Any] | None, sweep: distributed.Sweep) -> _Setup:
    model, times, x0, fingerprints = _content(opts)
    schedule = model.schedule
    dim = math.prod(x0.shape[1:])
    if opts.method == "topk" and opts.k > dim:
        raise SpectraError(f"--k {opts.k} exceeds D = {dim}")
    device = _device(opts.device, sweep)
    dtype = getattr(torch, opts.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if opts.method != "topk" and device.type == "cpu":
        require_memory((itemsize + 8 * _SPECTRA_COPIES) * dim * dim,
                       f"a dense Jacobian at D = {dim} (--method {opts.method}; --method topk needs no "
                       "dense Jacobian)")
    model.to(device, dtype)
    # an explicit --batch-size, else the recorded chunk layout (resume), else the default:
    # estimated for the preflight's forward passes, measured for the products on a GPU
    chosen = opts.batch_size or (old_attrs.get("batch_size") if old_attrs is not None else None)
    if chosen is not None and device.type == "cpu":
        pairs = min(chosen, len(x0) * dim)
        require_memory(2 * itemsize * dim * pairs, f"--batch-size {chosen} at D = {dim}")
    batch_size = chosen or default_batch_size(model, dim, dtype, device)
    alpha, sigma = schedule.alpha(times), schedule.sigma(times)
    tf32 = _disable_tf32()
    x0_t = torch.as_tensor(x0, dtype=dtype, device=device)
    if opts.compile and model.time_inputs(float(times[0]), x0_t) is None:
        raise SpectraError("--compile applies to network models; an analytic model is not compiled")
    probe, output_dtype = _preflight(model, x0_t, times, opts, alpha, sigma, batch_size)
    fingerprints = {**fingerprints, "probe": probe}
    step = parse_step(opts.step)
    probe = (x0_t[0] * float(alpha[0]), float(times[0]))
    if old_attrs is not None:
        path = _recorded_path(old_attrs)
    else:
        path = probe_path(model, *probe, opts.target, opts.method, compile=opts.compile)
    k = min(opts.k or dim, dim)
    if chosen is None and device.type == "cuda":
        try:
            measured = _measured_pair_bytes(model, *probe, opts.target, path, step, k)
        except torch.cuda.OutOfMemoryError:
            raise SpectraError(f"out of GPU memory at t={probe[1]:g} measuring {PROBE_PAIRS} "
                               "products at one anchor: pass a smaller --batch-size") from None
        except Exception as exc:  # user model code, on more than one vector at a time
            raise SpectraError(
                f"measuring the memory of {PROBE_PAIRS} products failed at t={probe[1]:g}: "
                f"{type(exc).__name__}: {first_line(exc)} (pass --batch-size to skip it)"
            ) from exc
        batch_size = default_batch_size(model, dim, dtype, device, pair_bytes=measured)
    return _Setup(model, times, alpha, sigma, x0, x0_t, k, batch_size, step, path, tf32,
                  fingerprints, output_dtype)


def _sweep(target: Path, setup: _Setup, opts: EstimateOptions, progress: bool,
           sweep: distributed.Sweep) -> None:
    """The products of the run into `target`. Compiled products that fell back to eager ones
    during the sweep (operators.CompileFallbackWarning, shown as every warning is) are recorded
    in the file's `autodiff` as `fallback`, the first warning's text."""
    run = _run_topk if setup.path.method == "topk" else _run_dense
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CompileFallbackWarning)
            run(target, setup, opts, progress, sweep)
    finally:
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    fallback = next((str(w.message) for w in caught if w.category is CompileFallbackWarning), None)
    if fallback is not None:
        with store.TrajectoryWriter(target) as writer:
            writer.set_attrs(autodiff={**setup.path.to_dict(), "fallback": fallback})


def _oom(t: float, batch_size: int) -> str:
    return (f"out of GPU memory at t={t:g} with --batch-size {batch_size}: resume with "
            "--resume and a smaller --batch-size (what is done is kept)")


def _per_chunk(setup: _Setup) -> int:
    """Anchors per chunk: as many as the batch holds with D directions (dense) or one block
    (top-k) each. The chunks are the units shared out among ranks."""
    vectors = _block_size(setup.k, setup.dim) if setup.path.method == "topk" else setup.dim
    return max(1, setup.batch_size // vectors)


def _settle_shards(out: Path, opts: EstimateOptions, resume: bool, overwrite: bool) -> None:
    """Before anything else (rank 0): fold the shards an interrupted sweep left beside `out` into
    it on --resume, drop them on --overwrite or when `out` is gone."""
    parts = distributed.shards(out)
    if not parts:
        return
    if resume and not out.exists():
        raise SpectraError(f"{out} is missing but its sweep left {parts[0].name} and others: "
                           "move one of them to the run's name to resume, or remove them")
    if out.exists() and not (resume or overwrite):
        return  # estimate refuses the existing file next
    if resume:
        _check_resumable(out, opts)
        for part in parts:
            store.merge(out, part)
    elif out.exists():
        store.open_checked(out).close()  # --overwrite replaces only a spectra run
    for part in parts:
        part.unlink()


def _create(out: Path, opts: EstimateOptions, setup: _Setup, command: str) -> None:
    """The new, empty run file with every attribute DESIGN.md lists."""
    model, dim, k = setup.model, setup.dim, setup.k
    attrs = {
        "spectra_version": spectra.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "command": command,
        "model": model.spec,
        "model_config": model.config(),
        "parameterization": model.parameterization,
        "schedule": model.schedule.to_dict(),
        "target": opts.target,
        "method": opts.method,
        "method_used": setup.path.method,
        "autodiff": setup.path.to_dict(),
        "at": opts.at,
        "dtype": opts.dtype,
        "device": str(setup.x0_t.device),
        "seed": opts.seed,
        "step": str(setup.step),
        "directions": opts.directions,
        "k": k,
        "tolerances": ({"tol": opts.tol, "effective_tol": topk_tolerance(opts.tol, setup.x0_t.dtype)}
                       if opts.method == "topk" else {}),
        "block_size": _block_size(k, dim) if opts.method == "topk" else None,
        "batch_size": setup.batch_size,
        "torch_version": torch.__version__,
        "tf32": setup.tf32,
        "options": opts.to_dict(),
        "fingerprints": setup.fingerprints,
        "model_output_dtype": setup.output_dtype,
    }
    times = setup.times
    grid = {"t": times, "alpha": setup.alpha, "sigma": setup.sigma, "tau": model.schedule.tau(times)}
    points_shape = (len(setup.x0), len(times), *setup.x0.shape[1:]) if opts.save_points else None
    store.create(out, attrs, grid, setup.x0, k, points_shape, residuals=setup.path.method == "topk")


def _run_dense(
    target: Path, setup: _Setup, opts: EstimateOptions, progress: bool, sweep: distributed.Sweep
) -> None:
    """Dense spectra, time by time, anchor chunk by chunk (this rank's chunks), into `target`."""
    model, x0_t, k, dim = setup.model, setup.x0_t, setup.k, setup.dim
    method_used = setup.path.method
    n = len(setup.x0)
    per_chunk = _per_chunk(setup)
    with store.TrajectoryWriter(target) as writer:
        done = writer.done
        bar = tqdm(
            total=done.size, initial=int(done.sum()), disable=not progress or None,
            unit="jac", desc="spectra", leave=False,
        )
        for ti, t in enumerate(setup.times):
            for start in range(0, n, per_chunk):
                if not sweep.owns(start // per_chunk):
                    continue
                idx = np.arange(start, min(start + per_chunk, n))
                todo = idx[~done[idx, ti]]
                if len(todo) == 0:
                    continue
                points = _points(x0_t[idx], opts, float(setup.alpha[ti]), float(setup.sigma[ti]), idx, ti)
                dirs = _directions(opts, idx, ti, dim, x0_t.dtype, x0_t.device)
                tick = time.perf_counter()
                try:  # the values were checked by _preflight; only the Jacobian remains
                    result = jacobian_spectra(
                        model, points, float(t), opts.target, method_used, setup.step, dirs,
                        setup.batch_size, setup.path,
                    )
                except SpectraError:
                    raise
                except torch.cuda.OutOfMemoryError:
                    raise SpectraError(_oom(t, setup.batch_size)) from None
                except Exception as exc:  # the model does not support this method
                    raise SpectraError(
                        f"method {method_used} failed on the model at t={t:g}: "
                        f"{type(exc).__name__}: {first_line(exc)} (try --method auto)"
                    ) from exc
                seconds = (time.perf_counter() - tick) / len(idx)
                keep = np.isin(idx, todo)
                values = {
                    "singular_values": result.singular_values[keep, :k],
                    "sym_eigenvalues": result.sym_eigenvalues[keep, :k],
                    "asymmetry": result.asymmetry[keep],
                    "seconds": np.full(len(todo), seconds),
                }
                saved = points[keep].cpu().numpy() if opts.save_points else None
                writer.write(todo, ti, values, saved)
                bar.update(len(todo))
        bar.close()
        writer.finish()


def _block_size(k: int, dim: int) -> int:
    """Vectors per block of the top-k method: k (at least 4, at most D). A block as large as k
    never misranks a cluster of equal top values and always yields k values in one step."""
    return int(min(dim, max(4, k)))


def topk_tolerance(tol: float, dtype: torch.dtype) -> float:
    """The tolerance top-k can reach in this dtype: at least 100 eps (float32: 1.2e-5)."""
    return max(tol, 100 * torch.finfo(dtype).eps)


def _run_topk(
    target: Path, setup: _Setup, opts: EstimateOptions, progress: bool, sweep: distributed.Sweep
) -> None:
    """Top-k spectra into `target`, chunk of anchors by chunk (this rank's chunks), times in
    order within a chunk: the right singular vectors at one time start the next time's block
    (the rest of each start block is random, keyed by (seed, anchor, time)). A chunk interrupted
    part-way is replayed from its first time on resume (without rewriting what is done), so the
    warm starts, hence the values, are those of an uninterrupted run."""
    model, x0, times, k, dim = setup.model, setup.x0_t, setup.times, setup.k, setup.dim
    alpha, sigma, batch_size, path = setup.alpha, setup.sigma, setup.batch_size, setup.path
    b = _block_size(k, dim)
    tol = topk_tolerance(opts.tol, x0.dtype)
    unconverged = 0
    per_chunk = _per_chunk(setup)
    with store.TrajectoryWriter(target) as writer:
        done = writer.done
        bar = tqdm(total=done.size, initial=int(done.sum()), disable=not progress or None,
                   unit="jac", desc="spectra topk", leave=False)
        for start in range(0, len(x0), per_chunk):
            if not sweep.owns(start // per_chunk):
                continue
            idx = np.arange(start, min(start + per_chunk, len(x0)))
            if done[idx].all():
                continue
            warm = None
            for ti, t in enumerate(times):
                block = np.stack([_rng(opts.seed, _SEED_DIRECTIONS, int(n), ti).standard_normal((dim, b))
                                  for n in idx])
                block = torch.as_tensor(block, dtype=x0.dtype, device=x0.device)
                if warm is not None:
                    block[:, :, : warm.shape[-1]] = warm
                points = _points(x0[idx], opts, float(alpha[ti]), float(sigma[ti]), idx, ti)
                tick = time.perf_counter()
                try:
                    res = topk_at(model, points, float(t), opts.target, k, tol, batch_size,
                                  block_size=b, start=block, path=path)
                except SpectraError:
                    raise
                except torch.cuda.OutOfMemoryError:
                    raise SpectraError(_oom(t, batch_size)) from None
                except Exception as exc:  # the model lacks forward- or reverse-mode AD
                    raise SpectraError(
                        f"method topk failed on the model at t={t:g}: {type(exc).__name__}: "
                        f"{first_line(exc)} (top-k needs JVPs and VJPs)"
                    ) from exc
                warm = res.right_vectors
                if done[idx, ti].all():
                    continue
                unconverged += int((~res.converged).sum())
                values = {
                    "singular_values": res.singular_values, "residuals": res.residuals,
                    "seconds": np.full(len(idx), (time.perf_counter() - tick) / len(idx)),
                    "jvp_products": res.n_jvp.astype(np.float64),
                    "vjp_products": res.n_vjp.astype(np.float64),
                }
                saved = points.cpu().numpy() if opts.save_points else None
                writer.write(idx, ti, values, saved)
                bar.update(len(idx))
        bar.close()
        writer.finish()
    if unconverged:
        warnings.warn(f"{unconverged} top-k Jacobians did not reach tol {tol:g} within the budget of "
                      f"2D + 2k products; their residuals say how far they got", stacklevel=2)


def _preflight(
    model: ScoreModel,
    x0: torch.Tensor,
    times: np.ndarray,
    opts: EstimateOptions,
    alpha: np.ndarray,
    sigma: np.ndarray,
    batch_size: int,
) -> tuple[list[float], str | None]:
    """Evaluate the target at every (anchor, time) before any file is touched: a model that
    fails, returns the wrong shape, a dtype that is not floating point, or NaN is refused with the
    time named, and no run file (an existing one included) is changed. Costs N T forward
    evaluations (the Jacobians cost N T D). Returns the norm of the target at the first anchor
    at each time (the `probe` a resume compares: what the model does, whatever its code holds)
    and the model's output dtype when it is not the run's (a conversion, recorded in the file and
    warned of), else None."""
    probe = []
    for ti, t in enumerate(times):
        for start in range(0, len(x0), batch_size):
            idx = np.arange(start, min(start + batch_size, len(x0)))
            points = _points(x0[idx], opts, float(alpha[ti]), float(sigma[ti]), idx, ti)
            value = evaluate_checked(model, points, float(t), opts.target, offset=start)
            if start == 0:
                probe.append(float(torch.linalg.vector_norm(value[0].double())))
    with torch.no_grad():
        native = model.checked_predict(x0[:1] * float(alpha[0]), float(times[0])).dtype
    if native == x0.dtype:
        return probe, None
    name = str(native).removeprefix("torch.")
    warnings.warn(f"the model returns {name} in a {opts.dtype} run: its values carry {name} rounding "
                  "(recorded in the run as model_output_dtype)", stacklevel=4)
    return probe, name


def _points(
    x0: torch.Tensor, opts: EstimateOptions, alpha: float, sigma: float, idx: np.ndarray, ti: int
) -> torch.Tensor:
    """alpha x0 (--at clean) or alpha x0 + sigma eps (--at noisy), eps keyed by (seed, anchor,
    time)."""
    points = alpha * x0
    if opts.at == "noisy":
        shape = tuple(x0.shape[1:])
        eps = np.stack([_rng(opts.seed, _SEED_NOISE, int(n), ti).standard_normal(shape) for n in idx])
        points = points + sigma * torch.as_tensor(eps, dtype=x0.dtype, device=x0.device)
    return points


def _directions(
    opts: EstimateOptions, idx: np.ndarray, ti: int, dim: int, dtype, device
) -> torch.Tensor | None:
    if opts.directions == "basis":
        return None
    qs = np.stack([haar_directions(dim, _rng(opts.seed, _SEED_DIRECTIONS, int(n), ti)) for n in idx])
    return torch.as_tensor(qs, dtype=dtype, device=device)


def _disable_tf32() -> dict[str, bool]:
    """Full-precision matmuls and convolutions on CUDA (prior-art.md: TF32 is on by default for
    cuDNN); returns the flags in force, recorded in the run file."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }
