"""torchrun sweeps: two CPU processes (gloo) share the anchors and leave one run file whose values
equal a one-process run's; a rank killed mid-sweep leaves shards that --resume completes."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import spectra
import spectra.store

ASSETS = Path(__file__).parent / "assets"
COMPARED = ("singular_values", "sym_eigenvalues", "asymmetry", "residuals", "jvp_products",
            "vjp_products", "done")


def estimate(out, data, *extra, nproc=None, kill_at=0, kill_rank=None):
    env = {**os.environ, "SPECTRA_TEST_KILL_AT": str(kill_at), "OMP_NUM_THREADS": "1"}
    if kill_rank is not None:
        env["SPECTRA_TEST_KILL_RANK"] = str(kill_rank)
    launch = [sys.executable]
    if nproc is not None:
        launch += ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd = [*launch, "-m", "spectra_cli", "estimate", "--model", f"{ASSETS / 'nets.py'}:killer",
           "--schedule", "ve", "--parameterization", "eps", "--data", str(data), "--n-samples", "6",
           "--n-times", "4", "--at", "noisy", "--method", "jvp", "--out", str(out), "--quiet", *extra]
    # a named method: auto would time paths first (forward calls the kill counts) and could take
    # another path than the reference run, equal only to rounding
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def assert_same_values(a, b):
    run_a, run_b = spectra.load(a), spectra.load(b)
    assert run_a.complete and run_b.complete
    for name in COMPARED:
        if name in run_a:
            np.testing.assert_array_equal(run_a[name], run_b[name], err_msg=name)


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).standard_normal((6, 16)))
    return path


@pytest.mark.parametrize("method", [["--batch-size", "16"], ["--method", "topk", "--k", "4",
                                                               "--batch-size", "4"]])
def test_two_ranks_equal_one_process(tmp_path, data, method):
    one, two = tmp_path / "one.h5", tmp_path / "two.h5"
    assert estimate(one, data, *method).returncode == 0
    res = estimate(two, data, *method, nproc=2)
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_values(one, two)
    assert not list(tmp_path.glob("two.h5.rank*"))  # shards merged and removed


def test_killed_rank_then_resume_completes(tmp_path, data):
    ref, run = tmp_path / "ref.h5", tmp_path / "run.h5"
    assert estimate(ref, data, "--batch-size", "16").returncode == 0
    # rank 1 owns anchor chunks 1, 3, 5; its 10th forward call is in its second time step
    crash = estimate(run, data, "--batch-size", "16", nproc=2, kill_at=10, kill_rank=1)
    assert crash.returncode != 0
    assert "SIGKILL" in crash.stderr or str(-signal.SIGKILL) in crash.stderr or "Signal 9" in crash.stderr
    shards = sorted(p.name for p in tmp_path.glob("run.h5.rank*"))
    assert shards == ["run.h5.rank0", "run.h5.rank1"]
    partial = spectra.load(tmp_path / "run.h5.rank1")["done"]
    assert 0 < partial.sum() and not partial.all()
    assert not spectra.load(run).complete
    res = estimate(run, data, "--batch-size", "16", "--resume", nproc=2)
    assert res.returncode == 0, res.stderr[-2000:]
    assert_same_values(ref, run)
    assert not list(tmp_path.glob("run.h5.rank*"))


def test_plain_resume_folds_in_the_shards(tmp_path, data):
    """A sweep interrupted under torchrun can be finished by one process."""
    ref, run = tmp_path / "ref.h5", tmp_path / "run.h5"
    assert estimate(ref, data, "--batch-size", "16").returncode == 0
    assert estimate(run, data, "--batch-size", "16", nproc=2, kill_at=10, kill_rank=1).returncode != 0
    res = estimate(run, data, "--batch-size", "16", "--resume")
    assert res.returncode == 0, res.stderr
    assert_same_values(ref, run)
    assert not list(tmp_path.glob("run.h5.rank*"))


def test_merge_marks_a_fully_done_run_complete(tmp_path, data):
    run = tmp_path / "run.h5"
    assert estimate(run, data, "--batch-size", "16").returncode == 0
    shard = tmp_path / "run.h5.rank0"
    shard.write_bytes(run.read_bytes())
    import h5py

    with h5py.File(run, "r+") as f:  # killed between the last `done` and `complete`
        f.attrs["complete"] = False
    assert spectra.store.merge(run, shard) == 0
    assert spectra.load(run).complete


def test_resume_may_change_the_batch_size(tmp_path, data):
    ref, run = tmp_path / "ref.h5", tmp_path / "run.h5"
    assert estimate(ref, data, "--batch-size", "16").returncode == 0
    assert estimate(run, data, "--batch-size", "16", kill_at=8).returncode == -signal.SIGKILL
    res = estimate(run, data, "--batch-size", "48", "--resume")
    assert res.returncode == 0, res.stderr
    final, full = spectra.load(run), spectra.load(ref)
    assert final.complete and final.attrs["batch_size"] == 48
    # another grouping of anchors: equal up to rounding (the smallest values are ~1e-19 apart)
    np.testing.assert_allclose(final["singular_values"], full["singular_values"], rtol=1e-12, atol=1e-14)
