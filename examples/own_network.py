"""Jacobian spectra of a network of your own, in memory, from Python.

A small eps-predicting MLP (random weights here; load your own with torch.load(..., weights_only=True)
and module.load_state_dict) under the VE schedule, at anchors from a numpy array. spectra.estimate
writes the run file and returns it; `run["singular_values"]` is (anchors, times, values).

    python examples/own_network.py [OUT_FOLDER]
"""

import sys
from pathlib import Path

import numpy as np
import torch

import spectra


class EpsMLP(torch.nn.Module):
    """eps(x, t) for flat samples of dimension `dim`; t enters as log t."""

    def __init__(self, dim: int = 16, width: int = 64) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim + 1, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, torch.log(t)[:, None]], dim=1))


def main(folder: Path) -> None:
    torch.manual_seed(0)
    net = EpsMLP().double()
    anchors = np.random.default_rng(0).standard_normal((4, 16))
    run = spectra.estimate(net, out=folder / "own_network.h5", schedule="ve", parameterization="eps",
                           data=anchors, times=[0.01, 0.1, 1.0], method="auto", overwrite=True)
    sv = run["singular_values"]
    print(f"{run.attrs['method_used']} on {sv.shape[0]} anchors x {sv.shape[1]} times: "
          f"largest singular value of the score Jacobian at each time {sv[0, :, 0].round(3)}")
    # the same model again from the file's spec would need code: the run records python:EpsMLP
    assert run.complete and sv.shape == (4, 3, 16) and np.all(np.isfinite(sv))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("."))
