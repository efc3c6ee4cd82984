"""Property-based tests (hypothesis) of the bad-input contract: whatever the options, spec or
damage to a run file, a command ends with exit 0 and a complete, readable file, or with exit 2,
one `error:` line and no file changed. Never a traceback.

The examples are derandomized so that CI is reproducible; set SPECTRA_FUZZ_RANDOM=1 (and
SPECTRA_FUZZ_EXAMPLES=N) to explore new ones."""

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spectra_cli.main import cli

import spectra

EXAMPLES = int(os.environ.get("SPECTRA_FUZZ_EXAMPLES", "30"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                derandomize="SPECTRA_FUZZ_RANDOM" not in os.environ,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SPEC = 'kind = "gaussian"\nambient_dim = 4\nvariances = [1.0, 0.25]\n'


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else ""


def check_contract(res, path: Path, before: str) -> None:
    """exit 0 with a complete run file, or exit 2 with one line and `path` as it was."""
    assert res.exit_code in (0, 2), (res.exit_code, res.output, repr(res.exception))
    assert "Traceback" not in res.output, res.output
    if res.exit_code == 2:
        lines = [ln for ln in res.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), res.output
        assert digest(path) == before


@pytest.fixture(scope="module")
def workspace():
    folder = Path(tempfile.mkdtemp(prefix="spectra-fuzz-"))
    (folder / "m.toml").write_text(SPEC)
    res = CliRunner().invoke(cli, ["estimate", "--model", str(folder / "m.toml"), "--out",
                                   str(folder / "base.h5"), "--n-samples", "2", "--n-times", "3", "--quiet"])
    assert res.exit_code == 0, res.output
    yield folder
    shutil.rmtree(folder)


# --- option sets ---------------------------------------------------------------------------------
small_int = st.one_of(st.integers(-3, 6), st.sampled_from([0, 2**31, 2**62, 2**70, -(2**70)]))
number = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e-3, 0.5, 1.0, 2.0]))
text = st.text(alphabet=",.-0123456789eainf x", max_size=12)
OPTIONS = {
    "--n-samples": small_int.map(str),
    "--n-times": small_int.map(str),
    "--times": st.one_of(text, st.lists(number, max_size=3).map(lambda v: ",".join(map(str, v)))),
    "--t-min": number.map(str),
    "--t-max": number.map(str),
    "--target": st.sampled_from(["score", "denoiser", "eps", "magic"]),
    "--method": st.sampled_from(["auto", "jvp", "vjp", "fd-forward", "fd-central", "topk", "x"]),
    "--k": small_int.map(str),
    "--tol": number.map(str),
    "--at": st.sampled_from(["clean", "noisy", "dirty"]),
    "--step": st.one_of(st.sampled_from(["auto", "sigma", "big"]), number.map(str)),
    "--directions": st.sampled_from(["basis", "haar", "none"]),
    "--dtype": st.sampled_from(["float32", "float64", "int8"]),
    "--batch-size": small_int.map(str),
    "--seed": small_int.map(str),
    "--shape": text,
    "--class-label": small_int.map(str),
}
option_sets = st.dictionaries(st.sampled_from(sorted(OPTIONS)), st.just(None), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: OPTIONS[k] for k in keys}))


@FUZZ
@given(options=option_sets, mode=st.sampled_from(["--overwrite", "--resume", None]))
def test_estimate_options(workspace, options, mode):
    out = workspace / "run.h5"
    shutil.copyfile(workspace / "base.h5", out)
    before = digest(out)
    args = ["estimate", "--model", str(workspace / "m.toml"), "--out", str(out), "--quiet",
            *([mode] if mode else []), *[a for kv in options.items() for a in kv]]
    if "--n-samples" not in options and "--n-times" not in options and "--times" not in options:
        args += ["--n-samples", "2", "--n-times", "3"]
    res = CliRunner().invoke(cli, args)
    check_contract(res, out, before)
    if res.exit_code == 0:
        assert spectra.load(out).complete


# --- specs ---------------------------------------------------------------------------------------
toml_scalar = st.one_of(st.integers(-5, 10**13), st.floats(allow_nan=False, allow_infinity=False, width=32),
                        st.booleans(), st.text(alphabet="abcxyz._/", max_size=8))
toml_value = st.one_of(toml_scalar, st.lists(st.integers(-2, 8), max_size=4),
                       st.lists(st.floats(-2, 2, width=32), max_size=4),
                       st.lists(st.lists(st.integers(0, 3), max_size=3), max_size=3))
KEYS = ["ambient_dim", "variances", "variance_groups", "embedding", "seed", "preset", "n_classes",
        "subspace_dim", "delta", "n_components", "variance", "radius", "points", "bogus"]


def toml_literal(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(toml_literal(v) for v in value) + "]"


schedules = st.fixed_dictionaries(
    {"name": st.sampled_from(["ve", "vp", "ddpm", "edm", "cosine"])},
    optional={"sigma_min": st.one_of(toml_scalar, st.floats(1e-3, 1)),
              "sigma_max": st.one_of(toml_scalar, st.floats(1, 100)),
              "beta_end": st.one_of(toml_scalar, st.floats(0, 1.5)), "n_steps": st.integers(-2, 2000)})
#: near-valid specs (small changes to good ones) and arbitrary tables of the known keys
spec_tables = st.one_of(
    st.fixed_dictionaries(
        {"kind": st.just("gaussian"), "ambient_dim": st.integers(-1, 8),
         "variances": st.lists(st.floats(-1, 3, width=32), min_size=0, max_size=9)},
        optional={"seed": st.integers(-2, 2**64), "schedule": schedules,
                  "embedding": st.sampled_from(["orthonormal", "gaussian", "x"])}),
    st.fixed_dictionaries(
        {"kind": st.just("gmm"), "preset": st.sampled_from(["isotropic", "molrg", "other"]),
         "ambient_dim": st.integers(-1, 8), "n_components": st.integers(-1, 4),
         "variance": st.floats(-1, 2, width=32)},
        optional={"radius": st.floats(-1, 3, width=32), "n_classes": st.integers(0, 3),
                  "subspace_dim": st.integers(0, 4), "delta": st.floats(0, 1), "schedule": schedules}),
    st.fixed_dictionaries(
        {"kind": st.sampled_from(["gaussian", "gmm", "empirical", "junk"])},
        optional={k: toml_value for k in KEYS} | {"schedule": schedules}),
)


@FUZZ
@given(table=spec_tables)
def test_model_specs(workspace, table):
    lines = [f"{k} = {toml_literal(v)}" for k, v in table.items() if k != "schedule"]
    if "schedule" in table:
        lines += ["[schedule]"] + [f"{k} = {toml_literal(v)}" for k, v in table["schedule"].items()]
    path = workspace / "fuzz.toml"
    path.write_text("\n".join(lines) + "\n")
    out = workspace / "spec-run.h5"
    out.unlink(missing_ok=True)
    res = CliRunner().invoke(cli, ["estimate", "--model", str(path), "--out", str(out), "--n-samples", "2",
                                   "--n-times", "2", "--quiet"])
    check_contract(res, out, "")
    if res.exit_code == 0:
        assert spectra.load(out).complete


# --- damaged run files ---------------------------------------------------------------------------
ATTRS = ["format", "format_version", "complete", "target", "method_used", "options", "schedule", "k",
         "model_config", "autodiff", "batch_size", "fingerprints", "created"]
DATASETS = ["t", "alpha", "sigma", "tau", "x0", "singular_values", "sym_eigenvalues", "asymmetry",
            "seconds", "done"]
attr_value = st.one_of(st.integers(-3, 3), st.floats(), st.text(max_size=10), st.just("{}"), st.just("[1]"))
damage = st.one_of(
    st.tuples(st.just("del attr"), st.sampled_from(ATTRS)),
    st.tuples(st.just("set attr"), st.sampled_from(ATTRS), attr_value),
    st.tuples(st.just("del dataset"), st.sampled_from(DATASETS)),
    st.tuples(st.just("replace dataset"), st.sampled_from(DATASETS),
              st.lists(st.integers(0, 4), min_size=0, max_size=3),
              st.sampled_from(["f8", "i4", "bool", "S3"])),
    st.tuples(st.just("flip bytes"), st.integers(0, 10**6), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6)),
)


def apply(path: Path, what) -> None:
    kind = what[0]
    if kind in ("flip bytes", "truncate"):
        raw = bytearray(path.read_bytes())
        at = what[1] % max(1, len(raw))
        if kind == "truncate":
            del raw[at:]
        else:
            raw[at:at + len(what[2])] = what[2]
        path.write_bytes(bytes(raw))
        return
    with h5py.File(path, "r+") as f:
        if kind == "del attr":
            f.attrs.pop(what[1], None)
        elif kind == "set attr":
            f.attrs[what[1]] = what[2]
        elif kind == "del dataset":
            del f[what[1]]
        else:
            del f[what[1]]
            f[what[1]] = np.zeros(what[2], dtype=what[3])


@FUZZ
@given(damages=st.lists(damage, min_size=1, max_size=3),
       command=st.sampled_from(["info", "plot", "compare-theory", "resume"]))
def test_damaged_run_files(workspace, damages, command):
    path = workspace / "damaged.h5"
    shutil.copyfile(workspace / "base.h5", path)
    for what in damages:
        try:
            apply(path, what)
        except (OSError, KeyError, ValueError, TypeError):
            pass  # damage the file already refuses to take (an earlier damage broke it)
    before = digest(path)
    args = {"info": ["info", str(path)],
            "plot": ["plot", str(path), "--out", str(workspace / "plots")],
            "compare-theory": ["compare-theory", str(path), "--out", str(workspace / "theory")],
            "resume": ["estimate", "--model", str(workspace / "m.toml"), "--out", str(path), "--resume",
                       "--n-samples", "2", "--n-times", "3", "--quiet"]}[command]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code in (0, 2), (damages, command, res.output, repr(res.exception))
    check_contract(res, path, before)
    if res.exit_code == 0 and command == "resume":
        assert spectra.load(path).complete
