"""Result.to_xarray: every array of a Result, labelled, and back; a clear error without xarray."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from nncme import systems
from nncme.exact import FSPSettings, solve_fsp
from nncme.results import Result, ResultBuilder

# xarray is optional for users but installed by `make setup`, so these tests run in CI.


@pytest.fixture(scope="module")
def exact() -> Result:
    """FSP of the toggle switch with small limits: genes (limit 2) and proteins, a stored pair
    joint, covariances and the boundary probability."""
    net = systems.toggle_switch(protein_limit=16, production=5.0)
    return solve_fsp(net, [0.0, 0.25, 1.0], FSPSettings(quiet=True, plots=False))


def test_round_trip_of_every_array(exact):
    ds = exact.to_xarray()
    np.testing.assert_array_equal(ds["time"].values, exact.times)
    assert list(ds["species"].values) == exact.species
    np.testing.assert_array_equal(ds["limit"].values, exact.limits)
    for i, s in enumerate(exact.species):
        m = int(exact.limits[i])
        var = ds[f"marginal_{s}"]
        assert var.dims == ("time", f"{s}_count") and var.shape == (exact.num_times, m)
        np.testing.assert_array_equal(ds[f"{s}_count"].values, np.arange(m))
        np.testing.assert_array_equal(var.values, exact.marginals[:, i, :m])
        for j, t in enumerate(exact.times):  # by label, as a user selects
            np.testing.assert_array_equal(var.sel(time=t).values, exact.marginal(s, j))
    np.testing.assert_array_equal(ds["mean"].transpose("time", "species").values, exact.means)
    np.testing.assert_allclose(ds["variance"].values, exact.stds**2, rtol=1e-15)
    np.testing.assert_array_equal(ds["covariance"].values, exact.covariances)
    np.testing.assert_array_equal(ds["boundary"].values, exact.boundary)
    a, b = (exact.species[i] for i in exact.pair)
    assert ds["pair_marginal"].dims == ("time", f"{a}_count", f"{b}_count")
    np.testing.assert_array_equal(ds["pair_marginal"].values, exact.pair_marginal)
    # the variances are the covariances' diagonal, and the marginals sum to the pair joint's
    np.testing.assert_allclose(
        ds["variance"].values, np.diagonal(ds["covariance"].values, axis1=1, axis2=2), atol=1e-9
    )
    np.testing.assert_allclose(
        ds["pair_marginal"].sum(f"{b}_count").values, ds[f"marginal_{a}"].values, atol=1e-12
    )


def test_labels_units_and_attributes(exact):
    ds = exact.to_xarray()
    assert ds.attrs["solver"] == "fsp"
    assert ds.attrs["network"] == "toggle_switch"
    assert json.loads(ds.attrs["settings"]) == json.loads(json.dumps(exact.summary["settings"]))
    assert all(isinstance(v, (str, int, float)) for v in ds.attrs.values())  # netCDF-ready
    assert ds["mean"].attrs["units"] == "molecules"
    assert ds["variance"].attrs["units"] == "molecules^2"
    assert ds["marginal_P_A"].attrs["units"] == "1"
    assert "rate constants" in ds["time"].attrs["units"]
    assert float(ds["mean"].sel(species="P_A", time=1.0)) == exact.means[2, 2]


def test_optional_parts_absent_and_samples_named():
    rng = np.random.default_rng(0)
    b = ResultBuilder("ssa", ["X", "Y"], [3, 5], [0.0, 1.0], pair=False, covariances=False)
    for j in range(2):
        b.add(j, rng.integers(0, [3, 5], size=(200, 2)))
    r = b.build(normalize=True, summary={"samples": 200})
    ds = r.to_xarray()
    assert not {"covariance", "boundary", "pair_marginal"} & set(ds.data_vars)
    assert ds.attrs["samples"] == 200 and ds.attrs["solver"] == "ssa"
    assert ds.attrs["network"] == "" and ds.attrs["settings"] == "{}"
    np.testing.assert_array_equal(ds["marginal_Y"].values, r.marginals[:, 1, :5])


def test_without_xarray_the_error_says_how_to_install(exact, monkeypatch):
    monkeypatch.setitem(sys.modules, "xarray", None)  # import xarray now raises ImportError
    with pytest.raises(ImportError, match=r"pip install xarray"):
        exact.to_xarray()
