"""Shared test helpers."""

import numpy as np
import pytest
import torch


def rel_err(measured: np.ndarray, exact: np.ndarray) -> float:
    """Largest relative error; exact zeros are measured against the largest |exact| instead."""
    measured, exact = np.asarray(measured), np.asarray(exact)
    scale = np.where(exact != 0, np.abs(exact), np.abs(exact).max())
    return float(np.max(np.abs(measured - exact) / scale))


@pytest.fixture(autouse=True)
def _float64_default():
    """Tests build tensors explicitly; keep torch's default dtype from leaking between tests."""
    old = torch.get_default_dtype()
    yield
    torch.set_default_dtype(old)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module (used by those that run many small products): on a shared
    2-core CPU, OpenMP threads spinning against another process made elementwise ops hundreds of
    times slower (benchmarks/peers.py)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
