"""Choosing how a sweep runs: the model on its device, the grid and anchors, the preflight, the
autodiff path (measured for auto, probed for the others, or the recorded one on resume), the
chunk size (measured on the CPU and on a GPU) and top-k's block size and basis (measured)."""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spectra import distributed
from spectra.arrays import data_file
from spectra.errors import SpectraError, first_line
from spectra.fingerprint import array_digest, file_digest, model_digest
from spectra.jacobian.memory import PROBE_PAIRS, pair_bytes
from spectra.jacobian.methods import (
    DENSE_METHODS,
    ENGINES,
    PRODUCTS,
    AutodiffPath,
    evaluate_checked,
    method_operator,
    output_shape,
    probe_path,
)
from spectra.jacobian.safety import CONTEXTS
from spectra.jacobian.tuning import fastest_block, fastest_chunk, fastest_path
from spectra.limits import available_memory, require_memory
from spectra.models.base import ScoreModel
from spectra.models.specs import load_model
from spectra.sweep.inputs import anchors, points_at, time_grid
from spectra.sweep.options import EstimateOptions, parse_step

BATCH_BUDGET_BYTES = 2**28
SPECTRA_COPIES = 6
#: D-vectors a top-k basis column costs per anchor: V, U, J V, J^T U and one transient copy
KRYLOV_COPIES = 5


@dataclass
class Setup:
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
    #: top-k: vectors per block and the basis columns kept before a thick restart
    block: int | None = None
    max_basis: int | None = None
    #: F, the size of the target's value per sample (D but for a feature)
    out_dim: int | None = None

    @property
    def dim(self) -> int:
        return math.prod(self.x0.shape[1:])


def content(opts: EstimateOptions, given: ScoreModel | None = None
            ) -> tuple[ScoreModel, np.ndarray, np.ndarray, dict[str, Any]]:
    """What the values are computed from: the model (`given`, or loaded from opts.model), the
    time grid, the anchors and their fingerprints."""
    model = given if given is not None else load_model(opts.model, opts.schedule, opts.parameterization,
                                                       opts.shape, opts.allow_pickle)
    if opts.class_label is not None:
        model.condition(opts.class_label)
    digest = model_digest(model)  # before the model moves: its weights as loaded
    times = time_grid(model.schedule, opts)
    x0 = anchors(model, opts)
    return model, times, x0, fingerprints_of(digest, x0, opts)


def fingerprints_of(model: str, x0: np.ndarray, opts: EstimateOptions) -> dict[str, Any]:
    """What the run is computed from, by content (spectra.fingerprint): the model's digest,
    the anchors' and the data file's."""
    is_file = opts.data is not None and opts.data != "noise"
    return {"model": model, "anchors": array_digest(x0),
            "data": file_digest(data_file(opts.data)[0]) if is_file else None}


def setup_run(opts: EstimateOptions, old_attrs: dict[str, Any] | None, sweep: distributed.Sweep,
              given: ScoreModel | None = None) -> Setup:
    """Everything a rank needs before computing (Setup), with the sizes checked against memory,
    the preflight run, and the path probed (or, on resume, the recorded one: `old_attrs`);
    `given`: a model in memory instead of opts.model."""
    model, times, x0, fingerprints = content(opts, given)
    schedule = model.schedule
    dim = math.prod(x0.shape[1:])
    if opts.method == "topk" and opts.k > dim:
        raise SpectraError(f"--k {opts.k} exceeds D = {dim}")
    device = device_of(opts.device, sweep)
    dtype = getattr(torch, opts.dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if opts.method != "topk" and device.type == "cpu":
        require_memory((itemsize + 8 * SPECTRA_COPIES) * dim * dim,
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
    tf32 = disable_tf32()
    x0_t = torch.as_tensor(x0, dtype=dtype, device=device)
    if opts.compile and model.time_inputs(float(times[0]), x0_t) is None:
        raise SpectraError("--compile applies to network models; an analytic model is not compiled")
    norms, output_dtype = preflight(model, x0_t, times, opts, alpha, sigma, batch_size)
    fingerprints = {**fingerprints, "probe": norms}
    step = parse_step(opts.step)
    probe = (x0_t[0] * float(alpha[0]), float(times[0]))
    out_shape = output_shape(model, probe[0][None], probe[1], opts.target)
    out_dim = dim if out_shape is None else math.prod(out_shape)
    if device.type == "cpu" and out_dim != dim:
        require_memory((itemsize + 8 * SPECTRA_COPIES) * dim * out_dim,
                       f"a dense Jacobian of the feature {opts.feature} ({out_dim} x {dim})")
    rank = min(dim, out_dim)
    if opts.save_vectors > rank:
        raise SpectraError(f"--save-vectors {opts.save_vectors} exceeds the {rank} singular values of "
                           "each Jacobian")
    if old_attrs is not None:
        path = recorded_path(old_attrs)
    elif opts.method == "auto" and not opts.compile:  # --compile asks for compiled forward mode
        path = fastest_path(model, *probe, opts.target)
    else:
        path = probe_path(model, *probe, opts.target, opts.method, compile=opts.compile)
    k = min(opts.k or rank, rank)
    if chosen is None and device.type == "cpu" and path.method in DENSE_METHODS:
        guess = dim * itemsize * max(1, model.activation_factor)
        batch_size, path.timings["chunk"] = fastest_chunk(
            model, *probe, opts.target, path, step, len(x0) * dim, available_memory() // 4, guess)
    if chosen is None and device.type == "cuda":
        try:
            measured = measured_pair_bytes(model, *probe, opts.target, path, step, k)
        except torch.cuda.OutOfMemoryError:
            raise SpectraError(f"out of GPU memory at t={probe[1]:g} measuring {PROBE_PAIRS} "
                               "products at one anchor: pass a smaller --batch-size") from None
        except Exception as exc:  # user model code, on more than one vector at a time
            raise SpectraError(
                f"measuring the memory of {PROBE_PAIRS} products failed at t={probe[1]:g}: "
                f"{type(exc).__name__}: {first_line(exc)} (pass --batch-size to skip it)"
            ) from exc
        batch_size = default_batch_size(model, dim, dtype, device, pair_bytes=measured)
    block = max_basis = None
    if path.method == "topk":
        block, max_basis = topk_shape(model, probe, opts.target, path, k, len(x0), batch_size, old_attrs,
                                      opts.block_size)
    return Setup(model, times, alpha, sigma, x0, x0_t, k, batch_size, step, path, tf32,
                 fingerprints, output_dtype, block, max_basis, out_dim)


def topk_shape(model: ScoreModel, probe: tuple[torch.Tensor, float], target: str, path: AutodiffPath,
               k: int, n_points: int, batch_size: int, old_attrs: dict[str, Any] | None,
               chosen: int | None = None) -> tuple[int, int]:
    """Top-k's block size (`chosen`, --block-size; else measured: tuning.fastest_block, its
    timings in path.timings["block"]; on resume the recorded one) and the basis columns kept
    before a thick restart: all D when the chunk's bases fit a quarter of the free memory (then
    the basis can span R^D and the values are exact within 2 D products), else what fits
    (recorded too: a restart changes rounding)."""
    point, t = probe
    dim = point.numel()
    if old_attrs is not None and old_attrs.get("block_size"):
        return recorded_topk_shape(old_attrs, dim)
    if chosen is not None:
        block = min(chosen, dim)
    else:
        block, path.timings["block"] = fastest_block(model, point, t, target, path, k, n_points, batch_size)
    anchors = max(1, min(n_points, batch_size // block))
    column = KRYLOV_COPIES * dim * point.element_size() * anchors
    return block, int(min(dim, max(k + 2 * block, free_bytes(point.device) // 4 // column)))


def recorded_topk_shape(attrs: dict[str, Any], dim: int) -> tuple[int, int]:
    """The block size and basis a top-k run recorded (files from before `max_basis`: D, no
    restarts, as their algorithm ran)."""
    block, basis = attrs.get("block_size"), attrs.get("max_basis") or dim
    if not (isinstance(block, int) and isinstance(basis, int) and 1 <= block <= dim and 1 <= basis <= dim):
        raise SpectraError(f"the run file's block_size or max_basis is damaged ({block!r}, {basis!r})")
    return block, basis


def free_bytes(device: torch.device) -> int:
    """Memory this process can still use on `device`: the CUDA device's free memory plus the
    caching allocator's idle blocks, or the host's available memory."""
    if device.type != "cuda":
        return available_memory()
    idle = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    return torch.cuda.mem_get_info(device)[0] + idle


def preflight(
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
            points = points_at(x0[idx], opts, float(alpha[ti]), float(sigma[ti]), idx, ti)
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


def device_of(name: str, sweep: distributed.Sweep | None = None) -> torch.device:
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
    free: int | None = None, pair_bytes: int | None = None,
) -> int:
    """(anchor, direction) pairs per chunk: a memory budget over the bytes per pair, between 1
    and 4096. The bytes per pair are `pair_bytes` when measured (memory.pair_bytes), else
    estimated as model.activation_factor values of size D. The budget is 256 MiB on the CPU and
    a quarter of the free memory on a CUDA device (free_bytes, or `free` when given) once the
    model is on it. On the CPU a sweep measures its chunk size instead (tuning.fastest_chunk)."""
    if free is None and device is not None and device.type == "cuda":
        free = free_bytes(device)
    budget = BATCH_BUDGET_BYTES if free is None else free // 4
    if pair_bytes is None:
        itemsize = torch.empty((), dtype=dtype).element_size()
        pair_bytes = dim * itemsize * max(1, model.activation_factor)
    return int(min(4096, max(1, budget // pair_bytes)))


def measured_pair_bytes(model: ScoreModel, point: torch.Tensor, t: float, target: str,
                         path: AutodiffPath, step: str | float, k: int) -> int:
    """CUDA bytes per pair of this run's products at `point` (memory.pair_bytes), plus what the
    algorithm keeps per pair beside them: a dense run the float64 copies its spectra take of a
    Jacobian row (the cast, its symmetric and skew parts and the solvers' workspaces:
    SPECTRA_COPIES values of 8 bytes); a top-k run its Krylov bases, at worst D columns of D
    values for each of V, U, J V and J^T U plus one transient copy (KRYLOV_COPIES), shared by the
    block's pairs (the block at its largest, k)."""
    op = method_operator(model, point[None], t, target, path, PROBE_PAIRS, step)
    measured = pair_bytes(op, PRODUCTS[path.method])
    if path.method == "topk":
        itemsize = point.element_size()
        return measured + KRYLOV_COPIES * itemsize * op.dim * op.dim // k
    return measured + SPECTRA_COPIES * 8 * op.dim


def per_chunk(setup: Setup) -> int:
    """Anchors per chunk: as many as the batch holds with D directions (dense) or one block
    (top-k) each. The chunks are the units shared out among ranks."""
    vectors = setup.block if setup.path.method == "topk" else setup.dim
    return max(1, setup.batch_size // vectors)


def topk_tolerance(tol: float, dtype: torch.dtype) -> float:
    """The tolerance top-k can reach in this dtype: at least 100 eps (float32: 1.2e-5)."""
    return max(tol, 100 * torch.finfo(dtype).eps)


def disable_tf32() -> dict[str, bool]:
    """Full-precision matmuls and convolutions on CUDA (prior-art.md: TF32 is on by default for
    cuDNN); returns the flags in force, recorded in the run file."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
    }


def recorded_path(attrs: dict[str, Any]) -> AutodiffPath:
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
