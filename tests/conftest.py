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


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
