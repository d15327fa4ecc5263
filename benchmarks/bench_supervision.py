"""Observable supervision against the exact moment equations: a linear network run at the
defaults with and without `supervise="moments"`, every species' mean and variance at every
save time against `nncme.exact.linear_moments` (no FSP needed, so any number of species).

    python benchmarks/bench_supervision.py --network cascade10 --t-end-scale 1
    python benchmarks/bench_supervision.py --network cascade:L=20,conversion=true --t-end 50
    python benchmarks/bench_supervision.py --network cascade10 --score RUN_DIR/van OTHER/van

`--network` is a file of benchmarks/networks (by stem) or a catalogue spec ("cascade:L=20,
conversion=true"); `--score` skips the runs and scores saved results (`nncme run --out`, or
bench_defaults.py's runs/defaults_<tag>/<network>/van) instead, each labelled by its
settings' `supervise`. Per run: wall time, the largest relative error of a mean and of a
variance over species and times (species whose exact mean, or variance, is >= 0.05 at that
time), the same per species, and at the last time. The JSON goes to
benchmarks/results/supervision_<device>[_<tag>].json and is merged by network.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import nncme
from bench_common import RESULTS, device_info, write_results
from check_networks import network_files
from nncme.exact import linear_moments
from nncme.io import load_network, resolve_network
from nncme.results import Result

MIN_MOMENT = 0.05


def network_of(name: str):
    files = {p.stem: p for p in network_files()}
    return load_network(files[name]) if name in files else resolve_network(name)


def _clean(x: np.ndarray) -> list:
    """A nested list with None where x is not finite (JSON has no nan)."""
    return np.where(np.isfinite(x), x, None).tolist()


def score(result: Result, network) -> dict:
    """Relative errors of every species' mean and variance against the moment equations."""
    exact = linear_moments(network, result.times)
    idx = [result.species.index(s) for s in exact.species]
    mean, var = result.means[:, idx], result.stds[:, idx] ** 2
    out = {"species": exact.species, "times": result.times.tolist()}
    for name, got, ref in (("mean", mean, exact.mean), ("variance", var, exact.var)):
        err = np.abs(got - ref) / np.maximum(np.abs(ref), 1e-300)
        err = np.where(ref >= MIN_MOMENT, err, np.nan)
        signed = (got[-1] - ref[-1]) / np.maximum(np.abs(ref[-1]), 1e-300)
        with np.errstate(all="ignore"):
            per_species = np.nanmax(np.where(np.isnan(err), -np.inf, err), axis=0)
        out[f"{name}_rel_error"] = _clean(err)
        out[f"max_{name}_rel_error"] = float(np.nanmax(err))
        out[f"max_{name}_rel_error_per_species"] = _clean(per_species)
        out[f"{name}_rel_error_last"] = _clean(err[-1])
        out[f"signed_{name}_error_last"] = _clean(np.where(ref[-1] >= MIN_MOMENT, signed, np.nan))
    return out


def run_one(network, args, supervise: bool) -> dict:
    kw = {"supervise": "moments"} if supervise else {}
    t_end = args.t_end or network.t_end * args.t_end_scale
    start = time.perf_counter()
    if args.dt:
        kw["dt"] = args.dt
    out = nncme.run(network, quiet=True, seed=args.seed, t_end=t_end, **kw)
    seconds = time.perf_counter() - start
    log = out.history
    return {"supervise": supervise, "t_end": t_end, "dt": out.result.summary["settings"]["dt"],
            "wall_seconds": seconds, "steps": len(log), **score(out.result, network)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", required=True)
    parser.add_argument("--t-end-scale", type=float, default=1.0)
    parser.add_argument("--t-end", type=float)
    parser.add_argument("--dt", type=float, help="time step (default: the network's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--score", nargs="*", help="saved results to score instead of runs")
    parser.add_argument("--tag", default="")
    parser.add_argument("--note", help="how the runs were made (kept in the JSON)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    network = network_of(args.network)
    rows = []
    if args.score:
        for path in args.score:
            result = Result.load(path)
            settings = json.loads((Path(path) / "summary.json").read_text()).get("settings", {})
            summary = json.loads((Path(path) / "summary.json").read_text())
            rows.append({
                "supervise": settings.get("supervise") is not None,
                "results": str(path),
                "t_end": float(result.times[-1]),
                "dt": settings.get("dt"),
                "wall_seconds": summary.get("timings", {}).get("run_seconds"),
                "steps": summary.get("steps"),
                **score(result, network),
            })  # fmt: skip
    else:
        rows = [run_one(network, args, s) for s in (False, True)]
    for r in rows:
        print(
            f"{args.network} to t = {r['t_end']:g}, supervise {r['supervise']}: largest relative "
            f"error of a mean {r['max_mean_rel_error']:.4f}, of a variance "
            f"{r['max_variance_rel_error']:.4f}"
        )
    name = f"supervision_cpu{'_' + args.tag if args.tag else ''}.json"
    old = json.loads((RESULTS / name).read_text()) if (RESULTS / name).exists() else {}
    cases = {c["network"]: c for c in old.get("cases", [])}
    cases[args.network] = {"network": args.network, "runs": rows}
    payload = {"device": device_info("cpu"), "threads": 1, "cases": list(cases.values())}
    if args.score:  # the load while scoring says nothing of the runs
        payload.update(load_average_1min_start=None, load_average_1min_end=None)
    if args.note:
        payload["note"] = args.note
    print("wrote", write_results("supervision", "cpu", payload, args.tag))


if __name__ == "__main__":
    main()
