"""benchmarks/bench_defaults.py measures a run that did not reach t_end over the save times it
reached: one stopped by --time-limit, and a result directory scored with --from-run (a long
horizon run apart, killed or finished)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

import pytest

import nncme
from nncme.config import RunConfig
from nncme.io import load_network

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
NETWORK = BENCHMARKS / "networks" / "birth_death_seasonal.toml"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))  # its own imports (bench_common, check_networks)
    try:
        spec = importlib.util.spec_from_file_location(
            "nncme_bench_defaults", BENCHMARKS / "bench_defaults.py"
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up there
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def settings(**given) -> argparse.Namespace:
    return argparse.Namespace(
        **{
            "t_end_scale": 1.0,
            "seed": 0,
            "tag": "test",
            "time_limit": None,
            "reference": "fsp",
            "ssa_trajectories": 100_000,
            **given,
        }
    )


def test_a_killed_run_is_measured_at_the_save_times_it_reached(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")  # the FSP copy goes here
    network = load_network(NETWORK)
    out = tmp_path / "van"
    config = RunConfig(t_end=0.1, save_every=0.025, quiet=True, seed=0, out=str(out))
    # stopped after its second save time: its directory holds the save times a kill there
    # would have left
    nncme.run(network, config, callbacks=[lambda info: info.t < 0.05 - 1e-9])

    row = bench.score_run(NETWORK, out, settings(), {})

    assert row["status"] == "stopped"
    assert row["run_status"].startswith("stopped by a callback")
    assert row["t_end"] == pytest.approx(0.1)
    assert row["times"] == pytest.approx([0.0, 0.025, 0.05])
    assert row["wall_seconds_to"] == pytest.approx(0.05)
    assert row["stopped_at_t"] == pytest.approx(0.05)
    assert row["max_hellinger"] < 0.02  # a Poisson-like law of mean ~10, against FSP
    assert "compare_error" not in row


def test_a_run_is_scored_against_ssa_where_asked(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    network = load_network(NETWORK)
    out = tmp_path / "van"
    nncme.run(network, RunConfig(t_end=0.05, save_every=0.025, quiet=True, seed=0, out=str(out)))

    by_fsp = bench.score_run(NETWORK, out, settings(), {})
    by_ssa = bench.score_run(NETWORK, out, settings(reference="ssa", ssa_trajectories=20_000), {})

    assert by_ssa["reference"] == "ssa" and by_ssa["ssa_trajectories"] == 20_000
    assert by_fsp["reference"] == "fsp" and "fsp_states" in by_fsp
    # the SSA's histogram of 20,000 draws: its own noise, about sqrt(k / 8n) for k counts
    noise = by_ssa["sampling_noise_hellinger_max"]
    assert 0.003 < noise < 0.02
    assert by_ssa["max_hellinger"] < by_fsp["max_hellinger"] + 3 * noise
    # 20,000 trajectories put 2 beyond a 1e-4 quantile, none beyond 1e-6: no tail is kept
    assert by_ssa["tails"]["levels"] == []
    assert (tmp_path / "runs" / "defaults_test" / NETWORK.stem / "ssa").is_dir()


def test_a_time_limit_stops_the_run_and_says_what_it_measured(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    # a limit that ends the run after its first step, before any save time
    row = bench.run_network(NETWORK, settings(t_end_scale=0.01, time_limit=1e-9), {})

    assert row["status"] == "stopped" and row["time_limit"] == 1e-9
    assert row["stopped_at_t"] == pytest.approx(row["dt"])
    assert row["compare_error"].startswith("no save time after t = 0")
    assert bench.table_row(row)["status"] == "stopped"
