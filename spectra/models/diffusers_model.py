"""`diffusers:FOLDER`: a locally saved diffusers UNet2DModel and its scheduler config.

FOLDER holds either both configs side by side (`config.json` and `scheduler_config.json`, from
`save_pretrained` of the model and of the scheduler into one folder) or a pipeline's layout
(`unet/` and `scheduler/`). Nothing is downloaded (local_files_only). The scheduler gives:

* the schedule: ddpm with the scheduler's own `alphas_cumprod` table (any beta schedule), on
  integer timesteps t = 0..T-1 with x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (theory.md 1);
  the model is called with int64 timesteps, as diffusers' pipelines call it;
* the parameterization from `prediction_type`: epsilon -> eps, sample -> x0, v_prediction -> v.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spectra.errors import SpectraError, first_line
from spectra.models.network import NetworkScoreModel
from spectra.models.parameterization import check_parameterization
from spectra.schedules import Schedule

PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}


class DiffusersScoreModel(NetworkScoreModel):
    """A diffusers model called as `model(x, timesteps, return_dict=False)[0]` with int64 timesteps."""

    data_range = (-1.0, 1.0)  # diffusers' image pipelines normalize images to [-1, 1]

    def __init__(self, module: torch.nn.Module, schedule: Schedule, parameterization: str,
                 shape: tuple[int, ...], spec: str, details: dict[str, Any]) -> None:
        super().__init__(module, schedule, parameterization, shape, spec, interface="diffusers")
        self.details = details

    def labels(self, t: float, n: int, x: torch.Tensor) -> torch.Tensor:
        return torch.full((n,), round(float(t)), dtype=torch.int64, device=x.device)

    def to(self, device: torch.device | str, dtype: torch.dtype) -> DiffusersScoreModel:
        """All parameters in `dtype` (spectra runs float32 or float64 end to end); diffusers'
        advice to keep some modules in float32 is meant for half precision and is silenced."""
        with _quiet():
            self.module.to(device=device, dtype=dtype)
        return self

    def n_classes(self) -> int:
        """`num_class_embeds` of a UNet with a class embedding table (0: unconditional)."""
        return int(getattr(self.module.config, "num_class_embeds", None) or 0)

    def class_labels(self, x: torch.Tensor) -> torch.Tensor:
        """The chosen class as diffusers takes it: an int64 index, (1,), broadcast over the batch."""
        return torch.tensor([self.class_label], dtype=torch.int64, device=x.device)

    def call(self, x: torch.Tensor, labels: torch.Tensor) -> Any:
        extra = {} if self.class_label is None else {"class_labels": self.class_labels(x)}
        return self.module(x, labels, return_dict=False, **extra)[0]

    def config(self) -> dict[str, Any]:
        return {**super().config(), **self.details}


@contextmanager
def _quiet() -> Iterator[None]:
    """diffusers' logging at error level for the block (its warnings are meant for other uses)."""
    import diffusers

    verbosity = diffusers.utils.logging.get_verbosity()
    diffusers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        diffusers.utils.logging.set_verbosity(verbosity)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SpectraError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or "_class_name" not in data:
        raise SpectraError(f"{path} is not a diffusers config (no _class_name)")
    return data


def _locate(root: Path) -> tuple[Path, Path]:
    """(model folder, scheduler folder) of a diffusers FOLDER."""
    if not root.is_dir():
        raise SpectraError(f"diffusers folder not found: {root}")
    model_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (model_dir / "config.json").is_file():
        raise SpectraError(f"{root} holds no model config.json (nor unet/config.json)")
    for sched_dir in (root / "scheduler", root):
        if (sched_dir / "scheduler_config.json").is_file():
            return model_dir, sched_dir
    raise SpectraError(f"{root} holds no scheduler_config.json (nor scheduler/scheduler_config.json)")


def _diffusers_class(diffusers, config: dict[str, Any], base: type, folder: Path) -> type:
    """The diffusers class a config's `_class_name` names, which must be a model (ModelMixin) or
    scheduler (SchedulerMixin) class of diffusers itself: a config file chooses among diffusers'
    own loaders of weights, never a pipeline or any other callable."""
    name = str(config["_class_name"])
    cls = getattr(diffusers, name, None)
    if cls is None:
        raise SpectraError(f"diffusers {diffusers.__version__} has no class {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise SpectraError(f"{folder}: _class_name {name!r} is not a diffusers {base.__name__} class")
    return cls


def _safetensors_only() -> bool | None:
    """True (refuse pickled .bin weights) where torch.load would unpickle code: torch before
    2.6 defaults to weights_only=False, and old diffusers versions do not ask for it."""
    major, minor = (int(v) for v in torch.__version__.split(".")[:2])
    return True if (major, minor) < (2, 6) else None


def hub_folder(name: str) -> str:
    """The local folder of `name`: the folder itself when it exists, else, for a Hugging Face id
    ORG/NAME, its snapshot in the local Hugging Face cache (HF_HOME, HF_HUB_CACHE), found without
    any network access: spectra downloads nothing."""
    if Path(name).exists() or not re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return name
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.utils import LocalEntryNotFoundError
    except ImportError:
        raise SpectraError("diffusers: hub ids need the huggingface_hub package (installed with "
                           "diffusers)") from None
    try:
        return snapshot_download(name, local_files_only=True)
    except LocalEntryNotFoundError:
        raise SpectraError(f"{name} is neither a folder nor in the local Hugging Face cache; spectra "
                           f"downloads nothing: fetch it first (huggingface-cli download {name})") from None
    except Exception as exc:  # a malformed id or cache
        raise SpectraError(f"cannot find {name} in the Hugging Face cache: {first_line(exc)}") from None


def load_diffusers(folder: str, spec: str, parameterization: str | None = None) -> DiffusersScoreModel:
    """The ScoreModel of a diffusers FOLDER (see module docstring); `parameterization` overrides
    the scheduler's prediction_type."""
    try:
        import diffusers
    except ImportError:
        raise SpectraError(
            "diffusers: model specs need the diffusers package (pip install 'spectra[diffusers]')"
        ) from None
    folder = hub_folder(folder)
    model_dir, sched_dir = _locate(Path(folder))
    model_cfg = _read_json(model_dir / "config.json")
    sched_cfg = _read_json(sched_dir / "scheduler_config.json")
    model_cls = _diffusers_class(diffusers, model_cfg, diffusers.ModelMixin, model_dir)
    sched_cls = _diffusers_class(diffusers, sched_cfg, diffusers.SchedulerMixin, sched_dir)
    try:
        with _quiet():  # no advice about optional packages
            module = model_cls.from_pretrained(model_dir, local_files_only=True,
                                               use_safetensors=_safetensors_only())
            scheduler = sched_cls.from_config(sched_cfg)
    except Exception as exc:  # third-party loading: any failure is a bad model folder
        raise SpectraError(f"cannot load {folder}: {type(exc).__name__}: {first_line(exc)}") from None
    abar = getattr(scheduler, "alphas_cumprod", None)
    if abar is None:
        raise SpectraError(f"scheduler {sched_cls.__name__} has no alphas_cumprod table")
    prediction = getattr(scheduler.config, "prediction_type", "epsilon")
    if parameterization is None:
        if prediction not in PREDICTION_TYPES:
            raise SpectraError(
                f"unknown prediction_type {prediction!r} in {sched_dir / 'scheduler_config.json'} "
                f"(expected one of {', '.join(PREDICTION_TYPES)}; or pass --parameterization)"
            )
        parameterization = PREDICTION_TYPES[prediction]
    check_parameterization(parameterization)
    schedule = Schedule("ddpm", {}, tuple(np.asarray(torch.as_tensor(abar).double().cpu())))
    cfg = module.config
    size = cfg.get("sample_size")
    size = (size, size) if isinstance(size, int) else tuple(size or ())
    if len(size) != 2 or "in_channels" not in cfg:
        raise SpectraError(f"{model_dir / 'config.json'}: need in_channels and sample_size")
    details = {
        "diffusers_version": diffusers.__version__,
        "model_class": model_cls.__name__,
        "scheduler_class": sched_cls.__name__,
        "prediction_type": prediction,
        "folder": str(Path(folder).resolve()),
    }
    return DiffusersScoreModel(module, schedule, parameterization, (int(cfg["in_channels"]), *size),
                               spec, details)
