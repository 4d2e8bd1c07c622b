"""One output schema (calib/schema.py): the prediction Dataset, the screen file and the calculator read their
names, types and units from it, and agree with each other on the same structures."""

import numpy as np
import pytest
from ase.build import bulk


@pytest.fixture(scope="module")
def default_predictor(chgnet):
    from calib import CalibratedPredictor
    from calib.artifact import Artifact
    from calib.data.datasets import default_calibration

    return CalibratedPredictor(chgnet, Artifact.load(default_calibration("chgnet"), model=chgnet))


def _structures():
    si = bulk("Si", "diamond", 5.43) * (1, 1, 2)
    si.rattle(0.05, seed=1)
    return [si, bulk("NaCl", "rocksalt", 5.6)]


def test_every_prediction_variable_is_in_the_schema_with_its_type_and_unit(default_predictor):
    from calib import schema

    ds = default_predictor.predict(_structures(), forces=True, force_mode="approx", progress=False)
    skip = {"structure", "component", "voigt", "source", "structure_index", "numbers"}  # coordinates, bookkeeping
    for name in set(ds.variables) - skip:
        col = schema.BY_NAME[name]  # KeyError: a variable the schema does not hold
        assert ds[name].attrs.get("units", "") == col.units, name
        assert ds[name].attrs["description"] == col.description
        kind = ds[name].dtype.kind
        assert {"f": "f", "i": "i", "b": "b", "U": "s", "O": "s"}[kind] == col.dtype, (name, kind)
        assert ds[name].dims[0] == ("structure" if col.dims == "structure" else "atom"), name
        if col.dims == "atom3":
            assert ds[name].dims[1] == "component"


def test_screen_rows_and_calculator_results_are_the_predictions(default_predictor, tmp_path):
    """The screen file's columns carry the schema's units and hold the prediction's values; the calculator's
    results keys are the schema's and hold the same numbers."""

    from calib import schema
    from calib.calculator import CalibratedCalculator
    from calib.workflows.screen import COLUMNS, screen_batch

    structs = _structures()
    ds = default_predictor.predict(structs, forces=True, force_mode="none", progress=False)
    assert [(n, k, u) for n, k, u in COLUMNS] == [(c.name, c.dtype, c.units) for c in
                                                  schema.columns([n for n, _, _ in COLUMNS])]
    rows = screen_batch(default_predictor, structs, 0)
    for name, kind, _ in COLUMNS:
        if name in ds and kind == "f":
            np.testing.assert_allclose(rows[name], ds[name].values, rtol=1e-12, equal_nan=True)
        elif name in ds and kind == "b":
            np.testing.assert_array_equal(rows[name].astype(bool), ds[name].values)
    for k, atoms in enumerate(structs):
        atoms = atoms.copy()
        atoms.calc = CalibratedCalculator(predictor=default_predictor)
        atoms.get_potential_energy()
        res = atoms.calc.results
        one = ds.isel(structure=k)
        for col in schema.COLUMNS:
            if col.calculator is None or col.calculator not in res or col.dims != "structure":
                continue
            if col.name not in ds:
                continue
            got, want = res[col.calculator], one[col.name].values.item()
            if col.dtype == "f":
                if got is None:
                    assert not np.isfinite(want), col.name
                else:
                    # the calculator predicts one structure, the Dataset a batch: CHGNet's float32 sums differ
                    assert got == pytest.approx(want, rel=1e-5, abs=1e-6, nan_ok=True), col.name
            else:
                assert got == want, col.name
        owner = ds["structure_index"].values == k
        np.testing.assert_allclose(res["forces"], ds["forces"].values[owner], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(res["forces_uncertainty"], ds["forces_sigma"].values[owner], rtol=1e-4)


def test_energy_differences_and_the_neb_band_take_units_and_meanings_from_the_schema(default_predictor):
    """The energy differences against one structure and the NEB band declare their variables in calib.schema
    (DIFFERENCES, BAND) like the prediction: every variable is there, with its unit, its meaning and its dims."""
    from calib import schema
    from calib.workflows.neb import band

    images = []
    for k in range(3):
        si = bulk("Si", "diamond", 5.43)
        si.rattle(0.02 * (k + 1), seed=k)
        images.append(si)
    ds = default_predictor.energy_differences(images, progress=False)
    names = set(ds.data_vars) - {"name", "chemsys", "error"}
    assert {"energy_difference", "energy_difference_sigma", "energy_difference_low", "difference_reason"} <= names
    for name in names:
        col = next(c for c in schema.DIFFERENCES if c.name == name)  # StopIteration: not declared
        assert ds[name].attrs.get("units", "") == col.units, name
        if name != "energy_difference_sigma":  # says which model gave it (the difference model or LLPR alone)
            assert ds[name].attrs["description"] == col.description, name
    out = band(default_predictor, images)
    assert set(out.data_vars) - {"name"} == {c.name for c in schema.BAND}
    for col in schema.BAND:
        assert out[col.name].dims == tuple(col.dims.split(",")), col.name
        assert out[col.name].attrs == {"units": col.units, "description": col.description}, col.name
