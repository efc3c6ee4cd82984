"""EDM-style preconditioned denoisers (Karras et al. 2022), schedule `edm` (alpha = 1, sigma = t).

A preconditioned denoiser is D(x; sigma) = c_skip x + c_out F(c_in x; c_noise) with

    c_skip = sd^2 / (sigma^2 + sd^2),   c_out = sigma sd / sqrt(sigma^2 + sd^2),
    c_in   = 1 / sqrt(sigma^2 + sd^2),  c_noise = ln(sigma) / 4          (sd = sigma_data),

and D is the x0 prediction (theory.md 2). `edm:file.py:factory` takes a factory returning such a
module, called as `module(x, sigma)` (and with `force_fp32=True` where its forward accepts it, as
EDM's EDMPrecond does, so no half precision runs; such a module computes in float32, so runs
need --dtype float32); `EDMPrecond` builds one from a raw network F.
"""

from __future__ import annotations

import inspect
import math
import pickle
from pathlib import Path

import torch

from spectra.errors import SpectraError, first_line
from spectra.models.network import NetworkScoreModel
from spectra.schedules import Schedule


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, ...]:
    """(c_skip, c_out, c_in, c_noise) at noise levels sigma (any shape), as in the module docstring."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt(), sigma.log() / 4


class EDMPrecond(torch.nn.Module):
    """D(x; sigma) from a raw network `raw(c_in x, c_noise)` with c_noise of shape (B,)."""

    def __init__(self, raw: torch.nn.Module, sigma_data: float = 0.5,
                 sigma_min: float = 0.002, sigma_max: float = 80.0) -> None:
        super().__init__()
        self.raw = raw
        self.sigma_data = float(sigma_data)
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, force_fp32: bool = True) -> torch.Tensor:
        sigma = sigma.to(x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        c_skip, c_out, c_in, c_noise = edm_coefficients(sigma, self.sigma_data)
        return c_skip * x + c_out * self.raw(c_in * x, c_noise.flatten())


class EDMScoreModel(NetworkScoreModel):
    """An edm: model. Modules of EDM's own codebase (they carry `use_fp16`) cast their network
    input to float32 whatever their weights are, so they run in float32 only."""

    data_range = (-1.0, 1.0)  # EDM's datasets are images scaled to [-1, 1]

    def to(self, device: torch.device | str, dtype: torch.dtype) -> EDMScoreModel:
        if dtype != torch.float32 and hasattr(self.module, "use_fp16"):
            raise SpectraError(
                f"{type(self.module).__name__} (EDM's codebase) runs its network in float32: "
                "use --dtype float32"
            )
        return super().to(device, dtype)


def load_snapshot(path: str, allow_pickle: bool) -> torch.nn.Module:
    """The network of an EDM snapshot pickle (`network-snapshot-*.pkl`: a dict whose `ema` is the
    network, or a pickled network). A pickle runs the code it names when read, so it is read only
    with `allow_pickle` (the user's --allow-pickle); EDM's own modules (torch_utils, dnnlib,
    training) must be importable, from a clone of EDM on PYTHONPATH."""
    file = Path(path)
    if not allow_pickle:
        raise SpectraError(f"{path} is a pickle, which runs code when it is read: pass --allow-pickle "
                           "if you trust the file")
    if not file.is_file():
        raise SpectraError(f"EDM snapshot not found: {path}")
    try:
        with file.open("rb") as fh:
            obj = pickle.load(fh)
    except ModuleNotFoundError as exc:
        raise SpectraError(f"cannot unpickle {path}: no module named {exc.name!r} (put a clone of EDM's "
                           "repository on PYTHONPATH)") from None
    except Exception as exc:  # anything a damaged or foreign pickle raises
        raise SpectraError(f"cannot unpickle {path}: {type(exc).__name__}: {first_line(exc)}") from None
    net = obj.get("ema") if isinstance(obj, dict) else obj
    if not isinstance(net, torch.nn.Module):
        raise SpectraError(f"{path} holds {type(net).__name__}, not an EDM network (expected a dict "
                           "with 'ema' or a module)")
    return net


def edm_model(module: torch.nn.Module, spec: str, shape: tuple[int, ...] | None,
              parameterization: str | None = None, schedule: str | None = None) -> NetworkScoreModel:
    """Wrap a preconditioned denoiser module: x0 prediction under schedule edm, whose
    sigma_min/sigma_max come from the module's attributes when they are finite and positive."""
    if parameterization not in (None, "x0"):
        raise SpectraError(f"an edm: model predicts x0, not {parameterization!r}")
    if schedule not in (None, "edm"):
        raise SpectraError(f"an edm: model runs under schedule edm, not {schedule!r}")
    params = {}
    for name in ("sigma_min", "sigma_max"):
        value = getattr(module, name, None)
        if isinstance(value, (int, float)) and 0 < value < math.inf:
            params[name] = float(value)
    try:
        takes_fp32 = "force_fp32" in inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        takes_fp32 = False
    return EDMScoreModel(
        module, Schedule("edm", params), "x0", shape=shape, spec=spec, time_label="sigma",
        call_kwargs={"force_fp32": True} if takes_fp32 else None, interface="edm",
    )
