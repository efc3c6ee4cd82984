"""Acceptance: a run killed with SIGKILL part-way, then resumed, ends complete with values
identical to an uninterrupted run (real subprocesses, real HDF5 files)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np

import spectra.store

NETS = Path(__file__).parent / "assets" / "nets.py"
VALUES = ("x0", "t", "alpha", "sigma", "tau", "singular_values", "sym_eigenvalues", "asymmetry",
          "done", "points")


def spectra_cmd(out, data, env_extra=None, *extra):
    env = {**os.environ, **(env_extra or {})}
    cmd = [sys.executable, "-m", "spectra_cli", "estimate", "--model", f"{NETS}:killer",
           "--schedule", "ve", "--parameterization", "eps", "--data", str(data),
           "--n-samples", "6", "--n-times", "5", "--at", "noisy", "--directions", "haar",
           "--batch-size", "16", "--save-points", "--out", str(out), "--quiet",
           # an explicit method: auto picks the fastest path by timing, so two separate runs may
           # take different paths, equal only to round-off (a resume keeps its run's path)
           "--method", "jvp", *extra]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_sigkill_then_resume_matches_uninterrupted(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((6, 16)))
    ref, killed = tmp_path / "ref.h5", tmp_path / "killed.h5"

    assert spectra_cmd(ref, data).returncode == 0
    crash = spectra_cmd(killed, data, {"SPECTRA_TEST_KILL_AT": "32"})
    assert crash.returncode == -signal.SIGKILL, crash.stderr

    partial = spectra.store.load(killed)
    done = partial["done"]
    assert not partial.complete and 0 < done.sum() < done.size
    full = spectra.store.load(ref)
    # what the crashed run certified as done is exactly the reference's values; the rest is NaN
    np.testing.assert_array_equal(partial["singular_values"][done], full["singular_values"][done])
    assert np.isnan(partial["singular_values"][~done]).all()

    # a resume with different options is refused and changes nothing
    before = killed.read_bytes()
    refused = spectra_cmd(killed, data, None, "--resume", "--seed", "1")
    assert refused.returncode == 2 and "options differ" in refused.stderr
    assert killed.read_bytes() == before

    resumed = spectra_cmd(killed, data, None, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    final = spectra.store.load(killed)
    assert final.complete
    for name in VALUES:
        np.testing.assert_array_equal(final[name], full[name], err_msg=name)

    # resuming a complete run is a no-op
    again = spectra_cmd(killed, data, None, "--resume")
    assert again.returncode == 0
    with h5py.File(killed) as f:
        assert bool(f.attrs["complete"])


def test_resume_without_a_file_starts_fresh(tmp_path):
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((6, 16)))
    out = tmp_path / "new.h5"
    assert spectra_cmd(out, data, None, "--resume").returncode == 0
    assert spectra.store.load(out).complete
