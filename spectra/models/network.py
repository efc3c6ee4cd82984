"""Wrap a bare torch module as a ScoreModel.

The module is called as `module(x, label, **call_kwargs)` with x of shape (B, *shape) and label a
(B,) tensor, and returns its prediction (eps, x0, v or score) with x's shape. The label is what
the module's codebase feeds its time embedding (`TIME_LABELS`):

* `t`: the schedule time itself, in x's dtype (spectra's convention);
* `sigma`: the noise scale sigma(t) (EDM's D(x; sigma), score_sde's VE models);
* `999t`: 999 t (score_sde's continuous VP models and its DDPM-style models with N = 1000).
"""

from __future__ import annotations

from typing import Any

import torch

from spectra.errors import SpectraError
from spectra.models.base import ScoreModel
from spectra.models.parameterization import check_parameterization, to_target
from spectra.schedules import Schedule

TIME_LABELS = ("t", "sigma", "999t")


class NetworkScoreModel(ScoreModel):
    """A network of a given parameterization under a given schedule.

    Args:
        module: the torch module (put in eval mode here).
        schedule: how the module's time maps to alpha, sigma.
        parameterization: what the module predicts: eps | x0 | v | score.
        shape: the sample shape, if known (else taken from `module.sample_shape` when present).
        spec: the model spec string it was loaded from.
        time_label: what the module takes as its time input (see TIME_LABELS).
        call_kwargs: extra keyword arguments of every call (e.g. EDM's force_fp32=True).
        interface: the codebase convention it was read with (recorded in run files).
    """

    def __init__(
        self,
        module: torch.nn.Module,
        schedule: Schedule,
        parameterization: str,
        shape: tuple[int, ...] | None = None,
        spec: str = "",
        time_label: str = "t",
        call_kwargs: dict[str, Any] | None = None,
        interface: str = "plain",
    ) -> None:
        if time_label not in TIME_LABELS:
            raise SpectraError(
                f"unknown time label {time_label!r} (expected one of {', '.join(TIME_LABELS)})"
            )
        self.module = module.eval()
        self.schedule = schedule
        self.parameterization = check_parameterization(parameterization)
        found = shape if shape is not None else getattr(module, "sample_shape", None)
        self.shape = tuple(int(s) for s in found) if found is not None else None
        self.spec = spec
        self.time_label = time_label
        self.call_kwargs = dict(call_kwargs or {})
        self.interface = interface
        self.class_label: int | None = None

    def to(self, device: torch.device | str, dtype: torch.dtype) -> NetworkScoreModel:
        self.module.to(device=device, dtype=dtype)
        return self

    def config(self) -> dict[str, Any]:
        n_params = sum(p.numel() for p in self.module.parameters())
        return {
            "kind": "network",
            "interface": self.interface,
            "module": type(self.module).__name__,
            "parameters": n_params,
            "schedule": self.schedule.to_dict(),
            "parameterization": self.parameterization,
            "time_label": self.time_label,
            "call_kwargs": self.call_kwargs,
            **({"class_label": self.class_label} if self.class_label is not None else {}),
        }

    def identity(self) -> dict[str, Any]:
        """The base identity, how the module is called, and its class."""
        return {**super().identity(), "module": type(self.module).__name__, "interface": self.interface,
                "time_label": self.time_label, "call_kwargs": self.call_kwargs,
                "class_label": self.class_label}

    def state(self) -> dict[str, torch.Tensor]:
        """The module's parameters and buffers (its state_dict)."""
        return dict(self.module.state_dict())

    def n_classes(self) -> int:
        """Classes of a class-conditional module: EDM's `label_dim` (0: unconditional)."""
        dim = getattr(self.module, "label_dim", 0)
        return dim if isinstance(dim, int) else 0

    def condition(self, class_label: int) -> None:
        """Evaluate every prediction at class `class_label` of a class-conditional module."""
        n = self.n_classes()
        if n <= 0:
            raise SpectraError(f"--class-label: {type(self.module).__name__} is not class-conditional")
        if not 0 <= class_label < n:
            raise SpectraError(f"--class-label {class_label} is not a class of this model (0..{n - 1})")
        self.class_label = class_label

    def class_labels(self, x: torch.Tensor) -> torch.Tensor:
        """EDM's `class_labels` for the chosen class: one-hot, (1, label_dim), broadcast over the
        batch as EDMPrecond broadcasts its own default."""
        labels = torch.zeros((1, self.n_classes()), dtype=x.dtype, device=x.device)
        labels[0, self.class_label] = 1
        return labels

    def labels(self, t: float, n: int, x: torch.Tensor) -> torch.Tensor:
        """The (n,) time input of the module at schedule time t."""
        if self.time_label == "sigma":
            value = float(self.schedule.sigma(t))
        elif self.time_label == "999t":
            value = 999.0 * float(t)
        else:
            value = float(t)
        return torch.full((n,), value, dtype=x.dtype, device=x.device)

    def call(self, x: torch.Tensor, labels: torch.Tensor) -> Any:
        """The module's raw output at x and its time labels (and class, if one was chosen)."""
        if self.class_label is None:
            return self.module(x, labels, **self.call_kwargs)
        return self.module(x, labels, class_labels=self.class_labels(x), **self.call_kwargs)

    def time_inputs(self, t: float, like: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(labels (1,), alpha, sigma): the module's time input for one sample (labels) and the
        schedule values at t as float64 0-d tensors, on `like`'s device."""
        alpha, sigma = self.alpha_sigma(t)
        scalar = {"dtype": torch.float64, "device": like.device}
        return self.labels(t, 1, like), torch.tensor(alpha, **scalar), torch.tensor(sigma, **scalar)

    def predict_from(self, x: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor,
                     sigma: torch.Tensor) -> Any:
        """The prediction at x (B, *shape) given time_inputs: the module's output at its labels.
        Subclasses that feed the module otherwise (spectra train's input scaling) override this,
        and both predict and target_from follow."""
        return self.call(x, labels.repeat(x.shape[0]))

    def target_from(self, x: torch.Tensor, labels: torch.Tensor, alpha: torch.Tensor,
                    sigma: torch.Tensor, *, target: str) -> torch.Tensor:
        out = self.predict_from(x, labels, alpha, sigma)
        return to_target(out, x, alpha, sigma, self.parameterization, target)

    def feature_names(self) -> list[str]:
        """The module's named submodules, in definition order (torch's named_modules)."""
        return [name for name, _ in self.module.named_modules() if name]

    def feature(self, x: torch.Tensor, t: float, name: str) -> torch.Tensor:
        """The output of submodule `name` (its first tensor when it returns a tuple), caught by a
        forward hook while the module predicts at x, t; refused unless it is a (B, ...) tensor.
        The hook keeps a copy (a later in-place op, such as ReLU(inplace=True), would otherwise
        change what it caught) and runs inside torch.func's transforms, so JVPs and VJPs of the
        feature are exact. A submodule that runs more than once per prediction is refused: which
        call is meant would be a guess."""
        try:
            sub = self.module.get_submodule(name)
        except AttributeError:
            names = self.feature_names()
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise SpectraError(f"--feature {name!r} is not a submodule of {type(self.module).__name__} "
                               f"(it has: {shown or 'none'})") from None
        caught: list[Any] = []

        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            value = output[0] if isinstance(output, (tuple, list)) and output else output
            caught.append(value.clone() if isinstance(value, torch.Tensor) else value)

        handle = sub.register_forward_hook(hook)
        try:
            self.predict(x, t)
        finally:
            handle.remove()
        if len(caught) != 1:
            raise SpectraError(f"--feature {name!r}: the submodule ran {len(caught)} times when the model "
                               "predicted; name one that runs once")
        value = caught[0]
        if not isinstance(value, torch.Tensor) or value.ndim < 1 or value.shape[0] != x.shape[0]:
            got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise SpectraError(f"--feature {name!r} returned {got}, not a tensor with the batch of "
                               f"{x.shape[0]} samples first")
        if not value.is_floating_point():
            raise SpectraError(f"--feature {name!r} is of dtype {str(value.dtype).removeprefix('torch.')}; "
                               "a Jacobian needs a real floating-point feature")
        return value

    def predict(self, x: torch.Tensor, t: float) -> torch.Tensor:
        out = self.predict_from(x, *self.time_inputs(t, x))
        if not isinstance(out, torch.Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise SpectraError(
                f"model returned shape {got} for input of shape {tuple(x.shape)} at t={t:g}; "
                "it must return its prediction with the input's shape"
            )
        return out
