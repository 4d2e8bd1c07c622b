import copy

import numpy as np
import pytest

from calib.artifact import Artifact, ArtifactError
from calib.uq.llpr import LLPR
from calib.uq.reference import ElementReference


def make_artifact(chgnet):
    rng = np.random.default_rng(0)
    F = rng.normal(size=(30, 64))
    L = LLPR().fit(F.T @ F, 30)
    L.alpha2_, L.force_alpha2_, L.sigma2_, L.force_sigma2_ = 0.7, 35.0, 1e-3, 2e-2
    L.force_directions_, L.force_truncation_factor_ = np.array([3, 60, 63]), 1.07
    ref = ElementReference().fit([[3, 17], [3, 3, 17, 17], [11, 17]], np.array([0.7, 1.4, 0.2]))
    return Artifact(llpr=L, model_info=chgnet.describe(), readout_weight=chgnet.readout[0], element_reference=ref,
                    stage="calibrated")


def test_round_trip(chgnet, tmp_path):
    art = make_artifact(chgnet)
    path = tmp_path / "cal.nc"
    art.save(path)
    back = Artifact.load(path, model=chgnet)
    for name in ("hessian_", "eigenvalues_", "eigenvectors_", "force_directions_"):
        assert np.array_equal(getattr(back.llpr, name), getattr(art.llpr, name)), name
    assert back.llpr.alpha2_ == 0.7 and back.llpr.force_alpha2_ == 35.0 and back.llpr.sigma2_ == 1e-3
    assert back.llpr.force_sigma2_ == 2e-2
    assert back.llpr.force_truncation_factor_ == 1.07
    assert back.element_reference.as_dict() == pytest.approx(art.element_reference.as_dict())
    assert back.model_info["model_fingerprint"] == chgnet.fingerprint()
    assert back.calibrated
    import xarray as xr

    ds = xr.open_dataset(path)
    assert ds.attrs["schema_version"] == 2 and ds.attrs["stage"] == "calibrated"
    assert ds["element_reference"].attrs["units"] == "eV/atom"
    assert ds.attrs["model_name"] == "chgnet" and ds.attrs["model_version"] == "0.3.0"
    ds.close()
    x = np.random.default_rng(1).normal(size=(4, 64))
    np.testing.assert_array_equal(back.llpr.energy_sigma(x, [2, 3, 4, 5]), art.llpr.energy_sigma(x, [2, 3, 4, 5]))


def test_element_reference_recovers_shifts():
    mu = {3: -0.3, 17: 0.5, 11: 0.1}
    nums = [[3, 17], [3, 3, 3, 17], [11, 17, 17], [11, 3, 17]]
    delta = np.array([sum(mu[z] for z in n) for n in nums])
    ref = ElementReference().fit(nums, delta)
    np.testing.assert_allclose(ref.predict(nums), delta, atol=1e-12)
    assert ref.as_dict() == pytest.approx({"Li": -0.3, "Na": 0.1, "Cl": 0.5})


def test_wrong_model_fails_clearly(chgnet, tmp_path):
    import torch

    from calib.models.chgnet import CHGNetAdapter

    path = tmp_path / "cal.nc"
    make_artifact(chgnet).save(path)
    other = CHGNetAdapter(copy.deepcopy(chgnet.model))
    with torch.no_grad():
        other.model.mlp.layers[-1].weight[0, 1] *= 1.01
    with pytest.raises(ArtifactError, match="fitted with chgnet 0.3.0 .* refit"):
        Artifact.load(path, model=other)


def test_other_feature_set_fails_clearly(chgnet, tmp_path):
    from calib.models.chgnet import CHGNetAdapter

    path = tmp_path / "cal.nc"
    make_artifact(chgnet).save(path)
    with pytest.raises(ArtifactError, match="'last' feature set \\(64 features\\).*'last2' \\(4224"):
        Artifact.load(path, model=CHGNetAdapter(chgnet.model, feature_set="last2"))


def test_corrupt_and_missing_files_fail_clearly(chgnet, tmp_path):
    path = tmp_path / "cal.nc"
    make_artifact(chgnet).save(path)
    data = path.read_bytes()
    trunc = tmp_path / "trunc.nc"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        Artifact.load(trunc)
    junk = tmp_path / "junk.nc"
    junk.write_bytes(b"\x89HDF\r\n" + b"\0" * 100)
    with pytest.raises(ArtifactError, match="truncated or corrupt"):
        Artifact.load(junk)
    with pytest.raises(ArtifactError, match="does not exist"):
        Artifact.load(tmp_path / "none.nc")
    import xarray as xr

    other = tmp_path / "other.nc"
    xr.Dataset({"x": ("a", [1.0])}).to_netcdf(other)
    with pytest.raises(ArtifactError, match="not a calib artifact"):
        Artifact.load(other)
