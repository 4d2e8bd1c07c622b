"""The JSON keys of `calib predict --json`, the `calib screen --json` summary and `calib decide --json`, pinned.

Scripts read these documents, so a key is renamed only on purpose: a change here goes with a line in CHANGELOG.md
(which lists the renames of 0.6). The run is the cheapest real one: CHGNet with the shipped default calibration on
two small crystals and a structure that is skipped, and four labelled Si frames for decide.
"""

import json

import ase.io
import pytest
from ase.build import bulk
from typer.testing import CliRunner

from calib import datasets, schema
from calib.cli.main import app
from calib.data.datasets import default_calibration

#: the document of `calib predict --json`, and its parts
PREDICT_DOCUMENT = {"records", "n_predicted", "n_skipped", "calibration", "model", "warnings"}
CALIBRATION_RECORD = {"path", "default", "note"}
MODEL_RECORD = {"name", "version", "read_as"}
#: a predicted structure's record with --forces, its chemistry's scalar correction applied
PREDICT_RECORD = {
    "index", "name", "chemsys", "n_atoms", "prediction", "energy", "energy_per_atom", "energy_model", "energy_sigma",
    "energy_sigma_llpr", "max_local_sigma", "energy_shift", "energy_halfwidth", "energy_interval", "energy_class",
    "energy_offsets_u", "max_force", "max_force_sigma", "max_force_halfwidth", "domain_score", "force_error_bound",
    "trusted", "trust_reason", "trust_checks_failed", "trust_score", "extrapolated", "correction", "energy_corrected",
    "max_force_corrected",
}
#: keys a predicted structure's record has only sometimes (text that is not empty)
PREDICT_RECORD_SOMETIMES = {"energy_interval_reason", "trust_notes"}
#: keys a predicted structure's record has with a committee calibration (the default where sevenn is installed)
COMMITTEE_RECORD = {"energy_disagreement"}
#: the keys records.py composes of several variables (or lists), besides the schema's plain keys
COMPOSITE = {"index", "name", "chemsys", "energy_interval", "energy_offsets_u", "trust_checks_failed", "correction",
             "energy_corrected", "max_force_corrected"}
SKIPPED_RECORD = {"index", "name", "chemsys", "error"}

#: the summary of `calib screen --json` (and "csv" with --csv)
SCREEN_SUMMARY = {"output", "complete", "n_total", "n_trusted", "n_untrusted", "n_failed", "by_chemsys", "reasons",
                  "resumed_from", "calibration", "warnings"}
SCREEN_COUNTS = {"trusted", "untrusted", "failed"}

#: the document of `calib decide --json`, a chemistry's record and the rules
DECIDE_DOCUMENT = {"records", "rules", "request_out", "requests_index_into", "skipped", "warnings"}
DECIDE_RECORD = {"chemsys", "n_structures", "softening_scale", "softening_ci", "correction", "mae", "cmae", "cmae_loo",
                 "decision", "reasons", "label_requests", "n_targets", "fraction_out_of_distribution",
                 "fraction_untrusted", "correction_ci"}
DECIDE_RULES = {"mae_tol_ev_per_a", "ci_level", "min_labels", "max_untrusted_fraction", "n_requests"}


def run(*args) -> dict:
    r = CliRunner().invoke(app, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    si = bulk("Si", "diamond", 5.43) * (1, 1, 2)
    si.rattle(0.05, seed=1)
    squashed = bulk("Si", "diamond", 5.43)
    squashed.positions[1] = squashed.positions[0] + [0.2, 0, 0]  # 0.2 Å apart: skipped
    squashed.info["name"] = "squashed"
    ase.io.write(d / "three.extxyz", [si, bulk("NaCl", "rocksalt", 5.6), squashed], format="extxyz")
    ase.io.write(d / "lab.extxyz", datasets.load("high-energy-states", chemsys="Si")[:4], format="extxyz")
    return d


def test_predict_json_keys(files):
    doc = run("predict", files / "three.extxyz", "--forces", "--json", "-q")
    assert set(doc) == PREDICT_DOCUMENT
    assert set(doc["calibration"]) == CALIBRATION_RECORD and set(doc["model"]) == MODEL_RECORD
    predicted, skipped = doc["records"][:2], doc["records"][2]
    committee = default_calibration().endswith("+sevennet-0.nc")
    want = PREDICT_RECORD | (COMMITTEE_RECORD if committee else set())
    assert all(set(r) == want for r in predicted), [sorted(set(r) ^ want) for r in predicted]
    assert set(skipped) == SKIPPED_RECORD
    # every key a record can have: the schema's plain keys and records.py's composites, nothing else
    assert {c.name for c in schema.record_columns()} | COMPOSITE == \
        PREDICT_RECORD | PREDICT_RECORD_SOMETIMES | COMMITTEE_RECORD


def test_screen_json_summary_keys(files):
    doc = run("screen", files / "three.extxyz", "-o", files / "screen.nc", "--json", "-q")
    assert set(doc) == SCREEN_SUMMARY
    assert set(doc["calibration"]) == CALIBRATION_RECORD
    assert doc["by_chemsys"] and all(set(c) == SCREEN_COUNTS for c in doc["by_chemsys"].values())


def test_decide_json_keys(files):
    doc = run("decide", files / "lab.extxyz", "--calibration", default_calibration("chgnet"), "--json", "-q")
    assert set(doc) == DECIDE_DOCUMENT
    assert doc["records"] and all(set(r) == DECIDE_RECORD for r in doc["records"])
    assert set(doc["rules"]) == DECIDE_RULES
