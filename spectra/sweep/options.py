"""The options of `spectra estimate`: what determines a run's values, and their validation."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from spectra.errors import SpectraError
from spectra.names import COMPILABLE, FEATURE_PREFIX, METHODS, TARGETS

DEFAULT_N_SAMPLES = 8
DEFAULT_N_TIMES = 20
DEFAULT_TOPK = 16
#: options added after the first run files, with the value that those files ran with
LATER_OPTIONS = {"compile": False, "spacing": "t", "allow_pickle": False, "save_vectors": 0,
                 "block_size": None}
#: options a resume compares by the content they lead to (the model's fingerprint, the anchors,
#: the time grid), not by spelling; the chunk size changes no value at all, nor does
#: --allow-pickle (the model's fingerprint says whether it is the same model)
CONTENT_OPTIONS = ("model", "data", "n_samples", "times", "n_times", "t_min", "t_max", "schedule",
                   "parameterization", "shape", "batch_size", "spacing", "allow_pickle")
#: those of them that name the model (compared by its fingerprint)
MODEL_OPTIONS = ("model", "schedule", "parameterization", "shape")
#: the largest integer an option may take (run files store them as int64)
MAX_INT = 2**62


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
    #: the default grid's spacing: "tau" (log-spaced in tau; None means it) or "t"
    spacing: str | None = None
    #: whether an edm:SNAPSHOT.pkl model may be unpickled (the user typed --allow-pickle)
    allow_pickle: bool = False
    #: the top singular vector pairs kept per Jacobian (right_vectors, left_vectors; 0: none)
    save_vectors: int = 0
    #: top-k's block size (None: measured); a block at least a value's multiplicity finds every
    #: copy of it
    block_size: int | None = None

    @property
    def feature(self) -> str | None:
        """The submodule whose activation's Jacobian is taken (target `feature:NAME`), or None."""
        return self.target.removeprefix(FEATURE_PREFIX) if is_feature(self.target) else None

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


def is_feature(target: str | None) -> bool:
    """Whether `target` names an internal feature (`feature:NAME`, from --feature NAME)."""
    return target is not None and target.startswith(FEATURE_PREFIX)


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


def check_request(opts: EstimateOptions, resume: bool, overwrite: bool) -> None:
    """Refuse options that cannot go together or are out of range (validate), and --resume with
    --overwrite, before anything is imported or read."""
    if resume and overwrite:
        raise SpectraError("--resume and --overwrite conflict: choose one")
    validate(opts)


def validate(opts: EstimateOptions) -> None:
    for field in dataclasses.fields(opts):
        value = getattr(opts, field.name)
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_INT:
            raise SpectraError(f"--{field.name.replace('_', '-')} {value} is too large")
    if opts.seed < 0:
        raise SpectraError(f"--seed must be non-negative, got {opts.seed}")
    if opts.target not in TARGETS and not (is_feature(opts.target) and opts.feature):
        raise SpectraError(f"--target must be one of {', '.join(TARGETS)}")
    if opts.feature is not None:
        check_feature(opts)
    if opts.save_vectors < 0:
        raise SpectraError(f"--save-vectors must be non-negative, got {opts.save_vectors}")
    if opts.block_size is not None and (opts.method != "topk" or not 1 <= opts.block_size <= opts.k):
        raise SpectraError(f"--block-size applies to --method topk, between 1 and --k ({opts.k}); got "
                           f"{opts.block_size}")
    if opts.k is not None and opts.save_vectors > opts.k:
        raise SpectraError(f"--save-vectors {opts.save_vectors} exceeds --k {opts.k}: a run keeps the "
                           "vectors of the values it keeps")
    if opts.method not in METHODS:
        raise SpectraError(f"--method must be one of {', '.join(METHODS)}")
    if opts.spacing not in (None, "tau", "t"):
        raise SpectraError(f"--spacing must be tau or t, got {opts.spacing!r}")
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


def check_feature(opts: EstimateOptions) -> None:
    """--feature NAME: a rectangular Jacobian (F x D), built densely by JVPs, VJPs or finite
    differences; it has singular values only."""
    if opts.method == "topk":
        raise SpectraError("--feature takes a dense method (auto, jvp, vjp, fd-forward, fd-central), "
                           "not --method topk")
    if opts.directions != "basis":
        raise SpectraError("--directions haar needs a square Jacobian; a --feature Jacobian is rectangular")
    if opts.compile:
        raise SpectraError("--compile applies to the score, denoiser and eps, not to --feature")
