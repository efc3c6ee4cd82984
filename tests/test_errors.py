"""Acceptance: bad input through the CLI gives exit 2, one line naming the problem, no traceback,
and leaves an existing run file byte-for-byte as it was."""

import hashlib
import tempfile
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner
from spectra_cli.main import cli

ASSETS = Path(__file__).parent / "assets"
NETS = ASSETS / "nets.py"


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def existing(tmp_path_factory):
    """A complete run to protect."""
    path = tmp_path_factory.mktemp("existing") / "run.h5"
    res = invoke("estimate", "--out", path, "--n-samples", 2, "--n-times", 3, "--quiet")
    assert res.exit_code == 0, res.output
    return path


def assert_one_line_error(res, *fragments):
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    assert lines[0].startswith("error: "), res.output
    assert "Traceback" not in res.output
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


def cases(tmp_path):
    good = 'kind = "gaussian"\nambient_dim = 8\nvariances = [1.0]\n'
    return {
        "missing model file": (["--model", tmp_path / "nope.toml"], ["not found", "nope.toml"]),
        "malformed spec (syntax)": (
            ["--model", write(tmp_path, "bad.toml", "kind = gaussian\n[[")], ["malformed"]),
        "malformed spec (content)": (
            ["--model", write(tmp_path, "bad2.toml", 'kind = "gaussian"\nvariances = [1.0]\n')],
            ["ambient_dim"]),
        "malformed spec (typo)": (
            ["--model", write(tmp_path, "bad3.toml", good + "varainces = [2.0]\n")],
            ["unknown key", "varainces"]),
        "unknown schedule": (
            ["--model", write(tmp_path, "sched.toml", good + '[schedule]\nname = "cosine"\n')],
            ["unknown schedule", "cosine"]),
        "unknown schedule option": (
            ["--model", f"{NETS}:tiny", "--schedule", "cosine", "--parameterization", "eps"],
            ["--schedule", "cosine"]),
        "t out of range": (["--times", "0.5,2.0"], ["t=2", "outside", "ve"]),
        "t-min out of range": (["--t-min", "0", "--n-times", "3"], ["t=0", "outside"]),
        "wrong output shape": (
            ["--model", f"{NETS}:wrong_shape", "--schedule", "ve", "--parameterization", "eps",
             "--data", "noise"], ["returned shape (8, 8)", "(8, 16)"]),
        "NaN from the model": (
            ["--model", f"{NETS}:nan_late", "--schedule", "ve", "--parameterization", "eps",
             "--data", "noise", "--times", "0.2,0.4,0.7"], ["NaN", "t=0.7"]),
        "factory raises": (
            ["--model", f"{NETS}:raises", "--schedule", "ve", "--parameterization", "eps"],
            ["no weights here"]),
        "factory returns junk": (
            ["--model", f"{NETS}:not_a_model"], ["int", "ScoreModel or nn.Module"]),
        "bare module without parameterization": (
            ["--model", f"{NETS}:tiny", "--schedule", "ve", "--data", "noise"],
            ["--parameterization"]),
        "missing data file": (["--data", tmp_path / "nope.npy"], ["not found"]),
        "negative step": (["--method", "fd-central", "--step", "-1"], ["--step"]),
        "unknown method": (["--method", "magic"], ["--method"]),
        "resume and overwrite": (["--resume", "--overwrite"], ["conflict"]),
        "resume with other options": (["--resume", "--seed", "5"], ["options differ", "seed"]),
    }


with tempfile.TemporaryDirectory() as _scratch:  # collection must not write into the checkout
    CASE_NAMES = list(cases(Path(_scratch)))


@pytest.mark.parametrize("name", CASE_NAMES)
def test_bad_input_leaves_existing_run_untouched(name, tmp_path, existing):
    args, fragments = cases(tmp_path)[name]
    before = digest(existing)
    flags = [] if {"--resume", "--overwrite"} & set(map(str, args)) else ["--overwrite"]
    res = invoke("estimate", "--out", existing, "--quiet", *flags, *args)
    assert_one_line_error(res, *fragments)
    assert digest(existing) == before


def test_existing_output_needs_resume_or_overwrite(existing):
    before = digest(existing)
    res = invoke("estimate", "--out", existing, "--n-samples", 2, "--n-times", 3)
    assert_one_line_error(res, "exists", "--resume", "--overwrite")
    assert digest(existing) == before


def test_file_of_another_format(tmp_path):
    foreign = tmp_path / "other.h5"
    with h5py.File(foreign, "w") as f:
        f["data"] = [1, 2, 3]
    before = digest(foreign)
    for args in (["estimate", "--out", foreign, "--resume"],
                 ["estimate", "--out", foreign, "--overwrite"],
                 ["info", foreign]):
        assert_one_line_error(invoke(*args), "not a spectra trajectory")
    assert digest(foreign) == before


def test_other_format_version(tmp_path, existing):
    newer = tmp_path / "v3.h5"
    newer.write_bytes(existing.read_bytes())
    with h5py.File(newer, "r+") as f:
        f.attrs["format_version"] = 3
    before = digest(newer)
    assert_one_line_error(invoke("info", newer), "format_version 3")
    assert_one_line_error(invoke("estimate", "--out", newer, "--resume", "--n-samples", 2,
                                 "--n-times", 3), "format_version 3")
    assert digest(newer) == before


def test_not_hdf5_at_all(tmp_path):
    junk = write(tmp_path, "junk.h5", "hello")
    assert_one_line_error(invoke("info", junk), "cannot read")
    assert_one_line_error(invoke("info", tmp_path / "missing.h5"), "not found")


def test_usage_errors_are_one_line():
    assert_one_line_error(invoke("estimate"), "--out")
    assert_one_line_error(invoke("estimate", "--out", "x.h5", "--bogus"), "--bogus")
