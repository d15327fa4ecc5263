"""Amortised VANs at their DEFAULT settings against FSP at held-out contexts.

    python benchmarks/bench_amortise.py                       # every case
    python benchmarks/bench_amortise.py --cases birth_death --held-out 8

Each case is a network no test contains, a box of varied rate constants (and initial counts),
and a horizon. One `nncme.amortise.amortise(...)` run with `AmortiseConfig` at its defaults
(only t_end and the number of saves given); then, at `--held-out` contexts drawn uniformly
(a fixed NumPy seed, not the training's Sobol sequence) and at every save time after 0, the
Hellinger distance of each species' marginal (the model's exact sums over the box) from
FSP's. Per case: training wall time, steps, sub-steps and capped fits from log.jsonl, and per
context the largest distance over species and times; the median and the worst over contexts.
The JSON goes to benchmarks/results/amortise_<device>.json after every case.
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
from bench_common import device_info, write_results
from nncme import Reaction, ReactionNetwork
from nncme.amortise import AmortiseConfig, AmortisedSolution, Vary, amortise
from nncme.exact import FSPSettings, solve_fsp
from nncme.metrics import hellinger
from nncme.network import Hill


def birth_death() -> tuple[ReactionNetwork, list[Vary], float]:
    net = ReactionNetwork(
        {"X": 40},
        [Reaction({}, {"X": 1}, 5.0, "birth"), Reaction({"X": 1}, {}, 1.0, "death")],
        {"X": 0},
        t_end=2.0,
        dt=0.05,
    )
    return net, [Vary("birth", 2.0, 10.0), Vary("death", 0.5, 2.0)], 2.0


def gene() -> tuple[ReactionNetwork, list[Vary], float]:
    """A gene switching on and off (conserved), repressed by its own protein through a Hill
    factor, the protein made while on and lost; production and repression vary."""
    net = ReactionNetwork(
        {"Off": 2, "On": 2, "P": 40},
        [
            Reaction({"Off": 1}, {"On": 1}, 2.0, "activate", hill=Hill("P", 8.0, 2, "repression")),
            Reaction({"On": 1}, {"Off": 1}, 1.0, "deactivate"),
            Reaction({"On": 1}, {"On": 1, "P": 1}, 10.0, "make"),
            Reaction({"P": 1}, {}, 1.0, "decay"),
        ],
        {"Off": 1},
        t_end=2.0,
        dt=0.05,
    )
    return net, [Vary("make", 5.0, 15.0), Vary("activate", 1.0, 4.0)], 2.0


CASES = {"birth_death": birth_death, "gene": gene}


def run_case(name: str, held_out: int, out: Path, saves: int) -> dict:
    net, varies, t_end = CASES[name]()
    config = AmortiseConfig(t_end=t_end, saves=saves)
    start = time.perf_counter()
    amortise(net, varies, out / name, config, progress=False)
    seconds = time.perf_counter() - start
    log = [json.loads(x) for x in (out / name / "log.jsonl").read_text().splitlines()][1:]
    solution = AmortisedSolution(out / name)
    values = solution.space.from_unit(np.random.default_rng(12345).random((held_out, len(varies))))
    rows = []
    for v in values:
        exact = solve_fsp(solution.space.network_at(v), solution.times, FSPSettings(quiet=True))
        per_time = []
        for i, t in enumerate(solution.times[1:], start=1):
            got = solution.marginals(v[None], t)
            per_time.append(
                max(
                    float(hellinger(exact.marginals[i, s, : len(m[0])], m[0]))
                    for s, m in enumerate(got)
                )
            )
        rows.append({"context": v.tolist(), "hellinger": per_time, "max": max(per_time)})
        print(f"  {name} {np.round(v, 3).tolist()}: {max(per_time):.4f}", flush=True)
    worst = [r["max"] for r in rows]
    return {
        "case": name,
        "varies": [vars(v) for v in varies],
        "t_end": t_end,
        "times": solution.times.tolist(),
        "config": vars(config),
        "train_seconds": seconds,
        "steps": len(log),
        "substeps": sum(r["pieces"] for r in log),
        "capped_fits": sum(r["capped"] for r in log),
        "iterations": sum(r["iterations"] for r in log),
        "median_max_hellinger": float(np.median(worst)),
        "worst_max_hellinger": float(np.max(worst)),
        "contexts": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    parser.add_argument("--held-out", type=int, default=20)
    parser.add_argument("--saves", type=int, default=4)
    parser.add_argument("--out", default="runs/amortise")
    args = parser.parse_args()
    torch.set_num_threads(1)
    payload = {"device": device_info("cpu"), "threads": 1, "cases": []}
    for name in args.cases:
        payload["cases"].append(run_case(name, args.held_out, Path(args.out), args.saves))
        c = payload["cases"][-1]
        print(
            f"{name}: train {c['train_seconds']:.0f} s, {c['steps']} steps "
            f"({c['substeps']} sub-steps, {c['capped_fits']} capped fits); max Hellinger over "
            f"species and times: median {c['median_max_hellinger']:.4f}, worst "
            f"{c['worst_max_hellinger']:.4f} over {len(c['contexts'])} held-out contexts"
        )
        write_results("amortise", "cpu", payload)


if __name__ == "__main__":
    main()
