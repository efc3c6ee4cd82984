"""Default chunk sizes: a fixed budget on the CPU, a share of the free memory on a GPU."""

import pytest
import torch

from spectra.jacobian import AutodiffPath, make_operator
from spectra.jacobian.memory import pair_bytes
from spectra.models import demo_manifold_spec, load_model
from spectra.sweep.setup import default_batch_size


def test_gpu_batch_follows_free_memory():
    model = load_model(demo_manifold_spec())  # analytic: activation_factor from its rank
    per_pair = 100 * 8 * model.activation_factor
    small = default_batch_size(model, 100, torch.float64, free=4 * 50 * per_pair)
    large = default_batch_size(model, 100, torch.float64, free=4 * 400 * per_pair)
    assert (small, large) == (50, 400)
    assert default_batch_size(model, 100, torch.float64, free=0) == 1
    assert default_batch_size(model, 100, torch.float64, free=2**50) == 4096
    half = default_batch_size(model, 100, torch.float32, free=4 * 50 * per_pair)
    assert half == 100  # float32 pairs take half the bytes


def test_measured_pair_bytes_replace_the_estimate():
    model = load_model(demo_manifold_spec())
    free = 2**30
    assert default_batch_size(model, 100, torch.float64, free=free, pair_bytes=2**20) == 256
    assert default_batch_size(model, 100, torch.float64, free=free, pair_bytes=2**31) == 1


def test_memory_is_measured_on_cuda_only():
    op = make_operator(load_model(demo_manifold_spec()), torch.zeros(1, 100, dtype=torch.float64),
                       0.5, "score", AutodiffPath("jvp"), 8)
    with pytest.raises(ValueError, match="CUDA"):
        pair_bytes(op, ("matmat",))


def test_cpu_batch_is_a_fixed_budget():
    model = load_model(demo_manifold_spec())
    cpu = default_batch_size(model, 100, torch.float64, torch.device("cpu"))
    assert cpu == min(4096, 2**28 // (100 * 8 * model.activation_factor))
