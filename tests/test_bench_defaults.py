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
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


def settings(**given) -> argparse.Namespace:
    return argparse.Namespace(
        **{"t_end_scale": 1.0, "seed": 0, "tag": "test", "time_limit": None, **given}
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


def test_a_time_limit_stops_the_run_and_says_what_it_measured(bench, tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "RUNS", tmp_path / "runs")
    # a limit that ends the run after its first step, before any save time
    row = bench.run_network(NETWORK, settings(t_end_scale=0.01, time_limit=1e-9), {})

    assert row["status"] == "stopped" and row["time_limit"] == 1e-9
    assert row["stopped_at_t"] == pytest.approx(row["dt"])
    assert row["compare_error"].startswith("no save time after t = 0")
    assert bench.table_row(row)["status"] == "stopped"
