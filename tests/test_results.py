"""The results format: building from weighted states, saving, loading, validation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nncme.results import (
    BoundaryWarning,
    Result,
    ResultBuilder,
    boundary_mask,
    check_boundary,
    default_pair,
)


def random_samples(rng, T=3, N=500, limits=(4, 6, 3)):
    return rng.integers(0, limits, size=(T, N, len(limits)))


def build(samples, limits=(4, 6, 3), weights=None, **kw) -> Result:
    times = np.arange(samples.shape[0], dtype=float)
    b = ResultBuilder("ssa", ["A", "B", "C"], limits, times, **kw)
    for j in range(samples.shape[0]):
        half = samples.shape[1] // 2  # two batches per time
        w = None if weights is None else weights[j]
        b.add(j, samples[j, :half], None if w is None else w[:half])
        b.add(j, samples[j, half:], None if w is None else w[half:])
    return b.build(normalize=True, summary={"samples": samples.shape[1]})


def test_builder_statistics_match_numpy():
    rng = np.random.default_rng(0)
    x = random_samples(rng)
    r = build(x)
    T, N, L = x.shape
    assert r.marginals.shape == (T, L, 6)
    for j in range(T):
        for i, m in enumerate((4, 6, 3)):
            hist = np.bincount(x[j, :, i], minlength=6) / N
            np.testing.assert_allclose(r.marginals[j, i], hist, atol=1e-15)
            assert r.marginals[j, i, m:].sum() == 0
        np.testing.assert_allclose(r.means[j], x[j].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(r.stds[j], x[j].std(axis=0), rtol=1e-12)
        np.testing.assert_allclose(r.covariances[j], np.cov(x[j].T, bias=True), atol=1e-12)
        # joint over the visited states, and the pair of the two largest limits (A, B)
        states, counts = np.unique(x[j], axis=0, return_counts=True)
        lookup = {tuple(s): p for s, p in zip(r.joint_states.tolist(), r.joint[j])}
        for s, c in zip(states.tolist(), counts):
            assert lookup[tuple(s)] == pytest.approx(c / N)
        assert r.pair == (0, 1)
        pair = np.zeros((4, 6))
        np.add.at(pair, (x[j, :, 0], x[j, :, 1]), 1 / N)
        np.testing.assert_allclose(r.pair_marginal[j], pair, atol=1e-15)


def test_weighted_samples_are_self_normalised():
    rng = np.random.default_rng(1)
    x = random_samples(rng, T=2, N=400)
    w = rng.random((2, 400))
    r = build(x, weights=w)
    for j in range(2):
        mean = (w[j] @ x[j]) / w[j].sum()
        np.testing.assert_allclose(r.means[j], mean, rtol=1e-12)
        hist = np.bincount(x[j, :, 2], weights=w[j], minlength=6) / w[j].sum()
        np.testing.assert_allclose(r.marginals[j, 2], hist, atol=1e-15)


def test_save_load_roundtrip(tmp_path):
    rng = np.random.default_rng(2)
    r = build(random_samples(rng))
    r.summary["network"] = {"name": "toy"}
    out = r.save(tmp_path / "run")
    files = {p.name for p in out.iterdir()}
    assert {"results.npz", "summary.json", "marginals.png", "moments.png", "joint_A_B.png"} <= files
    back = Result.load(out)
    for name in (
        "limits",
        "times",
        "marginals",
        "means",
        "stds",
        "covariances",
        "joint_states",
        "joint",
        "pair_marginal",
    ):
        np.testing.assert_array_equal(getattr(back, name), getattr(r, name))
    assert back.species == r.species and back.method == "ssa" and back.pair == r.pair
    assert back.boundary is None
    summary = json.loads((out / "summary.json").read_text())
    assert summary["samples"] == 500 and summary["network"]["name"] == "toy"
    assert summary["final"]["species"]["A"]["mean"] == pytest.approx(r.means[-1, 0])
    assert Result.load(out / "results.npz").method == "ssa"
    with pytest.raises(FileNotFoundError):
        Result.load(tmp_path / "nothing")


def test_validation_names_the_field():
    ok = dict(
        method="fsp",
        species=["A"],
        limits=[3],
        times=[0.0, 1.0],
        marginals=np.zeros((2, 1, 3)),
        means=np.zeros((2, 1)),
        stds=np.zeros((2, 1)),
    )
    Result(**ok)
    with pytest.raises(ValueError, match="method"):
        Result(**{**ok, "method": "mcmc"})
    with pytest.raises(ValueError, match="marginals"):
        Result(**{**ok, "marginals": np.zeros((2, 1, 4))})
    with pytest.raises(ValueError, match="times"):
        Result(**{**ok, "times": [1.0, 0.0]})
    with pytest.raises(ValueError, match="joint"):
        Result(**{**ok, "joint": np.zeros((2, 3))})


def test_boundary_mask_and_warning():
    # X -> 2X (needs X >= 1; blocked when X + 1 reaches the limit), 0 -> Y never blocked
    # when Y's limit is far, Y -> 0 never grows anything
    reactants = np.array([[1, 0], [0, 0], [0, 1]])
    change = np.array([[1, 0], [0, 1], [0, -1]])
    limits = np.array([4, 10])
    states = np.array([[0, 0], [3, 0], [2, 9], [2, 5], [3, 9]])
    np.testing.assert_array_equal(
        boundary_mask(states, reactants, change, limits), [False, True, True, False, True]
    )
    b = ResultBuilder("fsp", ["X", "Y"], limits, [0.0], reactants=reactants, change=change)
    b.add(0, states, np.array([0.5, 0.2, 0.1, 0.2, 0.0]))
    r = b.build(normalize=False)
    assert r.boundary[0] == pytest.approx(0.3)
    with pytest.warns(BoundaryWarning, match=r"raise the limits of X"):
        assert check_boundary(r, 0.01)
    assert not check_boundary(r, 0.5)


def test_large_joints_are_not_stored():
    rng = np.random.default_rng(3)
    r = build(random_samples(rng, T=2, N=300), joint_max=100)
    assert r.joint is None and r.joint_states is None
    assert default_pair([5]) is None and default_pair([3, 9, 9, 2]) == (1, 2)


def _cli_ready() -> bool:
    try:
        from nncme.io import resolve_network  # noqa: F401
    except ImportError:
        return False
    return True


needs_io = pytest.mark.skipif(not _cli_ready(), reason="nncme.io.resolve_network not present")


@needs_io
def test_cli_fsp_ssa_compare(tmp_path, capsys):
    from nncme.cli import main

    fsp, ssa = tmp_path / "fsp", tmp_path / "ssa"
    common = ["--t-end", "2", "--save-every", "0.5", "--quiet"]
    assert main(["fsp", "birth_death", *common, "--out", str(fsp)]) == 0
    ssa_args = ["--trajectories", "4000", "--seed", "1", "--out", str(ssa)]
    assert main(["ssa", "birth_death", *common, *ssa_args]) == 0
    assert (fsp / "marginals.png").exists() and (ssa / "results.npz").exists()
    assert Result.load(ssa).summary["ssa"]["seed"] == 1
    out = capsys.readouterr().out
    assert "wrote" in out and "events/s" in out
    report = tmp_path / "cmp.json"
    assert (
        main(["compare", str(fsp), str(ssa), "--max-hellinger", "0.2", "--json", str(report)]) == 0
    )
    table = capsys.readouterr().out
    assert "Hellinger" in table and "noise H" in table and "ok" in table
    d = json.loads(report.read_text())
    assert len(d["hellinger"]) == 5 and d["a"]["method"] == "fsp" and d["b"]["samples"] == 4000
    assert main(["compare", str(fsp), str(ssa), "--max-hellinger", "1e-9"]) == 1
    assert "FAILED" in capsys.readouterr().out


@needs_io
def test_cli_errors_are_one_line(tmp_path, capsys):
    from nncme.cli import main

    assert main(["fsp", "birth_death", "--times", "1,0.5", "--quiet"]) == 2
    assert "times: must be strictly increasing" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "no results.npz" in capsys.readouterr().err
    assert main(["fsp", "birth_death", "--max-states", "3", "--quiet"]) == 2
    assert "max_states" in capsys.readouterr().err


def test_cli_fsp_methods_match_the_solver():
    from nncme.cli import build_parser
    from nncme.exact import METHODS

    sub = build_parser()._subparsers._group_actions[0].choices["fsp"]
    choices = next(a.choices for a in sub._actions if a.dest == "method")
    assert set(choices) == set(METHODS)
