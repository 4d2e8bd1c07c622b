"""What a new user sees: help text, flags, argument forms, subsets, progress, warnings, the predict table,
and the per-command memory benchmark."""

import json
import re

import ase.io
import numpy as np
import pytest
from typer.testing import CliRunner

from calib import datasets
from calib.cli.main import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def _commands():
    import typer

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # bench
            for sub, c in cmd.commands.items():
                yield f"{name} {sub}", c
        else:
            yield name, cmd


@pytest.mark.parametrize("name,cmd", list(_commands()), ids=[n for n, _ in _commands()])
def test_every_option_has_help_and_flags_show_as_flags(name, cmd):
    for p in cmd.params:
        if p.param_type_name == "option" and p.name != "help":
            assert p.help and len(p.help) > 8, f"calib {name} {p.opts[0]} has no help"
    r = run(*name.split(), "--help")
    assert r.exit_code == 0
    assert not re.search(r"--(json|forces|quiet|overwrite|resume|shuffle)\s+<bool>", r.stdout), r.stdout


@pytest.fixture(scope="module")
def cal(tmp_path_factory, chgnet):
    from calib.data.prototypes import perturbed_set
    from calib.workflows.calibration import calibrate
    from calib.workflows.hessian import build_hessian

    d = tmp_path_factory.mktemp("use")
    art, _ = build_hessian(chgnet, perturbed_set(n_variants=1, seed=5), progress=False)
    art.save(d / "H.nc")
    lab = datasets.load("high-energy-states", chemsys="Si")[:6] + datasets.load("high-energy-states",
                                                                                  chemsys="Na-Cl")[:6]
    ase.io.write(d / "lab.extxyz", lab, format="extxyz")
    calibrate(art, chgnet, lab, progress=False, energy_folds=None).artifact.save(d / "CAL.nc")
    return d


def test_subset_options_and_full_names(cal):
    r = run("predict", cal / "lab.extxyz", "--calibration", cal / "CAL.nc", "--every", "2", "--limit", "4",
            "--json", "-q")
    assert r.exit_code == 0, r.output
    recs = json.loads(r.stdout)["records"]
    frames = ase.io.read(cal / "lab.extxyz", ":")
    assert [x["name"] for x in recs] == [frames[k].info["name"] for k in (0, 2, 4, 6)]
    r = run("predict", cal / "lab.extxyz", "--calibration", cal / "CAL.nc", "--shuffle", "--seed", "3",
            "--limit", "5", "--json", "-q")
    order = np.random.default_rng(3).permutation(len(frames))[:5]
    assert [x["name"] for x in json.loads(r.stdout)["records"]] == [frames[k].info["name"] for k in order]
    # the table prints whole names, and the interval beside the energy it bounds (E + shift)
    long = [a.copy() for a in frames[:2]]
    long[0].info["name"], long[1].info["name"] = "Si_r0.00_s+0.00_long", "Si_r0.00_s+0.03_long"
    ase.io.write(cal / "long.extxyz", long, format="extxyz")
    r = run("predict", cal / "long.extxyz", "--calibration", cal / "CAL.nc", "-q")
    assert "Si_r0.00_s+0.00_long" in r.stdout and "Si_r0.00_s+0.03_long" in r.stdout
    assert "E ref-code (eV)" in r.stdout
    doc = json.loads(run("predict", cal / "long.extxyz", "--calibration", cal / "CAL.nc", "--json", "-q").stdout)
    for rec, line in zip(doc["records"], [ln for ln in r.stdout.splitlines() if "_long" in ln]):
        centre = rec["energy"] + rec["energy_shift"]
        lo, hi = rec["energy_interval"]
        assert lo < centre < hi and f"{centre:.4f}" in line and f"[{lo:.3f}, {hi:.3f}]" in line


def test_progress_on_stderr_with_json_unless_quiet(cal):
    r = run("predict", cal / "lab.extxyz", "--calibration", cal / "CAL.nc", "--json")
    assert r.exit_code == 0 and "predict" in r.stderr and "structure/s" in r.stderr
    json.loads(r.stdout)  # stdout is still one JSON document
    r = run("predict", cal / "lab.extxyz", "--calibration", cal / "CAL.nc", "--json", "--quiet")
    assert r.stderr == ""


def test_calib_warnings_once_in_json_and_on_stderr(cal, tmp_path):
    # 6 structures: too few calibration points for the energy-difference conformal quantile at α = 0.1
    args = ["calibrate", cal / "lab.extxyz", "--hessian", cal / "H.nc", "-o", tmp_path / "c.nc", "--every", "2",
            "--energy-folds", "0", "-q"]
    r = run(*args, "--json")
    assert r.exit_code == 0, r.output
    warns = json.loads(r.stdout)["warnings"]
    assert warns and len(warns) == len(set(warns)) and any("too few" in w for w in warns)
    r = run(*args, "--overwrite")
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("warning: ")]
    assert lines and len(lines) == len(set(lines)) and "Traceback" not in r.stderr
    assert not any(".py:" in ln for ln in r.stderr.splitlines())  # no source paths or code lines


def test_decide_takes_several_files_and_targets_option(cal, tmp_path):
    frames = ase.io.read(cal / "lab.extxyz", ":")
    ase.io.write(tmp_path / "a.extxyz", frames[:6], format="extxyz")
    ase.io.write(tmp_path / "b.extxyz", frames[6:], format="extxyz")
    r = run("decide", tmp_path / "a.extxyz", tmp_path / "b.extxyz", "--calibration", cal / "CAL.nc", "--json",
            "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert {x["chemsys"] for x in doc["records"]} == {"Si", "Na-Cl"}
    assert {x["n_structures"] for x in doc["records"]} == {6}
    r = run("decide", tmp_path / "a.extxyz", tmp_path / "b.extxyz", "--targets", tmp_path / "a.extxyz",
            "--calibration", cal / "CAL.nc", "--json", "-q")
    doc = json.loads(r.stdout)
    assert [x["chemsys"] for x in doc["records"]] == ["Si"] and doc["requests_index_into"] == "TARGETS"


@pytest.mark.slow
def test_bench_commands_reports_peak_memory_per_command(tmp_path):
    r = run("bench", "commands", "--only", "eos", "--workdir", tmp_path, "--json", "-q")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    # the numbers are measured, not judged here: a window on seconds or MB would test the machine
    assert doc["eos: seconds"] > 0 and doc["eos: peak_rss_mb"] > 0 and "eos: exit_code" not in doc
    assert not any(k.startswith("calibrate") for k in doc)  # eos needs no artifact


def test_structures_from_standard_input(cal):
    """'-' reads extended XYZ from standard input: the same records as the file; empty input is named."""
    args = ["--calibration", str(cal / "CAL.nc"), "--json", "-q"]
    from_file = json.loads(run("predict", cal / "lab.extxyz", "--limit", "3", *args).stdout)["records"]
    r = runner.invoke(app, ["predict", "-", "--limit", "3", *args], input=(cal / "lab.extxyz").read_text())
    assert r.exit_code == 0, r.output
    from_stdin = json.loads(r.stdout)["records"]
    assert [x["name"] for x in from_stdin] == [x["name"] for x in from_file]
    np.testing.assert_allclose([x["energy"] for x in from_stdin], [x["energy"] for x in from_file], rtol=1e-12)
    r = runner.invoke(app, ["predict", "-", *args], input="")
    doc = json.loads(r.stdout)
    assert r.exit_code == 1 and doc["kind"] == "input" and "standard input (-) is empty" in doc["error"], doc
