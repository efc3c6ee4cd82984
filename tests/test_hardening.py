"""Issue 14: a file is data and never code, a resume is checked by content, a lock that holds
without HDF5's, --overwrite replaces only spectra's own files, and every bad input ends in one
line with exit status 2 and no file changed."""

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from spectra_cli.main import cli

import spectra

ASSETS = Path(__file__).parent / "assets"
NETS = ASSETS / "nets.py"
DEMO = Path(spectra.__file__).parent.parent / "data" / "demo.pt"
SMALL = ["--n-samples", "2", "--n-times", "3", "--quiet"]
GAUSS = 'kind = "gaussian"\nambient_dim = 6\nvariances = [1.0, 0.5]\nseed = {seed}\n'


def invoke(*args, env=None):
    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_refused(res, *fragments):
    """Exit 2, at most 3 lines, the first an `error:` line naming the problem, no traceback."""
    assert res.exit_code == 2, (res.exit_code, res.output, res.exception)
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert 1 <= len(lines) <= 3 and lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def spectra_lock(pid, **extra):
    """The JSON of a spectra lock owned by `pid` on this host."""
    return json.dumps({"owner": "spectra", "host": socket.gethostname(), "pid": pid, **extra})


def copy_of(run_file, path):
    """A copy of the module's run file at `path`, to damage or to protect."""
    path.write_bytes(run_file.read_bytes())
    return path


def spec(folder, seed=0, name="m.toml"):
    path = Path(folder) / name
    path.write_text(GAUSS.format(seed=seed))
    return path


@pytest.fixture(scope="module")
def run_file(tmp_path_factory):
    """A complete small run of an analytic model, to damage and to protect."""
    folder = tmp_path_factory.mktemp("run")
    out = folder / "run.h5"
    res = invoke("estimate", "--model", spec(folder), "--out", out, *SMALL)
    assert res.exit_code == 0, res.output
    return out


# --- 1. a checkpoint is data -------------------------------------------------------------------
def _hostile_checkpoint(tmp_path, data_spec):
    ck = torch.load(DEMO, weights_only=True)
    config = json.loads(ck["config"])
    config["data_spec"] = data_spec
    ck["config"] = json.dumps(config)
    out = tmp_path / "hostile.pt"
    torch.save(ck, out)
    return out


def test_checkpoint_naming_a_factory_is_refused_and_imports_nothing(tmp_path):
    marker = tmp_path / "marker"
    code = tmp_path / "payload.py"
    code.write_text(f"open({str(marker)!r}, 'w').write('ran')\ndef make():\n    return None\n")
    ck = _hostile_checkpoint(tmp_path, {"kind": "network", "factory": f"{code}:make"})
    for args in (["--model", ck], ["--model", spec(tmp_path), "--data", ck]):
        assert_refused(invoke("estimate", "--out", tmp_path / "r.h5", *SMALL, *args),
                       "never a factory")
    assert_refused(invoke("train", "--data", spec(tmp_path), "--out", ck, "--steps", "2", "--resume"),
                   "never a factory")
    assert not marker.exists()
    assert not (tmp_path / "r.h5").exists()


def test_checkpoint_naming_a_path_is_refused(tmp_path):
    np.save(tmp_path / "points.npy", np.zeros((4, 100)))
    ck = _hostile_checkpoint(tmp_path, {"kind": "empirical", "points": str(tmp_path / "points.npy")})
    assert_refused(invoke("estimate", "--model", ck, "--out", tmp_path / "r.h5", *SMALL), "never a")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_pickled_code_in_a_pt_file_is_not_run(tmp_path):
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "spectra-checkpoint", "payload": _Payload(str(marker))}, evil)
    for args in (["--model", evil], ["--model", spec(tmp_path), "--data", evil]):
        assert_refused(invoke("estimate", "--out", tmp_path / "r.h5", *SMALL, *args), "cannot read")
    assert not marker.exists()


def _h5_with(path, how, secret):
    with h5py.File(path, "w") as f:
        if how == "external storage":
            f.create_dataset("x", shape=(2, 3), dtype="f8", external=[(str(secret), 0, 48)])
        elif how == "external link":
            f["x"] = h5py.ExternalLink(str(secret), "/x")
        else:
            layout = h5py.VirtualLayout(shape=(2, 3), dtype="f8")
            layout[:] = h5py.VirtualSource(str(secret), "x", shape=(2, 3))
            f.create_virtual_dataset("x", layout)


@pytest.mark.parametrize("how", ["external storage", "external link", "virtual dataset"])
def test_hdf5_data_may_not_reach_other_files(tmp_path, how):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["x"] = np.arange(6.0).reshape(2, 3)
    data = tmp_path / "data.h5"
    _h5_with(data, how, secret)
    res = invoke("estimate", "--model", spec(tmp_path), "--data", data, "--out", tmp_path / "r.h5", *SMALL)
    assert_refused(res, "another file" if how != "virtual dataset" else "other files")


def test_run_file_with_external_storage_is_refused(tmp_path, run_file):
    secret = tmp_path / "secret.bin"
    secret.write_bytes(os.urandom(4096))
    damaged = copy_of(run_file, tmp_path / "run.h5")
    with h5py.File(damaged, "r+") as f:
        shape = f["x0"].shape
        del f["x0"]
        f.create_dataset("x0", shape=shape, dtype="f8", external=[(str(secret), 0, 8 * int(np.prod(shape)))])
    assert_refused(invoke("info", damaged), "x0", "another file")


def test_diffusers_config_may_name_only_model_classes(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "DiffusionPipeline"}))
    (tmp_path / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDPMScheduler"}))
    res = invoke("estimate", "--model", f"diffusers:{tmp_path}", "--data", "noise", "--out",
                 tmp_path / "r.h5", *SMALL)
    assert_refused(res, "DiffusionPipeline", "ModelMixin")


# --- 2. resume by content ----------------------------------------------------------------------
@pytest.fixture
def partial_run(tmp_path):
    """A run of an analytic spec from a data file, cut short: the last time is undone."""
    model = spec(tmp_path)
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(1).standard_normal((3, 6)))
    out = tmp_path / "run.h5"
    res = invoke("estimate", "--model", model, "--data", data, "--out", out, "--n-times", "3", "--quiet")
    assert res.exit_code == 0, res.output
    with h5py.File(out, "r+") as f:
        f["done"][:, -1] = False
        f["singular_values"][:, -1] = np.nan
        f.attrs["complete"] = False
    return tmp_path, model, data, out


def _resume(out, model, data, *extra, cwd=None):
    args = ["estimate", "--model", model, "--data", data, "--out", out, "--n-times", "3", "--quiet",
            "--resume", *extra]
    if cwd is None:
        return invoke(*args)
    old = os.getcwd()
    os.chdir(cwd)
    try:
        return invoke(*args)
    finally:
        os.chdir(old)


def test_resume_refuses_a_spec_edited_in_place(partial_run):
    folder, model, data, out = partial_run
    before = digest(out)
    spec(folder, seed=5)
    assert_refused(_resume(out, model, data), "model differs")
    assert digest(out) == before


def test_resume_refuses_a_rewritten_data_file(partial_run):
    folder, model, data, out = partial_run
    before = digest(out)
    np.save(data, np.random.default_rng(2).standard_normal((3, 6)))
    assert_refused(_resume(out, model, data), "anchors differ")
    assert digest(out) == before


def test_resume_refuses_a_same_named_spec_elsewhere(partial_run):
    folder, model, data, out = partial_run
    before = digest(out)
    other = folder / "other"
    other.mkdir()
    spec(other, seed=9)
    assert_refused(_resume(out, "m.toml", data, cwd=other), "model differs")
    assert digest(out) == before


def test_resume_accepts_the_same_spec_from_another_folder(partial_run):
    folder, model, data, out = partial_run
    sub = folder / "sub"
    sub.mkdir()
    res = _resume(out, "../m.toml", "../x.npy", cwd=sub)
    assert res.exit_code == 0, res.output
    assert spectra.load(out).complete


def test_spelled_out_default_resumes(tmp_path):
    out = tmp_path / "run.h5"
    model = spec(tmp_path)
    assert invoke("estimate", "--model", model, "--out", out, "--n-times", "3", "--quiet").exit_code == 0
    with h5py.File(out, "r+") as f:
        f["done"][:, -1] = False
        f.attrs["complete"] = False
    res = invoke("estimate", "--model", model, "--out", out, "--n-times", "3", "--quiet", "--resume",
                 "--n-samples", "8", "--t-min", "0.01", "--t-max", "1")
    assert res.exit_code == 0, res.output
    assert spectra.load(out).complete


def test_done_with_nonfinite_values_is_recomputed(partial_run):
    folder, model, data, out = partial_run
    reference = spectra.load(out)["singular_values"][:, 0].copy()
    with h5py.File(out, "r+") as f:
        f["singular_values"][1, 0] = np.nan
    res = _resume(out, model, data)
    assert res.exit_code == 0, res.output
    run = spectra.load(out)
    assert run.complete and np.all(np.isfinite(run["singular_values"]))
    np.testing.assert_array_equal(run["singular_values"][:, 0], reference)


@pytest.mark.parametrize("damage", ["done shape", "done missing", "x0 missing", "done dtype"])
def test_resume_refuses_a_malformed_done_or_x0(partial_run, damage):
    folder, model, data, out = partial_run
    with h5py.File(out, "r+") as f:
        if damage == "done shape":
            del f["done"]
            f["done"] = np.zeros((2, 3), dtype=bool)
        elif damage == "done dtype":
            del f["done"]
            f["done"] = np.zeros((3, 3))
        else:
            del f[damage.split()[0]]
    before = digest(out)
    assert_refused(_resume(out, model, data), "damaged run file")
    assert digest(out) == before


# --- 3. a lock that holds without HDF5's ---------------------------------------------------------
def test_compare_during_estimate_without_hdf5_locking(tmp_path):
    env = {**os.environ, "HDF5_USE_FILE_LOCKING": "FALSE", "SPECTRA_TEST_SLEEP": "0.2",
           "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run.h5"
    manifold = tmp_path / "m16.toml"
    manifold.write_text('kind = "gaussian"\nambient_dim = 16\nvariances = [1.0]\n')
    cmd = [sys.executable, "-m", "spectra_cli"]
    est = subprocess.Popen(
        [*cmd, "estimate", "--model", f"{NETS}:sleepy", "--schedule", "ve", "--parameterization", "eps",
         "--data", "noise", "--n-samples", "6", "--n-times", "12", "--batch-size", "16", "--out",
         str(out), "--quiet"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not out.exists() and est.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert est.poll() is None, "the estimate ended before the comparison could start"
        cmp = subprocess.run([*cmd, "compare-theory", str(out), "--manifold", str(manifold)], env=env,
                             capture_output=True, text=True, timeout=120)
        assert est.poll() is None, "the estimate ended during the comparison: make it slower"
        assert cmp.returncode == 2, cmp.stderr
        assert "in use by another spectra process" in cmp.stderr and "Traceback" not in cmp.stderr
    finally:
        _, err = est.communicate(timeout=300)
    assert est.returncode == 0, err
    run = spectra.load(out)
    assert run.complete and run["done"].all()
    assert not (tmp_path / "run.h5.lock").exists()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, run_file):
    out = tmp_path / "run.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    (tmp_path / "run.h5.lock").write_text(spectra_lock(int(dead)))
    res = invoke("estimate", "--model", spec(tmp_path), "--out", out, *SMALL)
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "run.h5.lock").exists()


def test_live_lock_is_respected(tmp_path, run_file):
    out = copy_of(run_file, tmp_path / "run.h5")
    (tmp_path / "run.h5.lock").write_text(spectra_lock(os.getppid(), command="spectra estimate"))
    before = digest(out)
    assert_refused(invoke("estimate", "--model", spec(tmp_path), "--out", out, "--overwrite", *SMALL),
                   "in use")
    assert_refused(invoke("compare-theory", out), "in use")
    assert digest(out) == before


# --- 4. --overwrite replaces only spectra's own files ------------------------------------------
def test_theory_overwrite_refuses_other_files(tmp_path, run_file):
    text = tmp_path / "notes.txt"
    text.write_text("precious")
    run = copy_of(run_file, tmp_path / "run.h5")
    for victim in (text, run):
        before = digest(victim)
        res = invoke("theory", "--manifold", spec(tmp_path), "--out", victim, "--overwrite", "--n-tau", "5")
        assert_refused(res, "refusing to replace", victim.name)
        assert digest(victim) == before
    ok = tmp_path / "theory.h5"
    for _ in range(2):  # its own kind of file is replaced
        res = invoke("theory", "--manifold", spec(tmp_path), "--out", ok, "--overwrite", "--n-tau", "5")
        assert res.exit_code == 0, res.output


@pytest.mark.parametrize("name", ["metrics.json", "gaps.png"])
def test_compare_refuses_to_replace_foreign_outputs(tmp_path, run_file, name):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / name).write_text("someone else's")
    run = copy_of(run_file, tmp_path / "run.h5")
    before = digest(run)
    assert_refused(invoke("compare-theory", run, "--out", folder), "refusing to replace", name)
    assert (folder / name).read_text() == "someone else's" and digest(run) == before
    assert invoke("compare-theory", run, "--out", tmp_path / "fresh").exit_code == 0
    assert invoke("compare-theory", run, "--out", tmp_path / "fresh").exit_code == 0  # its own files


# --- 5 and 6. one line, exit 2, no file changed --------------------------------------------------
def _npy_declaring(path, shape):
    header = {"descr": "<f8", "fortran_order": False, "shape": shape}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        fh.write(b"\0" * 64)
    return path


def _nested_toml(path):
    path.write_text("kind = \"gaussian\"\nx = " + "[" * 5000 + "]" * 5000 + "\n")
    return path


def _corrupt_npz(path):
    np.savez(path, x=np.zeros((3, 6)))
    raw = bytearray(path.read_bytes())
    raw[10:40] = b"\xff" * 30
    path.write_bytes(bytes(raw))
    return path


def estimate_cases(tmp_path):
    m = spec(tmp_path)
    net = ["--model", f"{NETS}:tiny", "--schedule", "ve", "--parameterization", "eps"]
    big = tmp_path / "big.toml"
    big.write_text('kind = "gaussian"\nambient_dim = 1000000000000\nvariances = [1.0]\n')
    sched = tmp_path / "sched.toml"
    sched.write_text(GAUSS.format(seed=0) + "[schedule]\nname = \"ve\"\nsigma_min = 5.0\nsigma_max = 1.0\n")
    beta = tmp_path / "beta.toml"
    beta.write_text(GAUSS.format(seed=0) + "[schedule]\nname = \"ddpm\"\nbeta_end = 1.0\n")
    negative = tmp_path / "negative.toml"
    negative.write_text('kind = "gmm"\npreset = "isotropic"\nambient_dim = -1\nn_components = 1\n'
                        'variance = 0.5\n')
    cplx = tmp_path / "complex.npy"
    np.save(cplx, np.ones((3, 6), dtype=complex))
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / "run.h5.tmp").mkdir()
    return {
        "huge --n-samples": (["--model", m, "--n-samples", str(10**13)], ["--n-samples", "memory"]),
        "huge --n-times": (["--model", m, "--n-times", str(10**13)], ["--n-times", "memory"]),
        "huge --shape": ([*net, "--data", "noise", "--shape", "100000,100000"], ["memory"]),
        "huge dense D": ([*net[:1], f"{NETS}:tiny", *net[2:], "--data", "noise", "--shape", "400000"],
                         ["dense Jacobian", "memory"]),
        "huge --batch-size": (["--model", m, "--batch-size", str(10**20)], ["too large"]),
        "huge ambient_dim": (["--model", big], ["memory"]),
        "npy declaring terabytes": (["--model", m, "--data", _npy_declaring(tmp_path / "tb.npy",
                                                                             (10**7, 10**6))],
                                    ["cannot read"]),
        "empty --times": (["--model", m, "--times", ""], ["--times"]),
        "separator-only --times": (["--model", m, "--times", ",,"], ["--times"]),
        "negative seed": (["--model", m, "--seed", "-1"], ["--seed"]),
        "oversized seed": (["--model", m, "--seed", str(2**70)], ["--seed"]),
        "corrupt npz": (["--model", m, "--data", _corrupt_npz(tmp_path / "bad.npz")], ["cannot read"]),
        "nested TOML": (["--model", _nested_toml(tmp_path / "deep.toml")], ["nested too deeply"]),
        "sigma_min above sigma_max": (["--model", sched], ["sigma_min < sigma_max"]),
        "beta_end of 1": (["--model", beta], ["beta_end < 1"]),
        "complex data": (["--model", m, "--data", cplx], ["complex"]),
        "negative ambient_dim in a mixture": (["--model", negative], ["ambient_dim"]),
        "ignored --shape": (["--model", m, "--shape", "2,3"], ["--shape", "does not apply"]),
        "integer output": ([*net[:1], f"{NETS}:integer_output", *net[2:], "--data", "noise"],
                           ["int64", "floating-point"]),
        "factory calls sys.exit": (["--model", f"{NETS}:exits"], ["sys.exit(3)"]),
        "model calls sys.exit": ([*net[:1], f"{NETS}:exits_in_forward", *net[2:], "--data", "noise"],
                                 ["sys.exit(0)"]),
    }


with __import__("tempfile").TemporaryDirectory() as _scratch:
    ESTIMATE_CASES = list(estimate_cases(Path(_scratch)))


@pytest.mark.parametrize("name", ESTIMATE_CASES)
def test_estimate_bad_input_is_one_line(tmp_path, run_file, name):
    args, fragments = estimate_cases(tmp_path)[name]
    out = copy_of(run_file, tmp_path / "run.h5")
    before = digest(out)
    assert_refused(invoke("estimate", "--out", out, "--overwrite", *SMALL, *args), *fragments)
    assert digest(out) == before
    assert sorted(p.name for p in tmp_path.glob("run.h5*")) == ["run.h5"]


def test_float16_output_is_recorded_as_a_conversion(tmp_path):
    out = tmp_path / "run.h5"
    with pytest.warns(UserWarning, match="float16"):
        res = invoke("estimate", "--model", f"{NETS}:half_output", "--schedule", "ve",
                     "--parameterization", "eps", "--data", "noise", "--out", out, *SMALL)
    assert res.exit_code == 0, res.output
    assert spectra.load(out).attrs["model_output_dtype"] == "float16"


def test_output_folder_problems(tmp_path):
    m = spec(tmp_path)
    assert_refused(invoke("estimate", "--model", m, "--out", tmp_path / "nope" / "r.h5", *SMALL),
                   "does not exist")
    assert_refused(invoke("estimate", "--model", m, "--out", tmp_path / ("a" * 250 + ".h5"), *SMALL),
                   "too long")
    stale = tmp_path / "r.h5.tmp"
    stale.mkdir()
    assert_refused(invoke("estimate", "--model", m, "--out", tmp_path / "r.h5", *SMALL), "in the way")
    assert not (tmp_path / "r.h5").exists()
    stale.rmdir()
    stale.write_text("someone's notes")  # not a file spectra writes: kept, and named
    assert_refused(invoke("estimate", "--model", m, "--out", tmp_path / "r.h5", *SMALL), "not one spectra")
    assert stale.read_text() == "someone's notes"
    stale.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)  # what a run killed mid-creation leaves
    assert invoke("estimate", "--model", m, "--out", tmp_path / "r.h5", *SMALL).exit_code == 0


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        if subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode != 0:
            pytest.skip("root without chattr: no way to make a read-only folder here")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_read_only_output_folder(tmp_path, read_only_folder):
    m = spec(tmp_path)
    for args in (["estimate", "--model", m, "--out", read_only_folder / "r.h5", *SMALL],
                 ["theory", "--manifold", m, "--out", read_only_folder / "t.h5", "--n-tau", "5"],
                 ["train", "--data", m, "--out", read_only_folder / "ck.pt", "--steps", "2"]):
        assert_refused(invoke(*args), "cannot write")


@pytest.fixture
def tiny_disk(tmp_path):
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small file system here (needs root)")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_full_disk(tmp_path, tiny_disk):
    res = invoke("estimate", "--model", spec(tmp_path), "--out", tiny_disk / "r.h5", "--n-samples", "64",
                 "--n-times", "40", "--quiet")
    assert_refused(res, "disk")
    assert list(tiny_disk.iterdir()) == []


def test_train_bad_input(tmp_path):
    m = spec(tmp_path)
    out = tmp_path / "ck.pt"
    assert_refused(invoke("train", "--data", m, "--out", out, "--checkpoint-every", "0"),
                   "--checkpoint-every")
    assert_refused(invoke("train", "--data", m, "--out", out, "--width", str(10**9)), "--width", "memory")
    assert_refused(invoke("train", "--data", m, "--out", out, "--seed", "-3"), "--seed")
    assert not out.exists()


def _damaged(run_file, tmp_path, damage):
    path = copy_of(run_file, tmp_path / "run.h5")
    with h5py.File(path, "r+") as f:
        if damage == "missing attribute":
            del f.attrs["target"]
        elif damage == "invalid JSON attribute":
            f.attrs["options"] = "{not json"
        elif damage == "missing dataset":
            del f["singular_values"]
        elif damage == "wrong dtype":
            del f["asymmetry"]
            f["asymmetry"] = np.zeros((2, 3), dtype="S4")
        elif damage == "wrong shape":
            del f["tau"]
            f["tau"] = np.zeros(7)
        elif damage == "declares terabytes":
            del f["seconds"]
            f.create_dataset("seconds", shape=(2, 3), dtype="f8")
            f.create_dataset("huge", shape=(10**7, 10**7), dtype="f8", chunks=(1, 1000))
    return path


@pytest.mark.parametrize("damage", ["missing attribute", "invalid JSON attribute", "missing dataset",
                                    "wrong dtype", "wrong shape", "declares terabytes"])
def test_malformed_run_files(tmp_path, run_file, damage):
    path = _damaged(run_file, tmp_path, damage)
    before = digest(path)
    commands = [["info", path], ["plot", path, "--out", tmp_path / "p"], ["compare-theory", path]]
    if damage != "declares terabytes":  # a resume reads only the datasets of the format
        commands.append(["estimate", "--model", spec(tmp_path), "--out", path, "--resume", *SMALL])
    for args in commands:
        assert_refused(invoke(*args))
    assert digest(path) == before


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "2"}, {"WORLD_SIZE": "two", "RANK": "0"},
                                 {"WORLD_SIZE": "2", "RANK": "x"}, {"WORLD_SIZE": "2", "RANK": "5"}])
def test_garbage_torchrun_variables(tmp_path, env):
    res = invoke("estimate", "--model", spec(tmp_path), "--out", tmp_path / "r.h5", *SMALL, env=env)
    assert_refused(res, "torchrun")


@pytest.mark.parametrize("rank", ["0", "1"])
def test_rendezvous_with_a_missing_peer_is_bounded(tmp_path, rank):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": rank, "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port)}
    tick = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "spectra_cli", "estimate", "--model", str(spec(tmp_path)),
                          "--out", str(tmp_path / "r.h5"), *SMALL, "--rendezvous-timeout", "3"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res.stderr
    assert time.monotonic() - tick < 60
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) <= 3 and lines[0].startswith("error: ") and "--rendezvous-timeout" in lines[0]
    assert not (tmp_path / "r.h5").exists()


# --- second round: what a hostile review found ---------------------------------------------------
def test_soft_link_to_an_external_link_is_refused(tmp_path):
    secret = tmp_path / "secret.h5"
    with h5py.File(secret, "w") as f:
        f["x"] = np.full((2, 6), 42.0)
    data = tmp_path / "data.h5"
    with h5py.File(data, "w") as f:
        f["e"] = h5py.ExternalLink(str(secret), "/x")
        f["x"] = h5py.SoftLink("/e")
    res = invoke("estimate", "--model", spec(tmp_path), "--data", data, "--out", tmp_path / "r.h5", *SMALL)
    assert_refused(res, "link")
    assert not (tmp_path / "r.h5").exists()


def test_run_file_with_a_soft_linked_dataset_is_refused(tmp_path, run_file):
    path = copy_of(run_file, tmp_path / "run.h5")
    with h5py.File(path, "r+") as f:
        f.move("x0", "x0real")
        f["x0"] = h5py.SoftLink("/x0real")
    for args in (["info", path], ["plot", path, "--out", tmp_path / "p"]):
        assert_refused(invoke(*args), "soft link")


def test_stale_temporary_symlink_is_not_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    m = spec(tmp_path)
    for out, args in ((tmp_path / "ck.pt", ["train", "--data", m, "--steps", "2", "--width", "8"]),
                      (tmp_path / "r.h5", ["estimate", "--model", m, *SMALL])):
        link = out.with_name(out.name + ".tmp")
        link.symlink_to(victim)
        assert_refused(invoke(*args, "--out", out), "in the way")
        assert victim.read_text() == "precious" and not out.exists()
        link.unlink()


def test_lock_covers_every_name_of_a_file(tmp_path, run_file):
    real = copy_of(run_file, tmp_path / "run.h5")
    alias = tmp_path / "alias.h5"
    alias.symlink_to(real)
    (tmp_path / "run.h5.lock").write_text(spectra_lock(os.getppid()))
    before = digest(real)
    assert_refused(invoke("estimate", "--model", spec(tmp_path), "--out", alias, "--overwrite", *SMALL),
                   "in use")
    assert digest(real) == before


def test_a_stale_lock_is_taken_over_once(tmp_path):
    from spectra.lock import _holder, _take_over, lock_path

    lock = lock_path(tmp_path / "run.h5")
    stale = {"owner": "spectra", "host": socket.gethostname(), "pid": 2**22 + 12345}
    lock.write_text(json.dumps(stale))
    judged = _holder(lock)
    assert _take_over(lock, judged)  # the first process replaces the stale owner with itself
    assert _holder(lock)["pid"] == os.getpid()
    assert not _take_over(lock, judged)  # a second one that judged the same owner gets nothing
    assert _holder(lock)["pid"] == os.getpid()
    guard = lock.with_name(lock.name + ".takeover")
    lock.write_text(json.dumps(stale))
    guard.write_text("")  # a takeover in progress elsewhere
    assert not _take_over(lock, _holder(lock))


def test_resume_refuses_a_model_whose_hidden_weights_changed(tmp_path):
    code = tmp_path / "user_net.py"
    template = ("import sys\nsys.path.insert(0, {assets!r})\nfrom nets import Unregistered\n"
                "def make():\n    return Unregistered({scale})\n")
    code.write_text(template.format(assets=str(ASSETS), scale=1.0))
    model = tmp_path / "net.toml"
    model.write_text(f'kind = "network"\nfactory = "{code.name}:make"\nparameterization = "eps"\n')
    out = tmp_path / "run.h5"
    args = ["estimate", "--model", model, "--data", "noise", "--out", out, "--n-samples", "2",
            "--n-times", "3", "--quiet"]
    assert invoke(*args).exit_code == 0
    with h5py.File(out, "r+") as f:
        f["done"][:, -1] = False
        f.attrs["complete"] = False
    code.write_text(template.format(assets=str(ASSETS), scale=3.0))
    before = digest(out)
    assert_refused(invoke(*args, "--resume"), "model's values differ")
    assert digest(out) == before
    code.write_text(template.format(assets=str(ASSETS), scale=1.0))
    assert invoke(*args, "--resume").exit_code == 0 and spectra.load(out).complete


def test_resume_accepts_a_spec_with_its_defaults_spelled_out(partial_run):
    folder, model, data, out = partial_run
    spelled = folder / "spelled.toml"
    spelled.write_text('kind = "gaussian"\nambient_dim = 6\nvariance_groups = [[1.0, 1], [0.5, 1]]\n'
                       'seed = 0\nembedding = "orthonormal"\n[schedule]\nname = "ve"\nsigma_min = 0.01\n'
                       'sigma_max = 50.0\n')
    res = _resume(out, spelled, data)
    assert res.exit_code == 0, res.output
    assert spectra.load(out).complete


def test_damaged_training_points_are_one_line(tmp_path):
    ck = torch.load(DEMO, weights_only=True)
    for bad in (7, torch.zeros(3, 100, dtype=torch.bfloat16), torch.zeros(100)):
        ck["train_points"] = bad
        path = tmp_path / "ck.pt"
        torch.save(ck, path)
        for args in (["--model", path], ["--model", spec(tmp_path), "--data", path]):
            assert_refused(invoke("estimate", "--out", tmp_path / "r.h5", *SMALL, *args), "train_points")


def test_corrupted_compressed_npz_is_one_line(tmp_path):
    path = tmp_path / "x.npz"
    np.savez_compressed(path, x=np.random.default_rng(0).standard_normal((50, 6)))
    raw = bytearray(path.read_bytes())
    start = raw.index(b"x.npy") + len("x.npy") + 20
    raw[start:start + 40] = os.urandom(40)
    path.write_bytes(bytes(raw))
    res = invoke("estimate", "--model", spec(tmp_path), "--data", path, "--out", tmp_path / "r.h5", *SMALL)
    assert_refused(res, "x.npz")


@pytest.mark.parametrize("damage", ["target", "autodiff", "tau"])
def test_more_damaged_run_files(tmp_path, run_file, damage):
    path = copy_of(run_file, tmp_path / "run.h5")
    with h5py.File(path, "r+") as f:
        if damage == "target":
            f.attrs["target"] = "bogus"
        elif damage == "autodiff":
            f.attrs["autodiff"] = '{"foo": 1}'
            f.attrs["complete"] = False
        else:
            f["tau"][0] = -1.0
    before = digest(path)
    commands = [["estimate", "--model", spec(tmp_path), "--out", path, "--resume", *SMALL]]
    if damage != "autodiff":  # only a resume reads the autodiff path
        commands.append(["compare-theory", path])
    for args in commands:
        assert_refused(invoke(*args), "damaged")
    assert digest(path) == before


def test_resume_of_a_run_without_batch_size(tmp_path, run_file):
    path = copy_of(run_file, tmp_path / "run.h5")
    with h5py.File(path, "r+") as f:
        del f.attrs["batch_size"]
        f["done"][:, -1] = False
        f.attrs["complete"] = False
    res = invoke("estimate", "--model", spec(run_file.parent), "--out", path, "--resume", *SMALL)
    assert res.exit_code == 0, res.output
    assert spectra.load(path).complete


def test_model_raising_a_base_exception_is_one_line(tmp_path):
    res = invoke("estimate", "--model", f"{NETS}:interrupts", "--schedule", "ve", "--parameterization", "eps",
                 "--data", "noise", "--out", tmp_path / "r.h5", *SMALL)
    assert_refused(res, "GeneratorExit")


def test_a_fifo_in_an_output_slot_is_refused_without_waiting(tmp_path, run_file):
    run = copy_of(run_file, tmp_path / "run.h5")
    (tmp_path / "out").mkdir()
    os.mkfifo(tmp_path / "out" / "metrics.json")
    os.mkfifo(tmp_path / "fifo.h5")
    cmd = [sys.executable, "-m", "spectra_cli"]
    for args in (["compare-theory", str(run), "--out", str(tmp_path / "out")],
                 ["theory", "--manifold", str(spec(tmp_path)), "--out", str(tmp_path / "fifo.h5"),
                  "--overwrite"]):
        res = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and "not a regular file" in res.stderr, res.stderr


def test_oversized_specs_are_refused_before_allocating(tmp_path):
    big = tmp_path / "big.toml"
    big.write_text('kind = "gaussian"\nambient_dim = 60000\nvariance_groups = [[1.0, 60000]]\n')
    mix = tmp_path / "mix.toml"
    mix.write_text('kind = "gmm"\npreset = "isotropic"\nambient_dim = 100000\nn_components = 1000000\n'
                   'variance = 1.0\n')
    for args in (["estimate", "--model", big, "--out", tmp_path / "r.h5", *SMALL],
                 ["estimate", "--model", mix, "--out", tmp_path / "r.h5", *SMALL],
                 ["theory", "--manifold", big, "--out", tmp_path / "t.h5"]):
        assert_refused(invoke(*args), "memory")


@pytest.mark.parametrize("args", [["--model", "SPEC", "--schedule", "vp"],
                                  ["--model", "SPEC", "--parameterization", "x0"],
                                  ["--schedule", "ddpm"], ["--method", "jvp", "--step", "0.3"]])
def test_options_the_model_would_ignore_are_refused(tmp_path, args):
    args = [str(spec(tmp_path)) if a == "SPEC" else a for a in args]
    assert_refused(invoke("estimate", "--out", tmp_path / "r.h5", *SMALL, *args), "not")
    assert not (tmp_path / "r.h5").exists()


def test_a_foreign_file_at_the_lock_name_is_never_removed(tmp_path):
    foreign = tmp_path / "Cargo.lock"
    foreign.write_text("another tool's lock file")
    os.utime(foreign, (time.time() - 7200, time.time() - 7200))
    res = invoke("estimate", "--model", spec(tmp_path), "--out", tmp_path / "Cargo", *SMALL)
    assert_refused(res, "not a spectra lock")
    assert foreign.read_text() == "another tool's lock file"


@pytest.mark.parametrize("damage", ["undecodable attribute", "no times", "schedule constant"])
def test_third_round_of_damaged_run_files(tmp_path, run_file, damage):
    path = copy_of(run_file, tmp_path / "run.h5")
    with h5py.File(path, "r+") as f:
        if damage == "undecodable attribute":
            f.attrs["method_used"] = np.bytes_(b"\xff\xfe")
        elif damage == "schedule constant":
            f.attrs["schedule"] = '{"name": "nope", "sigma_min": "x"}'
        else:
            for name in list(f):
                shape = f[name].shape
                if len(shape) == 1 or (len(shape) >= 2 and name != "x0"):
                    del f[name]
                    empty = (0,) if len(shape) == 1 else (shape[0], 0, *shape[2:])
                    f.create_dataset(name, shape=empty, dtype=bool if name == "done" else "f8")
    before = digest(path)
    res = invoke("info", path)
    if damage == "undecodable attribute":
        assert res.exit_code == 0 and "\ufffd" in res.output, res.output  # a damaged string still reads
    else:
        assert_refused(res, "damaged")
        assert digest(path) == before


def test_a_file_without_fingerprints_compares_its_model_by_name(partial_run):
    folder, model, data, out = partial_run
    with h5py.File(out, "r+") as f:
        del f.attrs["fingerprints"]  # as every file written before them
    other = folder / "other.toml"
    other.write_text(GAUSS.format(seed=0).replace("0.5", "0.25"))
    before = digest(out)
    assert_refused(_resume(out, other, data), "options differ", "model")
    assert digest(out) == before
    assert _resume(out, model, data).exit_code == 0 and spectra.load(out).complete


def test_a_bfloat16_model_is_fingerprinted(tmp_path):
    res = invoke("estimate", "--model", f"{NETS}:bfloat16", "--schedule", "ve", "--parameterization", "eps",
                 "--data", "noise", "--out", tmp_path / "r.h5", *SMALL)
    assert res.exit_code == 0, res.output
    assert len(json.loads(spectra.load(tmp_path / "r.h5").attrs["fingerprints"])["model"]) == 64


def test_an_npz_member_in_a_folder_is_read(tmp_path):
    import io
    import zipfile

    x = np.random.default_rng(3).standard_normal((2, 6))
    buffer = io.BytesIO()
    np.save(buffer, x)
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as archive:
        archive.writestr("sub/x.npy", buffer.getvalue())
    out = tmp_path / "r.h5"
    res = invoke("estimate", "--model", spec(tmp_path), "--data", tmp_path / "x.npz", "--out", out, *SMALL)
    assert res.exit_code == 0, res.output
    np.testing.assert_array_equal(spectra.load(out)["x0"], x)
